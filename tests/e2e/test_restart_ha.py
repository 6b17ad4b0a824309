"""The operator killed at each stage converges with no duplicate children; two replicas hand over via kopf peering.

These tests run their own operator processes on namespaces the session
operator does not watch (`solo-*`, `ha-*`).
"""

from __future__ import annotations

import copy
import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from r1_devtools.kit import drop_namespace, make_namespace, ns_name, start_operator
from r1_devtools.waiting import wait_for

from r1_operator.builders import names
from r1_operator.dev.processes import free_port

R1D = {
    "apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment",
    "metadata": {"name": "r1-solo"},
    "spec": {"model": {"variant": "UD-IQ1_S"}, "inference": {"ctxSize": 2048},
             "scheduling": {"nodeSelector": {"kubernetes.io/hostname": "cpu-only"}}},
}
CHILD_KINDS = ("pvc", "jobs", "deployments", "services", "replicasets")


def counts(kube, ns: str) -> dict[str, int]:
    return {kind: len(kube.json("get", kind, "-n", ns)["items"]) for kind in CHILD_KINDS}


@pytest.fixture
def own_ns(request, kube, hub):
    """A namespace the session operator does not watch (its prefix is the test's parameter)."""
    name = make_namespace(kube, ns_name(request, request.param))
    yield name
    drop_namespace(kube, name)


@pytest.mark.cluster
@pytest.mark.parametrize("own_ns", ["solo"], indirect=True)
def test_killed_at_each_stage_the_operator_converges_without_duplicates(kube, own_ns, hub, tmp_path):
    solo_ns = own_ns
    log = tmp_path / "operator.log"
    args = ("--standalone", "--namespace", solo_ns)
    env = {"R1_HUB_ENDPOINT": hub}
    r1d = copy.deepcopy(R1D)
    # A storage class nobody provisions holds the volume, and so the download Job, until this test binds it.
    r1d["spec"]["cache"] = {"storageClassName": f"manual-{solo_ns}"}

    # 1. planning: killed once the plan is in the status (the children follow it in the same reconcile)
    op = start_operator(kube.kubeconfig, log, *args, env=env)
    kube.apply(r1d, solo_ns)
    kube.wait_condition(solo_ns, "r1-solo", "Planned", timeout=30)
    op.stop(signal.SIGKILL)

    # 2. download Job running
    op = start_operator(kube.kubeconfig, log, *args, env=env)
    kube.wait_condition(solo_ns, "r1-solo", "CacheReady", "False", timeout=30, reason="VolumePending")
    cache = names.cache_name("unsloth/DeepSeek-R1-GGUF", "main", "UD-IQ1_S", "cpu-only")
    wait_for(lambda: kube.json("get", "job", cache, "-n", solo_ns).get("status", {}).get("active"), 30,
             "the fetch Job to be running (its pod waiting for the volume)")
    op.stop(signal.SIGKILL)
    assert counts(kube, solo_ns)["jobs"] == 1
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"pv-{solo_ns}"},
                "spec": {"capacity": {"storage": "1Ti"}, "accessModes": ["ReadWriteOnce"],
                         "storageClassName": f"manual-{solo_ns}", "hostPath": {"path": str(tmp_path / "pv")},
                         "persistentVolumeReclaimPolicy": "Delete"}}, solo_ns)
    try:
        kube.run("wait", "--for=condition=Complete", f"job/{cache}", "-n", solo_ns, "--timeout=60s")

        # 3. runtime rollout: killed as soon as the runtime Deployment scales up
        op = start_operator(kube.kubeconfig, log, *args, env=env)
        wait_for(lambda: kube.json("get", "deploy", "r1-solo", "-n", solo_ns)["spec"]["replicas"] == 1, 30,
                 "the runtime Deployment to scale up once the cache is ready")
        op.stop(signal.SIGKILL)

        op = start_operator(kube.kubeconfig, log, *args, env=env)
        try:
            kube.run("wait", "--for=condition=Ready", "r1d/r1-solo", "-n", solo_ns, "--timeout=60s")
        finally:
            op.stop()
        assert counts(kube, solo_ns) == {"pvc": 1, "jobs": 1, "deployments": 1, "services": 1, "replicasets": 1}
        pods = kube.json("get", "pods", "-n", solo_ns, "-l", "app.kubernetes.io/component=runtime")["items"]
        assert len(pods) == 1
    finally:
        kube.run("delete", "r1d", "--all", "-n", solo_ns, "--wait=true", check=False)
        kube.run("delete", "pv", f"pv-{solo_ns}", "--wait=false", check=False)


