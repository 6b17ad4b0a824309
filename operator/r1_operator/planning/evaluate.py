"""What one variant achieves on one node under a request: GPU layers, per-device memory and its tier (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from r1_operator.api.types import SHARED_GPUS  # spec.scheduling.sharedGPUs: how a time-sliced GPU is planned
from r1_operator.planning.catalog import Catalog, Variant
from r1_operator.planning.inventory import NodeCapacity, SelectorTerm, Toleration
from r1_operator.planning.layout import device_layout, formula_layers, max_gpu_layers
from r1_operator.planning.memory import DeviceMemory, RuntimeSettings

GiB = 1 << 30
POLICIES = ("auto", "quality")
OFFLOADS = ("estimate", "formula")
# Tiers of the auto policy: lower is preferred.
TIER_GPU, TIER_HYBRID, TIER_MMAP, TIER_NONE = 1, 2, 3, 4
MODES = {TIER_GPU: "gpu", TIER_HYBRID: "hybrid", TIER_MMAP: "mmap", TIER_NONE: "none"}


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


@dataclass(frozen=True)
class PlanRequest:
    variant: str = "auto"
    policy: str = "auto"
    min_variant: str | None = None
    offload: str = "estimate"
    settings: RuntimeSettings = field(default_factory=RuntimeSettings)
    gpu_headroom_bytes: int = 1 * GiB
    ram_reserve_bytes: int = 8 * GiB
    mmap_min_ram_bytes: int = 20 * GiB
    tolerations: tuple[Toleration, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    node_terms: tuple[SelectorTerm, ...] = ()  # required node affinity (spec.scheduling.affinity)
    max_gpus: int | None = None
    shared_gpus: str = "refuse"  # SHARED_GPUS
    keep_shards: bool = False  # spec.cache.keepShards: the merge keeps a second copy of the set

    def validate(self, catalog: Catalog) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.offload not in OFFLOADS:
            raise ValueError(f"offload must be one of {', '.join(OFFLOADS)}, got {self.offload!r}")
        if self.variant != "auto":
            catalog.get(self.variant)
        if self.min_variant:
            catalog.get(self.min_variant)
        if self.gpu_headroom_bytes < 0 or self.ram_reserve_bytes < 0:
            raise ValueError("headroom and reserve must be >= 0")
        if self.shared_gpus not in SHARED_GPUS:
            raise ValueError(f"sharedGPUs must be one of {', '.join(SHARED_GPUS)}, got {self.shared_gpus!r}")
        if self.max_gpus is not None and self.max_gpus < 0:
            raise ValueError(f"max GPUs must be >= 0, got {self.max_gpus}")


@dataclass(frozen=True)
class Evaluation:
    tier: int
    arg: int
    blocks: int
    output: bool
    gpus: int  # GPUs the plan requests (all offered ones once any layer is offloaded)
    n_gpus: int  # GPUs the node offers
    usable: int  # per GPU
    ram: int  # RAM minus reserve
    memory: tuple[DeviceMemory, ...]
    card: int = 0  # the memory of one GPU as planned (a time-sliced card's fair share with sharedGPUs fairShare)


def evaluate(v: Variant, node: NodeCapacity, req: PlanRequest) -> Evaluation:
    m, s = v.facts, req.settings
    n_gpus, card = node_gpus(node, req)
    usable = max(card - req.gpu_headroom_bytes, 0) if n_gpus else 0
    if req.offload == "formula":
        blocks = formula_layers(n_gpus * card, v.size_bytes, m.n_layers) if n_gpus else 0
        arg = blocks + 1 if blocks else 0
    else:
        arg = max_gpu_layers(m, s, n_gpus, usable)
    devs = device_layout(m, s, arg, n_gpus)
    used_gpus = n_gpus if arg else 0  # the layout was checked over all of them; the split must match it
    blocks, output = max(arg - 1, 0), arg > 0
    cpu = devs[-1]
    ram = node.ram_bytes - req.ram_reserve_bytes
    full = (arg == m.n_layers + 1) if req.offload == "estimate" else (blocks == m.n_layers)
    if node.gpu_taints and not arg:
        tier = TIER_NONE  # a GPU node's taint keeps pods without GPUs off it
    elif full and cpu.total <= ram:
        tier = TIER_GPU
    elif cpu.total <= ram:
        tier = TIER_HYBRID
    elif node.ram_bytes >= req.mmap_min_ram_bytes and cpu.kv_cache + cpu.compute <= ram:
        # Memory-mapped: weights stream from the page cache; only the KV cache and compute buffer must be resident.
        tier = TIER_MMAP
    else:
        tier = TIER_NONE
    return Evaluation(tier, arg, blocks, output, used_gpus, n_gpus, usable, ram, devs, card)


def node_gpus(node: NodeCapacity, req: PlanRequest) -> tuple[int, int]:
    """(GPUs one runtime pod may take on the node, memory of each as planned). A MIG instance is the one device
    its process sees; time-sliced replicas share one card, so never more than one (never a tensor split over
    replicas), and only as spec.scheduling.sharedGPUs allows."""
    n = node.gpus_free if req.max_gpus is None else min(node.gpus_free, req.max_gpus)
    if node.gpu_per_pod:
        n = min(n, node.gpu_per_pod)
    card = node.gpu_memory_bytes
    if node.gpu_replicas > 1:
        if req.shared_gpus == "refuse":
            return 0, card
        n = min(n, 1)
        if req.shared_gpus == "fairShare":
            card //= node.gpu_replicas
    return n, card


def fewest_gpus(v: Variant, node: NodeCapacity, req: PlanRequest, e: Evaluation) -> Evaluation:
    """The evaluation with the fewest GPUs that keep its tier and GPU layers: a replica never holds GPUs it does
    not need (another replica, or another workload, can have them)."""
    if e.gpus <= 1:
        return e
    for g in range(1, e.gpus):
        f = evaluate_cached(v, node, replace(req, max_gpus=g if req.max_gpus is None else min(g, req.max_gpus)))
        if f.tier == e.tier and f.arg == e.arg:
            return f
    return e


_CACHE: dict[tuple, Evaluation] = {}


def evaluate_cached(v: Variant, node: NodeCapacity, req: PlanRequest) -> Evaluation:
    """Nodes of one shape get one evaluation: planning 1,000 nodes costs a few distinct shapes."""
    key = (id(v.facts), node.shape_key(), req.offload, req.settings, req.gpu_headroom_bytes, req.ram_reserve_bytes,
           req.mmap_min_ram_bytes, req.max_gpus, req.shared_gpus)
    hit = _CACHE.get(key)
    if hit is None:
        if len(_CACHE) > 4096:
            _CACHE.clear()
        hit = _CACHE[key] = evaluate(v, node, req)
    return hit
