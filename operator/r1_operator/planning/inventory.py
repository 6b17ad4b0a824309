"""Node objects (plain dicts as the API returns them) → what each node can offer (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from r1_operator.planning.gpus import GPU_RESOURCE, gpu_facts, gpu_taint_keys

MiB = 1 << 20

_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}
_QTY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


def parse_quantity(value: object, what: str) -> Decimal:
    """A Kubernetes resource quantity ("64Gi", "500m", "1e3") as a number; errors name `what`."""
    text = str(value).strip()
    m = _QTY.match(text)
    if not m:
        raise ValueError(f"{what}: {text!r} is not a Kubernetes quantity")
    try:
        return Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2) or ""])
    except InvalidOperation:
        raise ValueError(f"{what}: {text!r} is not a Kubernetes quantity") from None


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, t: Taint) -> bool:
        if self.effect and self.effect != t.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == t.key
        return self.key == t.key and self.value == t.value


@dataclass(frozen=True)
class NodeCapacity:
    name: str
    gpus: int  # allocatable
    gpus_used: int
    gpu_memory_bytes: int  # per GPU
    gpu_product: str
    ram_bytes: int
    disk_bytes: int
    cpus: int
    ready: bool = True
    schedulable: bool = True
    taints: tuple[Taint, ...] = ()
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    problems: tuple[str, ...] = ()  # why the node's GPUs cannot be used (malformed labels, …)
    gpu_memory_source: str = ""  # where gpu_memory_bytes came from (planning.gpus)
    gpu_per_pod: int = 0  # most GPUs one pod can use (MIG: 1); 0: no limit
    gpu_replicas: int = 1  # time-slicing: allocatable GPUs are this many replicas of each physical one
    # taints that pods using the GPUs tolerate (GKE's nvidia.com/gpu=present:NoSchedule): the operator adds the
    # toleration to GPU pods, and a runtime without GPUs is not planned here
    gpu_taints: tuple[Taint, ...] = ()

    @property
    def gpus_free(self) -> int:
        return max(self.gpus - self.gpus_used, 0)

    def shape_key(self) -> tuple:
        """Nodes with equal keys get equal plans (used to memoise over large clusters)."""
        return (self.gpus_free, self.gpu_memory_bytes, self.ram_bytes, self.cpus, self.gpu_product, self.gpu_per_pod,
                self.gpu_replicas, bool(self.gpu_taints))


def node_capacity(node: dict[str, Any], gpus_used: int = 0, gpu_resource: str = GPU_RESOURCE,
                  memory_by_label: Mapping[str, int] | None = None) -> NodeCapacity:
    """Read one Node. GPU labels that cannot be read do not raise: they make the GPUs unusable and say why."""
    meta = node.get("metadata") or {}
    name = meta.get("name") or "?"
    labels = meta.get("labels") or {}
    status = node.get("status") or {}
    alloc = status.get("allocatable") or status.get("capacity") or {}
    spec = node.get("spec") or {}

    def qty(key: str, default: str = "0") -> Decimal:
        return parse_quantity(alloc.get(key, default), f"node {name}: allocatable {key}")

    g = gpu_facts(name, labels, int(qty(gpu_resource)), gpu_resource, memory_by_label)
    usable = g.count if g.memory_bytes else 0
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = tuple(
        Taint(t.get("key", ""), t.get("value", "") or "", t.get("effect", "NoSchedule"))
        for t in spec.get("taints") or []
    )
    keys = gpu_taint_keys(gpu_resource)
    gpu_taints = tuple(t for t in taints if t.key in keys and t.effect in ("NoSchedule", "NoExecute")) if usable else ()
    return NodeCapacity(
        name=name,
        gpus=usable,
        gpus_used=gpus_used if usable else 0,
        gpu_memory_bytes=g.memory_bytes if usable else 0,
        gpu_product=g.product,
        ram_bytes=int(qty("memory")),
        disk_bytes=int(qty("ephemeral-storage")),
        cpus=int(qty("cpu")),
        ready=ready,
        schedulable=not spec.get("unschedulable", False),
        taints=taints,
        labels=dict(labels),
        problems=g.problems,
        gpu_memory_source=g.source,
        gpu_per_pod=g.per_pod,
        gpu_replicas=g.replicas,
        gpu_taints=gpu_taints,
    )


def holds_gpu(spec: Mapping[str, Any]) -> bool:
    """A pod spec asking for any GPU resource: nvidia.com/gpu, a MIG profile (nvidia.com/mig-…), amd.com/gpu, …"""
    for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
        res = c.get("resources") or {}
        if any("gpu" in key or key.startswith("nvidia.com/") for part in ("limits", "requests")
               for key in (res.get(part) or {})):
            return True
    return False


def gpu_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the inventory keeps of a GPU-holding pod: its uid, namespace, labels, node, resources and phase."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}

    def resources(cs: Any) -> list[dict[str, Any]]:
        return [{"resources": dict(c.get("resources") or {})} for c in cs or []]

    return {"metadata": {"uid": meta.get("uid"), "namespace": meta.get("namespace"),
                         "labels": dict(meta.get("labels") or {})},
            "spec": {"nodeName": spec.get("nodeName"), "containers": resources(spec.get("containers")),
                     "initContainers": resources(spec.get("initContainers"))},
            "status": {"phase": (body.get("status") or {}).get("phase")}}


def _pod_gpus(pod: dict[str, Any], resource: str) -> int:
    spec = pod.get("spec") or {}

    def request(c: dict) -> int:
        res = c.get("resources") or {}
        v = (res.get("limits") or {}).get(resource) or (res.get("requests") or {}).get(resource) or 0
        return int(parse_quantity(v, f"pod {pod.get('metadata', {}).get('name')}: {resource}"))

    main = sum(request(c) for c in spec.get("containers") or [])
    init = max((request(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


def gpus_in_use(pods: list[dict[str, Any]], resource: str = GPU_RESOURCE, ignore_uids: frozenset[str] = frozenset()) -> dict[str, int]:
    """GPUs requested by running or pending-but-bound pods, per node name."""
    used: dict[str, int] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node or phase in ("Succeeded", "Failed") or (pod.get("metadata") or {}).get("uid") in ignore_uids:
            continue
        used[node] = used.get(node, 0) + _pod_gpus(pod, resource)
    return used


def inventory(nodes: list[dict[str, Any]], pods: list[dict[str, Any]] | None = None, gpu_resource: str = GPU_RESOURCE,
              ignore_uids: frozenset[str] = frozenset(), memory_by_label: Mapping[str, int] | None = None) \
        -> list[NodeCapacity]:
    """Node capacity with the GPUs pods hold; pods in ignore_uids (a deployment's own) do not count against it.
    memory_by_label: the operator's GPU memory setting (planning.gpus.parse_memory_by_label)."""
    used = gpus_in_use(pods or [], gpu_resource, ignore_uids=ignore_uids)
    return [node_capacity(n, used.get((n.get("metadata") or {}).get("name", ""), 0), gpu_resource, memory_by_label)
            for n in nodes]


@dataclass(frozen=True)
class Requirement:
    """One node selector requirement (In, NotIn, Exists, DoesNotExist, Gt, Lt) over a label or metadata.name."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, value: str | None) -> bool:
        op = self.operator
        if op == "In":
            return value is not None and value in self.values
        if op == "NotIn":
            return value is None or value not in self.values
        if op == "Exists":
            return value is not None
        if op == "DoesNotExist":
            return value is None
        if op in ("Gt", "Lt") and value is not None and len(self.values) == 1:
            try:
                a, b = int(value), int(self.values[0])
            except ValueError:
                return False
            return a > b if op == "Gt" else a < b
        return False


@dataclass(frozen=True)
class SelectorTerm:
    """A nodeSelectorTerm: every expression (labels) and field (metadata.name) must match; an empty one matches
    nothing, as in Kubernetes."""

    expressions: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    def matches(self, node: NodeCapacity) -> bool:
        if not self.expressions and not self.fields:
            return False
        return all(r.matches(node.labels.get(r.key)) for r in self.expressions) and \
            all(r.matches(node.name if r.key == "metadata.name" else None) for r in self.fields)


def required_node_terms(affinity: Mapping[str, Any] | None) -> tuple[SelectorTerm, ...]:
    """The required node affinity of a pod's affinity (spec.scheduling.affinity): its nodeSelectorTerms, ORed."""
    req = ((affinity or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {}

    def reqs(items: Any) -> tuple[Requirement, ...]:
        return tuple(Requirement(str(r.get("key", "")), str(r.get("operator", "")),
                                 tuple(str(v) for v in r.get("values") or ())) for r in items or ())

    return tuple(SelectorTerm(reqs(t.get("matchExpressions")), reqs(t.get("matchFields")))
                 for t in req.get("nodeSelectorTerms") or ())


def eligible(node: NodeCapacity, node_selector: tuple[tuple[str, str], ...] = (),
             tolerations: tuple[Toleration, ...] = (), node_terms: tuple[SelectorTerm, ...] = ()) -> str | None:
    """Why the node cannot run the runtime at all, or None. A taint in node.gpu_taints is no reason: pods using the
    node's GPUs tolerate it (evaluate then plans no CPU-only runtime there)."""
    if not node.ready:
        return f"{node.name} is not Ready"
    if not node.schedulable:
        return f"{node.name} is cordoned (unschedulable)"
    for key, value in node_selector:
        if node.labels.get(key) != value:
            return f"{node.name} does not match nodeSelector {key}={value}"
    if node_terms and not any(t.matches(node) for t in node_terms):
        return f"{node.name} does not match the required node affinity of spec.scheduling.affinity"
    for t in node.taints:
        if t.effect in ("NoSchedule", "NoExecute") and t not in node.gpu_taints \
                and not any(tol.tolerates(t) for tol in tolerations):
            return f"{node.name} has taint {t.key}={t.value}:{t.effect} that the spec does not tolerate " \
                   "(add it to spec.scheduling.tolerations)"
    return None


def hypothetical(gpu_count: int, gpu_memory_gb: float, ram_gb: float, disk_gb: float | None = None, cpus: int = 16,
                 name: str = "hypothetical") -> NodeCapacity:
    """A node described by flags (GB here means GiB, as in the blog's table)."""
    for flag, value, hi in (("--gpu-count", gpu_count, 64), ("--gpu-memory-gb", gpu_memory_gb, 4096),
                            ("--ram-gb", ram_gb, 1 << 16), ("--disk-gb", disk_gb if disk_gb is not None else 0, 1 << 24)):
        if value < 0 or value > hi:
            raise ValueError(f"{flag} must be between 0 and {hi}, got {value}")
    if gpu_count and gpu_memory_gb <= 0:
        raise ValueError("--gpu-memory-gb must be > 0 when --gpu-count > 0")
    gib = 1 << 30
    return NodeCapacity(
        name=name, gpus=gpu_count, gpus_used=0, gpu_memory_bytes=int(gpu_memory_gb * gib) if gpu_count else 0,
        gpu_product="", ram_bytes=int(ram_gb * gib), disk_bytes=int((disk_gb or 0) * gib), cpus=cpus,
    )
