"""GPUs on the clusters platform teams have (GKE, EKS, AKS, the GPU Operator with MIG and time-slicing): the
memory figure and its source, taints, MIG, time-slicing, required node affinity and the fewest GPUs, planned on
the dev cluster's cloud shapes (r1_operator/dev/data/cloud-nodes.yaml), which copy each kind's labels."""

from __future__ import annotations

import pytest

from r1_operator.dev.nodes import load_shapes
from r1_operator.planning.catalog import BUILTIN, R1_REPO
from r1_operator.planning.evaluate import PlanRequest
from r1_operator.planning.gpus import gpu_facts, parse_memory_by_label
from r1_operator.planning.inventory import Toleration, gpus_in_use, gpu_pod, holds_gpu, inventory, \
    required_node_terms
from r1_operator.planning.placement import place

CAT = BUILTIN[R1_REPO]
MiB = 1 << 20


def cloud_nodes(resource: str = "nvidia.com/gpu", memory_by_label=None, pods=()):
    raw = []
    for s in load_shapes("clouds"):
        n = s.to_node()
        n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        raw.append(n)
    return {c.name: c for c in inventory(raw, list(pods), resource, memory_by_label=memory_by_label)}


@pytest.mark.parametrize("name, gpus, mib, source, per_pod, replicas", [
    pytest.param("gke-a3-h100x8", 8, 81559, "cloud.google.com/gke-accelerator=nvidia-h100-80gb", 0, 1, id="gke"),
    pytest.param("gke-a2-mig", 2, 19968, "cloud.google.com/gke-gpu-partition-size=3g.20gb", 1, 1, id="gke-mig"),
    pytest.param("gke-l4-timeshare", 4, 23034, "cloud.google.com/gke-accelerator=nvidia-l4", 0, 4,
                 id="gke-time-sharing"),
    pytest.param("eks-p5", 8, 81559, "node.kubernetes.io/instance-type=p5.48xlarge", 0, 1, id="eks"),
    # the instance type's table figure, not Karpenter's nominal 49152
    pytest.param("eks-karpenter-g6e", 4, 46068, "node.kubernetes.io/instance-type=g6e.12xlarge", 0, 1,
                 id="eks-karpenter"),
    pytest.param("aks-nc-a100", 1, 81920, "node.kubernetes.io/instance-type=Standard_NC24ads_A100_v4", 0, 1,
                 id="aks"),
    pytest.param("gfd-h200x8", 8, 143771, "label nvidia.com/gpu.memory (GPU Feature Discovery)", 0, 1, id="gfd"),
    pytest.param("gfd-mig-single", 2, 40192, "label nvidia.com/gpu.memory", 1, 1, id="mig-single"),
    pytest.param("gfd-timesliced", 8, 81920, "label nvidia.com/gpu.memory", 0, 4, id="gfd-time-slicing"),
])
def test_each_cluster_kind_gives_its_gpus_memory_and_where_the_figure_came_from(name, gpus, mib, source, per_pod,
                                                                                  replicas):
    c = cloud_nodes()[name]
    assert (c.gpus, c.gpu_memory_bytes // MiB, c.gpu_per_pod, c.gpu_replicas) == (gpus, mib, per_pod, replicas)
    assert c.gpu_memory_source.startswith(source) and not c.problems


def test_mig_mixed_reads_the_profiles_memory_and_says_which_resource_to_ask_for():
    whole = cloud_nodes()["gfd-mig-mixed"]
    assert whole.gpus == 0 and "set spec.scheduling.gpuResourceName" in whole.problems[0]
    assert "nvidia.com/mig-3g.40gb" in whole.problems[0]
    mig = cloud_nodes("nvidia.com/mig-3g.40gb")["gfd-mig-mixed"]
    assert (mig.gpus, mig.gpu_memory_bytes // MiB, mig.gpu_per_pod) == (1, 40192, 1)
    assert mig.gpu_memory_source == "label nvidia.com/mig-3g.40gb.memory (GPU Feature Discovery)"
    assert mig.gpu_product == "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb"


def test_the_operator_setting_describes_a_node_nothing_else_does_and_a_node_nothing_describes_says_what_to_set():
    labels = {"example.com/gpu": "big"}
    none = gpu_facts("n", labels, 2)
    assert none.memory_bytes == 0 and "set the chart value gpuMemoryByLabel" in none.problems[0]
    got = gpu_facts("n", labels, 2, memory_by_label=parse_memory_by_label('{"example.com/gpu=big": 40000}'))
    assert got.memory_bytes == 40000 * MiB and got.source == "operator setting gpuMemoryByLabel example.com/gpu=big"
    # GFD measured the card: it wins over the setting
    gfd = gpu_facts("n", {**labels, "nvidia.com/gpu.memory": "24576"}, 1,
                    memory_by_label={"example.com/gpu=big": 40000})
    assert gfd.memory_bytes == 24576 * MiB


@pytest.mark.parametrize("text, what", [("nope", "not JSON"), ("[1]", "expected a mapping"),
                                        ('{"nokey": 1}', "must be label-key=value"), ('{"a=b": 0}', "positive"),
                                        ('{"a=b": true}', "positive")])
def test_a_bad_memory_setting_is_refused_naming_the_setting(text, what):
    with pytest.raises(ValueError, match="R1_GPU_MEMORY_BY_LABEL") as e:
        parse_memory_by_label(text)
    assert what in str(e.value)


def test_gke_taint_is_tolerated_for_gpu_plans_and_a_gpu_node_never_gets_a_cpu_only_runtime():
    nodes = cloud_nodes()
    r = place(CAT, [nodes["gke-a3-h100x8"]], PlanRequest(), 1)
    assert r.plan.fits and r.plan.node == "gke-a3-h100x8" and r.plan.mode == "gpu"
    # every GPU of the node taken: a CPU-only runtime would need the taint tolerated, so nothing is planned there
    busy = cloud_nodes(pods=[{"metadata": {"uid": "x"}, "spec": {"nodeName": "gke-a3-h100x8", "containers": [
        {"resources": {"limits": {"nvidia.com/gpu": "8"}}}]}, "status": {"phase": "Running"}}])
    none = place(CAT, [busy["gke-a3-h100x8"]], PlanRequest(), 1)
    assert not none.plan.fits
    assert any("is a GPU node (taint nvidia.com/gpu=present:NoSchedule)" in x for x in none.plan.reasons)


def test_a_taint_that_is_not_the_gpus_needs_the_specs_toleration():
    aks = cloud_nodes()["aks-nc-a100"]
    refused = place(CAT, [aks], PlanRequest(), 1)
    assert not refused.plan.fits and any("sku=gpu:NoSchedule" in x and "spec.scheduling.tolerations" in x
                                         for x in refused.plan.reasons)
    ok = place(CAT, [aks], PlanRequest(tolerations=(Toleration("sku", "Equal", "gpu", "NoSchedule"),)), 1)
    assert ok.plan.fits and ok.plan.gpus == 1


@pytest.mark.parametrize("name, resource", [("gfd-mig-single", "nvidia.com/gpu"), ("gke-a2-mig", "nvidia.com/gpu"),
                                            ("gfd-mig-mixed", "nvidia.com/mig-3g.40gb")])
def test_a_mig_node_never_gets_more_than_one_device_per_pod(name, resource):
    node = cloud_nodes(resource)[name]
    r = place(CAT, [node], PlanRequest(), 1)
    assert r.plan.fits and r.plan.gpus == 1 and r.plan.tensor_split == ()
    assert any("MIG: one instance per pod" in x for x in r.plan.reasons)


def test_mig_pods_count_as_gpu_users():
    pod = {"metadata": {"uid": "m", "namespace": "other"}, "spec": {"nodeName": "gfd-mig-mixed", "containers": [
        {"resources": {"limits": {"nvidia.com/mig-3g.40gb": "1"}}}]}, "status": {"phase": "Running"}}
    assert holds_gpu(pod["spec"])  # the operator's pod index keeps it (no "gpu" in the resource's name)
    assert gpus_in_use([gpu_pod(pod)], "nvidia.com/mig-3g.40gb") == {"gfd-mig-mixed": 1}
    node = cloud_nodes("nvidia.com/mig-3g.40gb", pods=[gpu_pod(pod)])["gfd-mig-mixed"]
    assert node.gpus_free == 0


def test_time_sliced_gpus_are_refused_unless_the_spec_says_how_and_never_tensor_split():
    for name in ("gfd-timesliced", "gke-l4-timeshare"):
        node = cloud_nodes()[name]
        refused = place(CAT, [node], PlanRequest(), 1)
        assert refused.plan.gpus == 0
        assert any("time-sliced" in x and "spec.scheduling.sharedGPUs" in x for x in refused.plan.reasons), name
    node = cloud_nodes()["gfd-timesliced"]
    whole = place(CAT, [node], PlanRequest(shared_gpus="wholeCard"), 1).plan
    fair = place(CAT, [node], PlanRequest(shared_gpus="fairShare"), 1).plan
    assert whole.gpus == fair.gpus == 1 and whole.tensor_split == fair.tensor_split == ()
    assert whole.memory[0].total > 3 * fair.memory[0].total  # the whole card against a quarter of it
    assert fair.memory[0].total <= node.gpu_memory_bytes // 4
    assert any("other pods given replicas of the same card share its memory" in w for w in whole.warnings)


def test_required_node_affinity_of_the_spec_is_honoured_by_the_planner():
    nodes = cloud_nodes()
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1a"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gfd-h200x8"]}]}]}}}
    req = PlanRequest(node_terms=required_node_terms(affinity))
    r = place(CAT, list(nodes.values()), req, 2)
    assert {p.plan.node for p in r.placements} <= {"eks-p5", "gfd-h200x8"} and r.placed == 2
    assert any("does not match the required node affinity of spec.scheduling.affinity" in x for x in r.plan.reasons)
    gt = required_node_terms({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "nvidia.com/cuda.driver-version.major", "operator": "Gt",
                                                     "values": ["560"]}]}]}}})
    only = place(CAT, list(nodes.values()), PlanRequest(node_terms=gt), 1)
    assert only.plan.node == "gfd-h200x8"


def test_one_replica_on_an_eight_gpu_node_takes_the_fewest_that_hold_it():
    r = place(CAT, [cloud_nodes()["gfd-h200x8"]], PlanRequest(), 1)
    assert r.plan.mode == "gpu" and r.plan.gpus == 2  # 212 GiB in 2 × 140 GiB, not all eight
