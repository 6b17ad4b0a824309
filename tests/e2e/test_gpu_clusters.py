"""R1Deployments on the GPU nodes of real clusters' kinds, end to end on the real API server and scheduler.

The nodes are kwok shapes copying each kind's labels, taints and allocatable resources (r1_operator/dev/data/
cloud-nodes.yaml: GKE with its own device plugin, EKS, a Karpenter node, AKS, the GPU Operator with GPU Feature
Discovery, MIG single, MIG mixed and time-slicing). Simulated: the GPUs and the containers (kwok). Real: the
planner's reading of the labels, the scheduler placing pods with the operator's tolerations, node affinity and
extended resources, and the operator's cluster-wide view of GPU-holding pods in namespaces it does not watch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from r1_devtools.kit import drop_namespace, make_namespace
from r1_devtools.waiting import wait_for

from r1_operator.builders import names
from r1_operator.dev.nodes import load_shapes

pytestmark = pytest.mark.cluster
R1CTL = str(Path(sys.executable).with_name("r1ctl"))
SHAPES = {s.name: s for s in load_shapes("clouds")}


@pytest.fixture(scope="module")
def cloud_nodes(kube):
    for s in SHAPES.values():
        kube.run("create", "-f", "-", input=json.dumps(s.to_node()))
    wait_for(lambda: all(any(c["type"] == "Ready" and c["status"] == "True" for c in
                             kube.json("get", "node", n)["status"].get("conditions") or []) for n in SHAPES),
             60, "the cloud nodes Ready (kwok)")
    yield SHAPES
    kube.run("delete", "node", *SHAPES, "--wait=false", check=False)


def _r1d(name: str, node: str, **scheduling) -> dict:
    return {"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "metadata": {"name": name},
            "spec": {"model": {"variant": "UD-IQ1_S"},
                     "scheduling": {"nodeSelector": {"kubernetes.io/hostname": node}, **scheduling}}}


def _pods(kube, ns, name):
    return kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector(name)))["items"]


def test_r1ctl_plan_reads_every_cluster_kinds_gpus(kube, cloud_nodes):
    def plan(*args):
        r = subprocess.run([R1CTL, "plan", "--kubeconfig", kube.kubeconfig, "-o", "json", *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return {p["node"]: p for p in json.loads(r.stdout)["nodes"] if p["node"]}

    nodes = plan()
    # (node, most GPUs one runtime may take there, where its GPU memory figure comes from)
    for name, most, source in [("gke-a3-h100x8", 7, "cloud.google.com/gke-accelerator=nvidia-h100-80gb"),
                               ("eks-p5", 7, "node.kubernetes.io/instance-type=p5.48xlarge"),
                               ("eks-karpenter-g6e", 4, "node.kubernetes.io/instance-type=g6e.12xlarge"),
                               ("gfd-h200x8", 7, "label nvidia.com/gpu.memory"),
                               ("gfd-mig-single", 1, "label nvidia.com/gpu.memory"),
                               ("gke-a2-mig", 1, "cloud.google.com/gke-gpu-partition-size=3g.20gb")]:
        p = nodes[name]
        # on an 8-GPU node the whole model fits in fewer: never every free GPU
        assert 1 <= p["gpus"] <= most and p["nGpuLayers"] > 0, (name, p["gpus"], p["reasons"])
        assert any(f"from {source}" in r for r in p["reasons"]), (name, p["reasons"])
    assert nodes["gfd-h200x8"]["mode"] == "gpu" and nodes["gke-a3-h100x8"]["mode"] == "gpu"
    assert "aks-nc-a100" not in nodes  # its sku=gpu taint is not tolerated
    assert nodes["gfd-timesliced"]["gpus"] == 0
    assert plan("--toleration", "sku=gpu:NoSchedule")["aks-nc-a100"]["gpus"] == 1
    assert plan("--shared-gpus", "wholeCard")["gfd-timesliced"]["gpus"] == 1
    mixed = plan("--gpu-resource", "nvidia.com/mig-3g.40gb")["gfd-mig-mixed"]
    assert mixed["gpus"] == 1 and mixed["gpuProduct"].endswith("MIG-3g.40gb")


@pytest.mark.parametrize("node, scheduling, gpus", [
    pytest.param("gke-a3-h100x8", {}, None, id="gke-tainted"),  # fewer than its 8, as many as the model needs
    pytest.param("aks-nc-a100", {"tolerations": [{"key": "sku", "operator": "Equal", "value": "gpu",
                                                  "effect": "NoSchedule"}]}, 1, id="aks"),
    pytest.param("gfd-mig-mixed", {"gpuResourceName": "nvidia.com/mig-3g.40gb"}, 1, id="mig-mixed"),
    pytest.param("gfd-timesliced", {"sharedGPUs": "fairShare"}, 1, id="time-sliced"),
])
def test_the_operator_plans_and_the_scheduler_places_the_runtime_on_each_kind(kube, e2e_ns, cloud_nodes, node,
                                                                              scheduling, gpus):
    name = "r1-" + node.split("-")[0]
    kube.apply(_r1d(name, node, **scheduling), e2e_ns)
    kube.wait_condition(e2e_ns, name, "Planned", timeout=30)
    plan = kube.r1d(e2e_ns, name)["status"]["plan"]
    assert plan["node"] == node and plan["nGpuLayers"] > 0, plan["reasons"]
    assert plan["gpus"] == gpus if gpus else 1 < plan["gpus"] < 8 and plan["mode"] == "gpu", plan["reasons"]
    gpus = plan["gpus"]
    # the fetch Job and the runtime reach the node: GPU taints tolerated, pinned by name, the resource requested
    kube.run("wait", "--for=condition=Ready", f"r1d/{name}", "-n", e2e_ns, "--timeout=90s", timeout=120)
    (pod,) = _pods(kube, e2e_ns, name)
    assert pod["spec"]["nodeName"] == node
    resource = scheduling.get("gpuResourceName", "nvidia.com/gpu")
    assert pod["spec"]["containers"][0]["resources"]["limits"][resource] == str(gpus)
    env = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    assert "NVIDIA_VISIBLE_DEVICES" not in env


def test_gpus_held_in_a_namespace_the_operator_does_not_watch_are_not_free(kube, e2e_ns, cloud_nodes, request):
    """The e2e operator watches e2e-* only; a pod of another namespace holds all eight GPUs of a GKE node."""
    other = make_namespace(kube, "gpu-other-" + e2e_ns.rsplit("-", 1)[-1])
    request.addfinalizer(lambda: drop_namespace(kube, other))
    node = "gke-a3-h100x8"
    kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "training"}, "spec": {
        "nodeName": node, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "containers": [{"name": "train", "image": "train:1", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}},
        other)
    wait_for(lambda: kube.json("get", "pod", "training", "-n", other)["status"].get("phase") == "Running", 30,
             "the foreign GPU pod Running (kwok)")
    kube.apply(_r1d("r1-busy", node), e2e_ns)
    kube.wait_condition(e2e_ns, "r1-busy", "Planned", status="False", timeout=30)
    plan = kube.r1d(e2e_ns, "r1-busy")["status"]["plan"]
    assert not plan["fits"]
    assert any("no free GPU (all 8 taken)" in r for r in plan["reasons"]), plan["reasons"]
    # the GPUs freed: the re-plan loop (every interval for an R1Deployment without a plan) places it there
    kube.run("delete", "pod", "training", "-n", other, "--grace-period=0", "--force")
    kube.wait_condition(e2e_ns, "r1-busy", "Planned", timeout=150)
    plan = kube.r1d(e2e_ns, "r1-busy")["status"]["plan"]
    assert plan["node"] == node and plan["gpus"] > 0
