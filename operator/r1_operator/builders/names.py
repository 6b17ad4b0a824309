"""Names and labels of the children (pure). Names are stable so reconciles are idempotent."""

from __future__ import annotations

import hashlib
import re

from r1_operator.api.types import GROUP

MANAGED_BY = "r1-operator"
LABEL_DEPLOYMENT = f"{GROUP}/deployment"
LABEL_CACHE = f"{GROUP}/cache"
LABEL_PLACEMENT = f"{GROUP}/placement"  # on runtime pods: the placement (status.plan.placements[].id) they serve
ANN_PLAN_HASH = f"{GROUP}/plan-hash"
ANN_APPLIED = f"{GROUP}/applied-hash"  # on applied children: hash of the configuration last applied
ANN_CACHE_READY = f"{GROUP}/cache-ready"  # on the PVC: the fetch Job succeeded (its summary)
ANN_CACHE_SOURCE = f"{GROUP}/cache-source"  # on the PVC: repo@revision/variant
# DEV CLUSTERS ONLY (read only with R1_DEV_SIMULATED_GPUS): on an R1Deployment, the bytes free on each of its
# simulated GPUs; the runtime's mock of a GPU (r1_runtime.devgpu) fails a load that plans more there.
ANN_DEV_GPU_FREE = f"{GROUP}/dev-simulated-gpu-free-bytes"
# DEV CLUSTERS ONLY (the same): the host bytes the runtime holds beyond its small test model, standing in for what
# a real model's load would use that the plan did not predict (r1_runtime.devgpu.host_ballast).
ANN_DEV_HOST_BYTES = f"{GROUP}/dev-simulated-host-bytes"
# Each dev-only annotation and the runtime flag it becomes.
DEV_MOCKS = {ANN_DEV_GPU_FREE: "dev_simulated_gpu_free_bytes", ANN_DEV_HOST_BYTES: "dev_simulated_host_bytes"}


def _dns(text: str, limit: int) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-")


def cache_source(repo: str, revision: str, variant: str, node: str | None = None) -> str:
    """What a cache holds, and where: repo@revision/variant, plus @node for a volume bound to one node."""
    return f"{repo}@{revision}/{variant}" + (f"@{node}" if node else "")


def cache_key(repo: str, revision: str, variant: str, node: str | None = None) -> str:
    """One cache per (repo, revision, variant) in a namespace, and per node for ReadWriteOnce volumes."""
    return hashlib.sha256(cache_source(repo, revision, variant, node).encode()).hexdigest()[:10]


def cache_name(repo: str, revision: str, variant: str, node: str | None = None) -> str:
    """PVC and Job name, e.g. r1-cache-ud-iq1-s-gpu-80g-0123456789 (≤ 63 characters)."""
    where = f"{_dns(node, 16)}-" if node else ""
    return f"r1-cache-{_dns(variant, 24 if node else 40)}-{where}{cache_key(repo, revision, variant, node)}"


def runtime_name(name: str) -> str:
    """The Deployment and Service carry the R1Deployment's own name (the CRD limits it to a DNS label)."""
    return name


def placement_name(name: str, placement: int) -> str:
    """The Deployment of one placement: the first keeps the R1Deployment's own name, the others add -pN."""
    return runtime_name(name) if placement == 0 else f"{runtime_name(name)}-p{placement}"


def placement_selector(name: str, placement: int) -> dict[str, str]:
    """A placement's Deployment selects its own pods only; the Service selects every placement's (selector)."""
    return {**selector(name), LABEL_PLACEMENT: str(placement)}


def provision_name(name: str, placement: int) -> str:
    """The Deployment whose pods ask a node pool's autoscaler for a node for one placement (planning.pools)."""
    return f"{runtime_name(name)}-provision-p{placement}"


def provision_selector(name: str, placement: int) -> dict[str, str]:
    return {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": "provision", LABEL_DEPLOYMENT: name,
            LABEL_PLACEMENT: str(placement)}


def provision_policy_name(name: str) -> str:
    """The NetworkPolicy that closes the provision pods of this R1Deployment to all ingress."""
    return f"{runtime_name(name)}-provision"


def dashboard_name(name: str) -> str:
    """The per-R1Deployment Grafana dashboard ConfigMap."""
    return f"{runtime_name(name)}-dashboard"


def fetch_policy_name(name: str) -> str:
    """The NetworkPolicy that closes the fetch Job's pods of this R1Deployment's cache to all ingress."""
    return f"{runtime_name(name)}-fetch"


def labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "r1-runtime",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_DEPLOYMENT: name,
    }


def selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": "runtime", LABEL_DEPLOYMENT: name}


def cache_labels(key: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "r1-cache", "app.kubernetes.io/component": "cache",
            "app.kubernetes.io/managed-by": MANAGED_BY, LABEL_CACHE: key}


def selector_string(sel: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items()))
