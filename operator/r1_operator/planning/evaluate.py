"""What one variant achieves on one node under a request: GPU layers, per-device memory and its tier (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

from r1_operator.planning.catalog import Catalog, Variant
from r1_operator.planning.inventory import NodeCapacity, Toleration
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
    max_gpus: int | None = None
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


def evaluate(v: Variant, node: NodeCapacity, req: PlanRequest) -> Evaluation:
    m, s = v.facts, req.settings
    n_gpus = node.gpus_free if req.max_gpus is None else min(node.gpus_free, req.max_gpus)
    usable = max(node.gpu_memory_bytes - req.gpu_headroom_bytes, 0) if n_gpus else 0
    if req.offload == "formula":
        blocks = formula_layers(n_gpus * node.gpu_memory_bytes, v.size_bytes, m.n_layers) if n_gpus else 0
        arg = blocks + 1 if blocks else 0
    else:
        arg = max_gpu_layers(m, s, n_gpus, usable)
    devs = device_layout(m, s, arg, n_gpus)
    used_gpus = n_gpus if arg else 0  # the layout was checked over all of them; the split must match it
    blocks, output = max(arg - 1, 0), arg > 0
    cpu = devs[-1]
    ram = node.ram_bytes - req.ram_reserve_bytes
    full = (arg == m.n_layers + 1) if req.offload == "estimate" else (blocks == m.n_layers)
    if full and cpu.total <= ram:
        tier = TIER_GPU
    elif cpu.total <= ram:
        tier = TIER_HYBRID
    elif node.ram_bytes >= req.mmap_min_ram_bytes and cpu.kv_cache + cpu.compute <= ram:
        # Memory-mapped: weights stream from the page cache; only the KV cache and compute buffer must be resident.
        tier = TIER_MMAP
    else:
        tier = TIER_NONE
    return Evaluation(tier, arg, blocks, output, used_gpus, n_gpus, usable, ram, devs)


_CACHE: dict[tuple, Evaluation] = {}


def evaluate_cached(v: Variant, node: NodeCapacity, req: PlanRequest) -> Evaluation:
    """Nodes of one shape get one evaluation: planning 1,000 nodes costs a few distinct shapes."""
    key = (id(v.facts), node.shape_key(), req.offload, req.settings, req.gpu_headroom_bytes, req.ram_reserve_bytes,
           req.mmap_min_ram_bytes, req.max_gpus)
    hit = _CACHE.get(key)
    if hit is None:
        if len(_CACHE) > 4096:
            _CACHE.clear()
        hit = _CACHE[key] = evaluate(v, node, req)
    return hit
