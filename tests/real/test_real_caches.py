"""ReadWriteOnce caches are per node, on two real nodes with node-local volumes.

Two R1Deployments on `real-0` share one cache volume; one on `real-1` gets its own. Each volume is a
local PV with node affinity (a loop-mounted ext4 of the requested size on that node), so one cache
shared across nodes would leave the second node's pod Pending: the real scheduler refuses a pod on
another node than its volume's, as this test also shows.
"""

from __future__ import annotations

import pytest
from openai import OpenAI
from r1_devtools.kit import HUB_REPO, RUNTIME_IMAGE
from r1_devtools.waiting import wait_for

from r1_operator.builders import names
from r1_operator.dev import realnode

pytestmark = pytest.mark.cluster
VARIANT = "UD-IQ1_S"


def _r1d(name: str, node: str) -> dict:
    return {"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "metadata": {"name": name},
            "spec": {"model": {"variant": VARIANT}, "inference": {"ctxSize": 512, "parallel": 1, "canary": False},
                     # three runtimes on two 2-core nodes: a small CPU request each (the default asks a whole core)
                     "resources": {"requests": {"cpu": "250m"}},
                     "scheduling": {"nodeSelector": {realnode.REAL_LABEL: "true", "kubernetes.io/hostname": node}}}}


def _claim(pod: dict) -> str:
    return next(v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v)


def test_rwo_caches_are_one_per_node_and_the_scheduler_keeps_them_there(real_kube, real_ns, real_hub):
    kube, ns = real_kube, real_ns
    hub = real_hub[1]
    first = len(hub.stats()["requests"])
    placed = {"a0": "real-0", "b1": "real-1", "c0": "real-0"}
    for name, node in placed.items():
        kube.apply(_r1d(name, node), ns)
    for name in placed:
        kube.run("wait", "--for=condition=Ready", f"r1d/{name}", "-n", ns, "--timeout=300s", timeout=330)

    caches = {node: names.cache_name(HUB_REPO, "main", VARIANT, node) for node in ("real-0", "real-1")}
    pvcs = {p["metadata"]["name"]: p for p in kube.json("get", "pvc", "-n", ns)["items"]}
    assert set(pvcs) == set(caches.values())  # one per node, not one per R1Deployment, not one for all
    for node, claim in caches.items():
        pv = kube.json("get", "pv", pvcs[claim]["spec"]["volumeName"])
        assert pvcs[claim]["spec"]["accessModes"] == ["ReadWriteOnce"]
        (term,) = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
        assert term["matchExpressions"][0]["values"] == [node]  # the volume lives on that node only
    for name, node in placed.items():
        pods = kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector(name)))["items"]
        (pod,) = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert pod["spec"]["nodeName"] == node and _claim(pod) == caches[node]
        url = kube.service_url(ns, names.runtime_name(name))
        out = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60).completions.create(
            model=name, prompt="Hi", max_tokens=4, temperature=0)
        assert out.usage.completion_tokens > 0

    # each node downloaded the set once; the second R1Deployment on real-0 fetched nothing
    set_bytes = sum(f.stat().st_size for f in (hub.root / HUB_REPO / f"DeepSeek-R1-{VARIANT}").rglob("*.gguf"))
    assert sum(q["bytes"] for q in hub.stats()["requests"][first:]) == 2 * set_bytes

    # a pod on real-1 asking for real-0's volume is refused by the real scheduler
    kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "elsewhere"}, "spec": {
        "nodeSelector": {"kubernetes.io/hostname": "real-1"}, "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": caches["real-0"]}}],
        "containers": [{"name": "c", "image": RUNTIME_IMAGE, "imagePullPolicy": "Never",
                        "command": ["true"], "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                        "resources": {"limits": {"memory": "32Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}}]}}, ns)

    def refused():
        events = kube.json("get", "events", "-n", ns, "--field-selector", "involvedObject.name=elsewhere")["items"]
        return next((e["message"] for e in events if e["reason"] == "FailedScheduling"), None)

    msg = wait_for(refused, 60, "the scheduler's verdict on a pod away from its volume")
    assert "1 node(s) didn't match PersistentVolume's node affinity" in msg, msg
    assert kube.json("get", "pod", "elsewhere", "-n", ns)["status"]["phase"] == "Pending"
    kube.run("delete", "pod", "elsewhere", "-n", ns, "--wait=false")
