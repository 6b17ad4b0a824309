"""A GPU pool with no node yet, grown by a real autoscaler: Karpenter v1.15.0's controllers with its kwok provider
(`r1ctl dev up --autoscaler`), in a cluster of its own so it never adds nodes for other tests' pending pods.

The operator is told of the pool as a platform team declares it (R1_NODE_POOLS, the chart's nodePools). No
existing node matches the R1Deployment's nodeSelector, so the plan is on the pool's new node: a provision pod
selects the pool, Karpenter makes a NodeClaim and its Node, the plan moves onto that node by name, the cache is
fetched there and the runtime is Ready on it; the provision pod is gone and the pool grew by exactly one node.
The nodes are kwok's (no kubelet, no GPU): Karpenter, the scheduler and the operator are real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from r1_devtools.kit import REPO, Kube, drop_namespace, make_namespace, start_operator
from r1_devtools.waiting import wait_for

from r1_operator.builders import names
from r1_operator.dev import cluster as dev
from r1_operator.dev import karpenter

pytestmark = pytest.mark.cluster
NAME = "r1-pool"
POOL = {"karpenter.sh/nodepool": "gpu"}
R1CTL = str(Path(sys.executable).with_name("r1ctl"))


@pytest.fixture(scope="module")
def scaled_kube() -> Iterator[Kube]:
    name = f"karpenter-{os.getpid()}"
    state = dev.up(name, real_nodes=0, autoscaler=True, timeout=120)
    try:
        k = Kube(state.kubeconfig)
        k.run("apply", "--server-side", "-f", str(REPO / "crds" / "r1deployments.yaml"))
        k.run("apply", "--server-side", "-f", str(REPO / "crds" / "kopf-peering.yaml"))
        k.run("wait", "--for=condition=Established", "crd/r1deployments.r1.inference.dev", "--timeout=30s")
        yield k
    finally:
        dev.down(name)


def _pool_nodes(kube: Kube) -> list[dict]:
    return kube.json("get", "nodes", "-l", "karpenter.sh/nodepool=gpu")["items"]


def test_a_pool_with_no_node_grows_one_through_karpenter_and_the_runtime_is_ready_on_it(scaled_kube, hub, tmp_path):
    kube = scaled_kube
    ns = make_namespace(kube, f"pool-{os.getpid()}", {"pod-security.kubernetes.io/enforce": "restricted"})
    op = start_operator(kube.kubeconfig, tmp_path / "operator.log", "--standalone", "--namespace", "pool-*",
                        env={"R1_HUB_ENDPOINT": hub, "R1_NODE_POOLS": json.dumps(karpenter.operator_pools())})
    try:
        assert _pool_nodes(kube) == []  # the pool starts empty
        pools = tmp_path / "pools.json"
        pools.write_text(json.dumps(karpenter.operator_pools()))
        r = subprocess.run([R1CTL, "plan", "--kubeconfig", kube.kubeconfig, "--node-pools", str(pools), "-o", "json",
                            "--ctx-size", "4096"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        (row,) = [p for p in json.loads(r.stdout)["nodes"] if p["node"] == "pool/gpu/0"]
        assert row["gpus"] >= 1 and row["gpuProduct"] and row["nGpuLayers"] > 0
        kube.apply({"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "metadata": {"name": NAME},
                    "spec": {"model": {"variant": "UD-IQ1_S"}, "inference": {"ctxSize": 4096},
                             "scheduling": {"nodeSelector": POOL}}}, ns)
        kube.wait_condition(ns, NAME, "Planned", timeout=60)
        first = kube.r1d(ns, NAME)["status"]["plan"]
        assert first["node"] == "pool/gpu/0" and first["gpus"] >= 1
        assert "planned on a new node of pool gpu" in kube.condition(ns, NAME, "Planned")["message"]

        # the plan moves onto the node Karpenter made, pinned by its name
        def moved():
            plan = kube.r1d(ns, NAME)["status"]["plan"]
            return plan if not plan["node"].startswith("pool/") else None

        plan = wait_for(moved, 120, "the plan on the pool's new node")
        (node,) = _pool_nodes(kube)
        assert plan["node"] == node["metadata"]["name"]
        assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "g6e.12xlarge"
        assert plan["why"] == "re-planned: it waited on a new node of pool gpu"
        assert plan["gpus"] == first["gpus"] and plan["nGpuLayers"] == first["nGpuLayers"]
        (claim,) = kube.json("get", "nodeclaims")["items"]
        assert claim["status"]["nodeName"] == node["metadata"]["name"]

        kube.wait_condition(ns, NAME, "Ready", timeout=180)
        pods = kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector(NAME)))["items"]
        assert [p["spec"]["nodeName"] for p in pods] == [node["metadata"]["name"]]
        terms = pods[0]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == [node["metadata"]["name"]]
        wait_for(lambda: not kube.json("get", "deployments", "-n", ns, "-l",
                                       "app.kubernetes.io/component=provision")["items"], 30, "the provision pods gone")
        assert len(_pool_nodes(kube)) == 1  # one node: the fetch and the runtime went where the plan is
    finally:
        drop_namespace(kube, ns)
        op.stop()
