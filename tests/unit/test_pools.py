"""Node pools an autoscaler grows (planning.pools): declared, planned on only when no existing node places every
replica, rendered as pods that select the pool, and left for the real node as soon as one is there. The pool here is
the dev cluster's Karpenter pool (r1_operator/dev/data/autoscaler.yaml): EKS's g6e.12xlarge, 4 L40S."""

from __future__ import annotations

import json

import pytest

from r1_operator.api.types import R1DeploymentSpec
from r1_operator.builders import manifests as mf
from r1_operator.dev import karpenter
from r1_operator.planning.decide import decide, on_pools
from r1_operator.planning.inventory import inventory
from r1_operator.planning.pools import parse_pools, pool_nodes, pool_of
from r1_operator.settings import OperatorSettings

MiB = 1 << 20
POOLS = karpenter.operator_pools()
S = OperatorSettings(node_pools=json.dumps(POOLS))
SELECT = {"karpenter.sh/nodepool": "gpu"}


def _spec(**scheduling):
    return R1DeploymentSpec.model_validate({"model": {"variant": "UD-IQ1_S"}, "inference": {"ctxSize": 4096},
                                            "scheduling": {"nodeSelector": SELECT, **scheduling}})


def _ready(node):
    node.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
    return node


def provisioned_node():
    """The Node Karpenter's kwok provider makes for the pool (its labels, allocatable and taint)."""
    return _ready({"metadata": {"name": "kwok-gpu-abc", "labels": {
        "karpenter.sh/nodepool": "gpu", "node.kubernetes.io/instance-type": "g6e.12xlarge",
        "karpenter.sh/capacity-type": "on-demand", "topology.kubernetes.io/zone": "test-zone-a",
        "kubernetes.io/hostname": "gpu-abc", "karpenter.kwok.sh/instance-family": "g6e",
        "karpenter.sh/registered": "true", "karpenter.sh/initialized": "true", "kwok.x-k8s.io/node": "fake"}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "47900m", "memory": "393206Mi", "nvidia.com/gpu": "4", "pods": "110",
                                   "ephemeral-storage": "3800G"},
                   "capacity": {"cpu": "8", "memory": "100Gi", "nvidia.com/gpu": "2", "pods": "1"}}})


def test_a_pool_new_node_reads_as_a_live_one_would_its_gpu_memory_from_the_instance_type():
    (n,) = pool_nodes(S.pools())
    assert pool_of(n.name) == "gpu" and n.gpus == 4 and n.gpu_memory_bytes // MiB == 46068
    assert n.gpu_memory_source.startswith("node.kubernetes.io/instance-type=g6e.12xlarge")
    assert [t.key for t in n.gpu_taints] == ["nvidia.com/gpu"]
    (live,) = inventory([provisioned_node()])
    assert (live.gpus, live.gpu_memory_bytes) == (n.gpus, n.gpu_memory_bytes)
    (own,) = pool_nodes(parse_pools([{**POOLS[0], "labels": {"pool": "x"}, "gpuMemoryMiB": 24000}]))
    assert own.gpu_memory_bytes == 24000 * MiB and "gpuMemoryMiB" in own.gpu_memory_source


@pytest.mark.parametrize("pools, field", [
    ({"name": "gpu"}, "nodePools[0].labels"),
    ({"name": "a/b", "labels": {"x": "y"}, "cpu": "1", "memory": "1Gi"}, "nodePools[0].name"),
    ({"name": "gpu", "labels": {"x": "y"}, "cpu": "1", "memory": "lots"}, "nodePools[0].memory"),
    ({"name": "gpu", "labels": {"x": "y"}, "cpu": "1", "memory": "1Gi", "gpus": -1}, "nodePools[0].gpus"),
    ({"name": "gpu", "labels": {"x": "y"}, "cpu": "1", "memory": "1Gi", "gpu": 4}, "unknown field(s) gpu"),
    ({"name": "gpu", "labels": {"x": "y"}, "cpu": "1", "memory": "1Gi", "taints": [{"key": "k", "effect": "No"}]},
     "nodePools[0].taints[0]"),
])
def test_bad_pools_are_refused_at_start_naming_the_entry_and_field(pools, field):
    with pytest.raises(ValueError, match="R1_NODE_POOLS") as exc:
        OperatorSettings.from_env({"R1_NODE_POOLS": json.dumps([pools])})
    assert field in str(exc.value)


def test_with_no_node_that_fits_the_plan_is_on_the_pool_and_its_pods_select_it_unpinned():
    spec = _spec()
    out = decide(spec, 1, [], None, pool_nodes(S.pools()))
    assert out.plan["fits"] and out.plan["node"] == "pool/gpu/0" and on_pools(out.plan) == ["gpu"]
    assert "planned on a new node of pool gpu" in out.plan["reasons"][0]
    assert decide(spec, 1, [], None).plan["fits"] is False  # without the pool nothing fits
    dep = mf.build_provision("r1", "ns", "u", spec, out.plan, S)
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {**SELECT, "node.kubernetes.io/instance-type": "g6e.12xlarge"}
    assert "affinity" not in pod  # no pin: the node has no name yet
    assert {"key": "nvidia.com/gpu", "operator": "Exists"} in pod["tolerations"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(out.plan["gpus"]) and c["command"] == ["sleep", "infinity"]
    assert c["securityContext"]["runAsNonRoot"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"]["limits"]["memory"] == c["resources"]["requests"]["memory"]
    assert dep["metadata"]["name"] == "r1-provision-p0"
    assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "provision"


def test_the_plan_moves_onto_the_pool_node_once_it_is_there_and_stays_on_the_pool_until_then():
    spec, pools = _spec(), pool_nodes(S.pools())
    first = decide(spec, 1, [], None, pools).plan
    again = decide(spec, 1, [], first, pools)
    assert not again.changed and again.plan["node"] == "pool/gpu/0" and again.plan["why"] == "planned"
    moved = decide(spec, 1, inventory([provisioned_node()]), first, pools)
    assert moved.changed and moved.plan["node"] == "kwok-gpu-abc" and not on_pools(moved.plan)
    assert moved.plan["why"] == "re-planned: it waited on a new node of pool gpu"
    assert moved.plan["gpus"] == first["gpus"] and moved.plan["nGpuLayers"] == first["nGpuLayers"]
    kept = decide(spec, 1, inventory([provisioned_node()]), moved.plan, pools)
    assert not kept.changed and kept.plan["node"] == "kwok-gpu-abc"


def test_a_node_that_fits_is_used_before_any_pool_and_a_pool_taint_the_spec_does_not_tolerate_rules_it_out():
    spec, pools = _spec(), pool_nodes(S.pools())
    assert decide(spec, 1, inventory([provisioned_node()]), None, pools).plan["node"] == "kwok-gpu-abc"
    tainted = parse_pools([{**POOLS[0], "taints": [*POOLS[0]["taints"],
                                                   {"key": "team", "value": "ml", "effect": "NoSchedule"}]}])
    assert decide(spec, 1, [], None, pool_nodes(tainted)).plan["fits"] is False
    ok = _spec(tolerations=[{"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}])
    assert decide(ok, 1, [], None, pool_nodes(tainted)).plan["node"] == "pool/gpu/0"
