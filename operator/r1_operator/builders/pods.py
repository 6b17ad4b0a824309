"""What every pod the operator makes shares (pure): security contexts, volumes, placement on the planned node, the
GPU taint's toleration and GPU visibility, and the pod defaults of the chart overridden by spec.scheduling."""

from __future__ import annotations

import copy
from typing import Any

from r1_operator.api.types import R1DeploymentSpec
from r1_operator.planning.gpus import gpu_taint_keys
from r1_operator.planning.pools import find, pool_of
from r1_operator.settings import OperatorSettings

CACHE_MOUNT = "/cache"
MOUNTS = [{"name": "cache", "mountPath": CACHE_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}]
# A container that requests no GPU sees none, even where the node's container runtime would show it every GPU
# (the NVIDIA container toolkit reads this; "void" is its value for no device and no driver libraries).
NO_GPU_ENV = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}


def container_security(s: OperatorSettings) -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "runAsUser": s.run_as_user, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def pod_security(s: OperatorSettings) -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": s.run_as_user, "runAsGroup": s.run_as_user, "fsGroup": s.run_as_user,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def volumes(cache_pvc: str) -> list[dict[str, Any]]:
    return [{"name": "cache", "persistentVolumeClaim": {"claimName": cache_pvc}}, {"name": "tmp", "emptyDir": {}}]


def pinned_affinity(affinity: dict[str, Any] | None, node: str | None) -> dict[str, Any] | None:
    """spec.scheduling.affinity with the pod pinned to its planned node by name (matchFields on metadata.name: a
    node's hostname label may differ from its name). The pin joins each of the spec's required nodeSelectorTerms,
    since terms are ORed and a term's requirements ANDed."""
    out = copy.deepcopy(affinity) if affinity else {}
    if not node:
        return out or None
    pin = {"key": "metadata.name", "operator": "In", "values": [node]}
    required = out.setdefault("nodeAffinity", {}).setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    required["nodeSelectorTerms"] = [{**t, "matchFields": [*(t.get("matchFields") or []), pin]} for t in terms]
    return out


def gpu_tolerations(spec: R1DeploymentSpec, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Tolerations of the GPU taints (planning.gpus.gpu_taint_keys) for a pod on a node whose GPUs the plan uses:
    the runtime, which requests them, and the fetch Job that fills that node's cache."""
    if not plan.get("gpus"):
        return []
    return [{"key": k, "operator": "Exists"} for k in sorted(gpu_taint_keys(spec.scheduling.gpu_resource_name))]


def _env(spec: R1DeploymentSpec, s: OperatorSettings) -> list[dict[str, str]]:
    """The chart's extra env with spec.scheduling.env over it, by name."""
    merged = {e["name"]: {"name": e["name"], "value": e.get("value", "")} for e in s.pod_defaults()["env"]}
    merged.update({e.name: {"name": e.name, "value": e.value} for e in spec.scheduling.env})
    return list(merged.values())


def place_pod(pod: dict[str, Any], meta: dict[str, Any], spec: R1DeploymentSpec, plan: dict[str, Any],
              s: OperatorSettings) -> None:
    """Pin a pod template (its spec `pod`, its metadata `meta`) to the plan's node, and give it the scheduling
    fields, pod defaults and env of the chart and spec.scheduling. A plan on a node pool's new node
    (planning.pools) selects the pool's labels instead of one node. A container without a GPU gets NO_GPU_ENV; the
    operator's own env and labels win over the defaults (the CRD refuses those names in the spec)."""
    sch, defaults = spec.scheduling, s.pod_defaults()
    pool = find(s.pools(), pool_of(plan.get("node")))
    selector = {**sch.node_selector, **dict(pool.labels if pool else ())}
    if selector:
        pod["nodeSelector"] = selector
    affinity = pinned_affinity(sch.affinity, None if pool_of(plan.get("node")) else plan.get("node"))
    if affinity:
        pod["affinity"] = affinity
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in sch.tolerations]
    tolerations += [t for t in gpu_tolerations(spec, plan) if t not in tolerations]
    if tolerations:
        pod["tolerations"] = tolerations
    for key, value in (("runtimeClassName", sch.runtime_class_name or s.runtime_class_name),
                       ("priorityClassName", sch.priority_class_name or s.priority_class_name)):
        if value:
            pod[key] = value
    secrets = list(dict.fromkeys([*defaults["imagePullSecrets"], *(r.name for r in sch.image_pull_secrets)]))
    if secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in secrets]
    meta["labels"] = {**defaults["labels"], **sch.pod_labels, **meta.get("labels", {})}
    annotations = {**defaults["annotations"], **sch.pod_annotations, **meta.get("annotations", {})}
    if annotations:
        meta["annotations"] = annotations
    extra = _env(spec, s)
    gpu = sch.gpu_resource_name
    for c in pod["containers"]:
        own = {e["name"] for e in c.get("env", [])}
        c["env"] = [*c.get("env", []), *(e for e in extra if e["name"] not in own)]
        if gpu not in ((c.get("resources") or {}).get("limits") or {}):
            c["env"].append(NO_GPU_ENV)
