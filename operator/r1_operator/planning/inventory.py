"""Node objects (plain dicts as the API returns them) → what each node can offer (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
LABEL_MEMORY = "nvidia.com/gpu.memory"
LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_COUNT = "nvidia.com/gpu.count"
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

    @property
    def gpus_free(self) -> int:
        return max(self.gpus - self.gpus_used, 0)

    def shape_key(self) -> tuple:
        """Nodes with equal keys get equal plans (used to memoise over large clusters)."""
        return (self.gpus_free, self.gpu_memory_bytes, self.ram_bytes, self.cpus, self.gpu_product)


def node_capacity(node: dict[str, Any], gpus_used: int = 0, gpu_resource: str = GPU_RESOURCE) -> NodeCapacity:
    """Read one Node. Malformed GPU labels do not raise: they make the GPUs unusable and say why."""
    meta = node.get("metadata") or {}
    name = meta.get("name") or "?"
    labels = meta.get("labels") or {}
    status = node.get("status") or {}
    alloc = status.get("allocatable") or status.get("capacity") or {}
    spec = node.get("spec") or {}
    problems: list[str] = []

    def qty(key: str, default: str = "0") -> Decimal:
        return parse_quantity(alloc.get(key, default), f"node {name}: allocatable {key}")

    gpus = int(qty(gpu_resource))
    mem_label = labels.get(LABEL_MEMORY)
    gpu_mem = 0
    if gpus:
        if mem_label is None:
            problems.append(f"node {name}: {gpus} GPU(s) but no {LABEL_MEMORY} label (GPU Feature Discovery); GPUs not used")
        elif not str(mem_label).isdigit() or int(mem_label) <= 0:
            problems.append(f"node {name}: label {LABEL_MEMORY}={mem_label!r} is not a positive integer of MiB; GPUs not used")
        else:
            gpu_mem = int(mem_label) * MiB
        count = labels.get(LABEL_COUNT)
        if count is not None and (not str(count).isdigit()):
            problems.append(f"node {name}: label {LABEL_COUNT}={count!r} is not an integer")
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = tuple(
        Taint(t.get("key", ""), t.get("value", "") or "", t.get("effect", "NoSchedule"))
        for t in spec.get("taints") or []
    )
    return NodeCapacity(
        name=name,
        gpus=gpus if gpu_mem else 0,
        gpus_used=gpus_used if gpu_mem else 0,
        gpu_memory_bytes=gpu_mem,
        gpu_product=str(labels.get(LABEL_PRODUCT, "")),
        ram_bytes=int(qty("memory")),
        disk_bytes=int(qty("ephemeral-storage")),
        cpus=int(qty("cpu")),
        ready=ready,
        schedulable=not spec.get("unschedulable", False),
        taints=taints,
        labels=dict(labels),
        problems=tuple(problems),
    )


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
              ignore_uids: frozenset[str] = frozenset()) -> list[NodeCapacity]:
    """Node capacity with the GPUs pods hold; pods in ignore_uids (a deployment's own) do not count against it."""
    used = gpus_in_use(pods or [], gpu_resource, ignore_uids=ignore_uids)
    return [node_capacity(n, used.get((n.get("metadata") or {}).get("name", ""), 0), gpu_resource) for n in nodes]


def eligible(node: NodeCapacity, node_selector: tuple[tuple[str, str], ...] = (),
             tolerations: tuple[Toleration, ...] = ()) -> str | None:
    """Why the node cannot run the runtime at all, or None."""
    if not node.ready:
        return f"{node.name} is not Ready"
    if not node.schedulable:
        return f"{node.name} is cordoned (unschedulable)"
    for key, value in node_selector:
        if node.labels.get(key) != value:
            return f"{node.name} does not match nodeSelector {key}={value}"
    for t in node.taints:
        if t.effect in ("NoSchedule", "NoExecute") and not any(tol.tolerates(t) for tol in tolerations):
            return f"{node.name} has taint {t.key}={t.value}:{t.effect} that the spec does not tolerate"
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
