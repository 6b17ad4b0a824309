"""Karpenter in a dev cluster: its kwok provider as a host process, like the control plane, with GPU NodePools.

hack/build-cluster.sh builds `karpenter-kwok` (sigs.k8s.io/karpenter's kwok provider, the real Karpenter
controllers with kwok nodes for instances) and keeps its CRDs. For a pending pod that no node fits, Karpenter
makes a NodeClaim from a NodePool and the provider creates the Node; the cluster's kwok then runs it like the
other simulated nodes (it carries kwok's annotation). The pools are dev/data/autoscaler.yaml's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from r1_operator.dev.adminapi import AdminApi, get_url
from r1_operator.dev.processes import ClusterError, alive, find_binary, free_ports, log_tail, spawn

NAMESPACE = "karpenter"
COMPONENTS = ("karpenter",)  # stopped by cluster.down
NODE_CLASS = "default"


def _data() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(resources.files("r1_operator.dev").joinpath("data/autoscaler.yaml").read_text())


def operator_pools() -> list[dict[str, Any]]:
    """The dev pools as the operator is told of them (its nodePools setting)."""
    return _data()["operatorPools"]


def crd_dir() -> Path:
    d = Path(os.environ.get("R1_BIN_DIR") or Path(sys.executable).parent).parent / "share" / "karpenter-crds"
    if not d.is_dir():
        raise ClusterError(f"Karpenter's CRDs are not in {d}: run 'make setup' (hack/build-cluster.sh builds it)")
    return d


def node_pool(pool: dict[str, Any]) -> dict[str, Any]:
    """A karpenter.sh/v1 NodePool of the given instance types on the KWOK node class, never consolidated (a dev
    cluster's test decides when its nodes go)."""
    return {
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": pool["name"]},
        "spec": {
            "template": {"spec": {
                "requirements": [
                    {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": pool["instanceTypes"]},
                    {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]}],
                "taints": pool.get("taints") or [],
                "nodeClassRef": {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": NODE_CLASS},
                "expireAfter": "Never"}},
            "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "Never"},
        },
    }


def _ok(what: str, code: int, body: dict) -> None:
    if code not in (200, 201, 409):
        raise ClusterError(f"{what} failed: HTTP {code}: {body.get('message')}")


def _established(api: AdminApi, name: str, deadline: float) -> None:
    while not any(c["type"] == "Established" and c["status"] == "True" for c in api.request(
            "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")[1]
            .get("status", {}).get("conditions") or []):
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out waiting for the CRD {name} to be established")
        time.sleep(0.2)


def start(state, api: AdminApi, timeout: float = 120.0) -> None:
    """Install Karpenter's CRDs, start the kwok provider, create the node class and the NodePools, and wait until
    every NodePool is Ready (Karpenter provisions from it)."""
    import yaml

    binary = find_binary("karpenter-kwok")
    deadline = time.monotonic() + timeout
    crds = [yaml.safe_load(f.read_text()) for f in sorted(crd_dir().glob("*.yaml"))]
    for crd in crds:
        _ok(f"installing {crd['metadata']['name']}", *api.request(
            "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd))
    for crd in crds:
        _established(api, crd["metadata"]["name"], deadline)
    _ok("creating the karpenter namespace", *api.request("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
    data = _data()
    types = Path(state.root) / "karpenter-instance-types.json"
    types.write_text(json.dumps(data["instanceTypes"], indent=1))
    metrics, probe = free_ports(2)
    env = {**os.environ, "KUBECONFIG": state.kubeconfig, "SYSTEM_NAMESPACE": NAMESPACE,
           "KUBERNETES_MIN_VERSION": "1.19.0-0", "DISABLE_WEBHOOK": "true"}
    spawn(state, "karpenter", [
        str(binary), "--disable-leader-election", f"--metrics-port={metrics}", f"--health-probe-port={probe}",
        f"--instance-types-file-path={types}", "--log-level=info", "--batch-idle-duration=1s",
        "--batch-max-duration=3s",
    ], env=env)
    _ok("creating the KWOKNodeClass", *api.request("POST", "/apis/karpenter.kwok.sh/v1alpha1/kwoknodeclasses", {
        "apiVersion": "karpenter.kwok.sh/v1alpha1", "kind": "KWOKNodeClass", "metadata": {"name": NODE_CLASS}}))
    for pool in data["nodePools"]:
        _ok(f"creating the NodePool {pool['name']}", *api.request(
            "POST", "/apis/karpenter.sh/v1/nodepools", node_pool(pool)))
    log = state.logs / "karpenter.log"
    waiting = ""
    while time.monotonic() < deadline:
        if not alive(state.pids["karpenter"]):
            raise ClusterError(f"karpenter exited while starting; the end of {log}:\n{log_tail(log)}")
        ready = get_url(f"http://127.0.0.1:{probe}/readyz")[0] == 200
        pools = api.request("GET", "/apis/karpenter.sh/v1/nodepools")[1].get("items") or []
        waiting = ", ".join(p["metadata"]["name"] for p in pools if not any(
            c["type"] == "Ready" and c["status"] == "True" for c in (p.get("status") or {}).get("conditions") or []))
        if ready and pools and not waiting:
            return
        time.sleep(0.5)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for Karpenter (NodePools not Ready: "
                       f"{waiting or '-'}); the end of {log}:\n{log_tail(log)}")
