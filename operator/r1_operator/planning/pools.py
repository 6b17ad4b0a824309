"""Node pools that an autoscaler (Karpenter, cluster-autoscaler) grows on demand: declared shapes of nodes that do
not exist yet (pure).

A platform team declares each pool once (the chart's `nodePools`, the operator's R1_NODE_POOLS): the labels a new
node of the pool has, its GPUs and their memory, its RAM and CPUs, its taints. When no existing node places every
replica, the planner also plans on these: a placement there is on a node named `pool/NAME/I` (never a real node's
name: names cannot hold a slash). Its pods select the pool's labels rather than one node, so the autoscaler adds a
node for them; when that node is Ready the plan moves onto it (planning.decide never keeps a pool placement).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from r1_operator.planning.gpus import GPU_RESOURCE, gpu_taint_keys
from r1_operator.planning.inventory import MiB, NodeCapacity, Taint, node_capacity, parse_quantity

POOL_NODE_PREFIX = "pool/"
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_KEYS = {"name", "labels", "gpus", "gpuMemoryMiB", "gpuResourceName", "cpu", "memory", "ephemeralStorage", "taints",
         "maxNodes"}


@dataclass(frozen=True)
class NodePool:
    name: str
    labels: tuple[tuple[str, str], ...]  # every new node of the pool has these; its pods select all of them
    gpus: int = 0
    gpu_memory_mib: int = 0  # per GPU; 0: read from the labels as for a live node (planning.gpus)
    gpu_resource: str = GPU_RESOURCE
    cpu: str = "0"
    memory: str = "0"
    ephemeral_storage: str = "0"
    taints: tuple[Taint, ...] = ()
    max_nodes: int = 1  # nodes the planner may ask of this pool for one R1Deployment

    def as_node(self, i: int) -> dict[str, Any]:
        """The Node object a new node of the pool would be, as the API would return it (Ready, nothing on it)."""
        alloc = {"cpu": self.cpu, "memory": self.memory, "ephemeral-storage": self.ephemeral_storage}
        if self.gpus:
            alloc[self.gpu_resource] = str(self.gpus)
        return {"metadata": {"name": pool_node_name(self.name, i), "labels": dict(self.labels)},
                "spec": {"taints": [{"key": t.key, "value": t.value, "effect": t.effect} for t in self.taints]},
                "status": {"allocatable": alloc, "conditions": [{"type": "Ready", "status": "True"}]}}


def pool_node_name(pool: str, i: int) -> str:
    return f"{POOL_NODE_PREFIX}{pool}/{i}"


def pool_of(node: str | None) -> str | None:
    """The pool a planned node name stands for, or None for a real node."""
    if not node or not node.startswith(POOL_NODE_PREFIX):
        return None
    return node[len(POOL_NODE_PREFIX):].rsplit("/", 1)[0]


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: must be a non-empty string, got {value!r}")
    return value


def _count(where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{where}: must be a whole number from {lo} to {hi}, got {value!r}")
    return value


def _quantity(where: str, value: Any) -> str:
    text = str(value)
    parse_quantity(text, where)
    return text


def parse_pools(raw: Any, where: str = "nodePools") -> tuple[NodePool, ...]:
    """The declared pools (a list of mappings, as the chart writes them); errors name the entry and field."""
    if raw in (None, ""):
        return ()
    if not isinstance(raw, list):
        raise ValueError(f"{where}: must be a list of pools, got {type(raw).__name__}")
    pools: list[NodePool] = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{at}: must be a mapping with name, labels, gpus, memory, ...")
        unknown = sorted(set(item) - _KEYS)
        if unknown:
            raise ValueError(f"{at}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
        name = _text(f"{at}.name", item.get("name"))
        if "/" in name or name in {p.name for p in pools}:
            raise ValueError(f"{at}.name: {name!r} must be unique and hold no '/'")
        labels = item.get("labels")
        if not isinstance(labels, Mapping) or not labels:
            raise ValueError(f"{at}.labels: the labels every new node of the pool has (its pods select them), "
                             "e.g. {karpenter.sh/nodepool: gpu}; required")
        taints = []
        for j, t in enumerate(item.get("taints") or []):
            if not isinstance(t, Mapping) or t.get("effect", "NoSchedule") not in _EFFECTS:
                raise ValueError(f"{at}.taints[{j}]: needs key, value and effect (one of {', '.join(_EFFECTS)})")
            taints.append(Taint(_text(f"{at}.taints[{j}].key", t.get("key")), str(t.get("value") or ""),
                                t.get("effect", "NoSchedule")))
        pools.append(NodePool(
            name=name, labels=tuple(sorted((_text(f"{at}.labels", k), str(v)) for k, v in labels.items())),
            gpus=_count(f"{at}.gpus", item.get("gpus", 0), 0, 64),
            gpu_memory_mib=_count(f"{at}.gpuMemoryMiB", item.get("gpuMemoryMiB", 0), 0, 1 << 22),
            gpu_resource=_text(f"{at}.gpuResourceName", item.get("gpuResourceName", GPU_RESOURCE)),
            cpu=_quantity(f"{at}.cpu", _text(f"{at}.cpu", str(item.get("cpu", "")))),
            memory=_quantity(f"{at}.memory", _text(f"{at}.memory", str(item.get("memory", "")))),
            ephemeral_storage=_quantity(f"{at}.ephemeralStorage", item.get("ephemeralStorage", "0")),
            taints=tuple(taints), max_nodes=_count(f"{at}.maxNodes", item.get("maxNodes", 1), 1, 64)))
    return tuple(pools)


def pool_nodes(pools: tuple[NodePool, ...], gpu_resource: str = GPU_RESOURCE,
               memory_by_label: Mapping[str, int] | None = None) -> list[NodeCapacity]:
    """Each pool's new nodes as the planner sees nodes: read like a live Node (GPU memory from its labels), or with
    the pool's gpuMemoryMiB when it sets one."""
    out = []
    for p in pools:
        for i in range(p.max_nodes):
            n = node_capacity(p.as_node(i), 0, gpu_resource, memory_by_label)
            if p.gpu_memory_mib and p.gpus and p.gpu_resource == gpu_resource:
                keys = gpu_taint_keys(gpu_resource)
                n = replace(n, gpus=p.gpus, gpu_memory_bytes=p.gpu_memory_mib * MiB,
                            gpu_memory_source=f"the operator's nodePools ({p.name}: gpuMemoryMiB)", problems=(),
                            gpu_taints=tuple(t for t in n.taints if t.key in keys
                                             and t.effect in ("NoSchedule", "NoExecute")))
            out.append(n)
    return out


def find(pools: tuple[NodePool, ...], name: str | None) -> NodePool | None:
    return next((p for p in pools if p.name == name), None)