@pytest.mark.cluster
@pytest.mark.parametrize("own_ns", ["ha"], indirect=True)
def test_two_replicas_one_works_and_the_other_takes_over(kube, own_ns, hub, tmp_path):
    ha_ns = own_ns
    kube.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "r1-operator"}}, ha_ns)
    env = {"R1_HUB_ENDPOINT": hub, "R1_PEERING_LIFETIME": "6"}
    common = ("--namespace", ha_ns, "--peering", "r1-operator")
    # Which replica did the work is read from the API: each posts its Events as its POD_NAME.
    a = start_operator(kube.kubeconfig, tmp_path / "a.log", *common, "--priority", "100",
                       env={**env, "POD_NAME": "replica-a"})
    b = start_operator(kube.kubeconfig, tmp_path / "b.log", *common, "--priority", "50",
                       env={**env, "POD_NAME": "replica-b"})

    def reporters(name: str) -> set[str]:
        events = kube.json("get", "events", "-n", ha_ns, "--field-selector", f"involvedObject.name={name}")["items"]
        return {e.get("reportingInstance") for e in events if e.get("reportingComponent") == "r1-operator"}

    try:
        first = copy.deepcopy(R1D)
        kube.apply(first, ha_ns)
        kube.run("wait", "--for=condition=Ready", "r1d/r1-solo", "-n", ha_ns, "--timeout=60s")
        assert reporters("r1-solo") == {"replica-a"}  # the higher priority works, the other stays paused

        a.stop(signal.SIGKILL)  # no clean goodbye: B must notice A's heartbeat expire
        second = copy.deepcopy(R1D)
        second["metadata"]["name"] = "r1-solo-2"
        second["spec"]["scheduling"]["nodeSelector"] = {"kubernetes.io/hostname": "gpu-80g"}  # cpu-only's RAM is taken
        kube.apply(second, ha_ns)
        kube.run("wait", "--for=condition=Ready", "r1d/r1-solo-2", "-n", ha_ns, "--timeout=90s")
        assert reporters("r1-solo-2") == {"replica-b"}
        assert counts(kube, ha_ns)["deployments"] == 2
    finally:
        a.stop()
        b.stop()


@pytest.mark.cluster
@pytest.mark.parametrize("own_ns", ["plain"], indirect=True)
def test_started_without_flags_the_operator_works_standalone(kube, own_ns, hub, tmp_path):
    """As the README starts it, after only `kubectl apply -f crds/`: no peering object exists, and it works."""
    op = start_operator(kube.kubeconfig, tmp_path / "op.log", "--namespace", own_ns, env={"R1_HUB_ENDPOINT": hub})
    try:
        kube.apply(copy.deepcopy(R1D), own_ns)
        kube.wait_condition(own_ns, "r1-solo", "Planned", timeout=30)
    finally:
        op.stop()


@pytest.mark.cluster
@pytest.mark.parametrize("own_ns", ["peerless"], indirect=True)
def test_asked_to_peer_without_the_object_it_says_what_it_waits_for(kube, own_ns, hub, tmp_path):
    log = tmp_path / "op.log"
    op = start_operator(kube.kubeconfig, log, "--namespace", own_ns, "--peering", "missing-peer",
                        env={"R1_HUB_ENDPOINT": hub})
    try:
        said = wait_for(lambda: next((ln for ln in log.read_text().splitlines()
                                      if "waiting for peering object KopfPeering missing-peer" in ln), None),
                        30, "the operator to say which peering object it waits for")
        assert own_ns in said and "kubectl apply -f crds/kopf-peering.yaml" in said and "standalone" in said
        kube.apply(copy.deepcopy(R1D), own_ns)
        time.sleep(3)
        assert "plan" not in (kube.r1d(own_ns, "r1-solo").get("status") or {})  # paused, as it said
    finally:
        op.stop()


def _readyz(op) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.readiness_port}/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.cluster
def test_readiness_means_started_and_reaching_the_api_server(operator, tmp_path):
    """/readyz: 200 for the session's operator (a real API server); 503 with the reason for one whose API
    server refuses connections, while its liveness endpoint still answers."""
    code, body = wait_for(lambda: (r := _readyz(operator))[0] == 200 and r, 60, "the operator's /readyz")
    assert body["ready"] is True and body["started"] is True and body["lastApiCheckSecondsAgo"] < 30
    closed = free_port()  # nothing listens there
    cfg = tmp_path / "unreachable.kubeconfig"
    config = yaml.safe_load(Path(operator.env["KUBECONFIG"]).read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{closed}"
    cfg.write_text(json.dumps(config))
    lonely = start_operator(str(cfg), tmp_path / "lonely.log", "--standalone", "--namespace", "nowhere")
    try:
        time.sleep(3)
        code, body = _readyz(lonely)
        assert code == 503 and body["ready"] is False, body
        assert "cannot reach the API server" in body["reason"] or "not started" in body["reason"], body
    finally:
        lonely.stop()
