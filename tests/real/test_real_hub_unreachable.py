"""A hub the fetch cannot reach at all, on a real node: the fetch Job's real pod finds nothing listening at the
operator's hub endpoint, exits with its termination message, and within a minute of the R1Deployment being applied
the status says so (CacheReady and Degraded, reason HubUnreachable, naming the endpoint and what to check), through
the Job's retries and the backoff between them; never a silent WaitingForCache."""

from __future__ import annotations

import os
import time

import pytest
from r1_devtools.kit import RUNTIME_IMAGE, drop_namespace, make_namespace, start_operator
from r1_devtools.waiting import wait_for

from r1_operator.dev import realnode
from r1_operator.dev.processes import free_port

pytestmark = pytest.mark.cluster
NAME = "r1-nohub"


def test_an_unreachable_hub_is_degraded_within_a_minute_and_stays_so_through_the_retries(real_kube, tmp_path):
    kube = real_kube
    hub = f"http://{realnode.host_ip()}:{free_port()}"  # nothing listens there
    ns = make_namespace(kube, f"nohub-{os.getpid()}", {"pod-security.kubernetes.io/enforce": "restricted"})
    op = start_operator(kube.kubeconfig, tmp_path / "operator.log", "--standalone", "--namespace", "nohub-*",
                        env={"R1_HUB_ENDPOINT": hub, "R1_RUNTIME_IMAGE": RUNTIME_IMAGE,
                             "R1_DEV_SIMULATED_GPUS": "true"})
    try:
        kube.apply({"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "metadata": {"name": NAME},
                    "spec": {"model": {"variant": "UD-IQ1_S"}, "inference": {"ctxSize": 512, "parallel": 1},
                             "scheduling": {"nodeSelector": {realnode.REAL_LABEL: "true"}}}}, ns)
        applied = time.monotonic()
        cond = kube.wait_condition(ns, NAME, "Degraded", "True", timeout=60, reason="HubUnreachable")
        print(f"Degraded/HubUnreachable {time.monotonic() - applied:.1f} s after the apply")
        assert f"cannot reach the hub at {hub}" in cond["message"] and "HF_ENDPOINT" in cond["message"]
        cache = kube.condition(ns, NAME, "CacheReady")
        assert (cache["status"], cache["reason"]) == ("False", "HubUnreachable")
        assert kube.condition(ns, NAME, "Ready")["reason"] == "WaitingForCache"
        # the Job retries; through its backoff the status keeps saying why (sampled for 40 s)
        reasons = set()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            reasons.add(kube.condition(ns, NAME, "Degraded").get("reason"))
            time.sleep(1)
        assert reasons == {"HubUnreachable"}, reasons
        job = wait_for(lambda: (kube.json("get", "jobs", "-n", ns)["items"] or [None])[0], 10, "the fetch Job")
        assert int(job["status"].get("failed") or 0) >= 2  # retried, each pod failing the same way
    finally:
        drop_namespace(kube, ns)
        op.stop()
