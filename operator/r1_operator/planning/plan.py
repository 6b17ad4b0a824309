"""Policy: choose a variant, a node, and the GPU offload, and say why (pure)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field, replace
from fractions import Fraction

from r1_operator.planning.catalog import Catalog, Variant
from r1_operator.planning.inventory import NodeCapacity, Toleration
from r1_operator.planning.memory import DeviceMemory, RuntimeSettings, compute_buffer_bytes, kv_bytes_per_layer
from r1_operator.planning.model import ModelFacts

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
    keep_shards: bool = False
    tolerations: tuple[Toleration, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    max_gpus: int | None = None

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
class Plan:
    variant: str | None
    variant_label: str
    n_layers: int
    n_gpu_layers: int  # repeating blocks on GPU
    offload_output: bool
    tensor_split: tuple[float, ...]
    node: str | None
    gpus: int
    gpu_product: str
    mode: str  # gpu | hybrid | mmap | none
    fits: bool
    memory: tuple[DeviceMemory, ...]
    disk_bytes: int
    threads: int
    settings: RuntimeSettings
    offload: str
    warnings: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    tier: int = TIER_NONE
    rank: int = 0

    @property
    def n_gpu_layers_arg(self) -> int:
        """The value of llama.cpp's --n-gpu-layers (the output layer counts as one, offloaded first)."""
        return self.n_gpu_layers + (1 if self.offload_output else 0)

    def to_dict(self) -> dict:
        s = self.settings
        return {
            "variant": self.variant,
            "variantLabel": self.variant_label,
            "n_layers": self.n_layers,
            "n_gpu_layers": self.n_gpu_layers,
            "n_gpu_layers_arg": self.n_gpu_layers_arg,
            "offload_output": self.offload_output,
            "tensor_split": list(self.tensor_split),
            "node": self.node,
            "gpus": self.gpus,
            "gpu_product": self.gpu_product,
            "mode": self.mode,
            "fits": self.fits,
            "offload": self.offload,
            "threads": self.threads,
            "ctx_size": s.ctx_size,
            "cache_type_k": s.cache_type_k,
            "cache_type_v": s.cache_type_v,
            "flash_attn": s.flash_attn,
            "disk_bytes": self.disk_bytes,
            "memory": [d.as_dict() for d in self.memory],
            "warnings": list(self.warnings),
            "reasons": list(self.reasons),
        }


# ---------------------------------------------------------------- memory of one (model, node, layers)

@dataclass(frozen=True)
class _Prefix:
    """Prefix sums of block bytes, so a layout costs O(GPUs) instead of O(layers)."""

    sums: tuple[int, ...]

    @classmethod
    def of(cls, m: ModelFacts) -> _Prefix:
        acc, out = 0, [0]
        for b in m.block_bytes:
            acc += b
            out.append(acc)
        return cls(tuple(out))

    def range(self, a: int, b: int) -> int:
        return self.sums[b] - self.sums[a]


_DERIVED: dict[tuple, object] = {}


def _prefix(m: ModelFacts) -> _Prefix:
    if len(_DERIVED) > 8192:
        _DERIVED.clear()
    key = ("prefix", id(m))
    hit = _DERIVED.get(key)
    if hit is None or hit[0] is not m:
        hit = _DERIVED[key] = (m, _Prefix.of(m))
    return hit[1]


def _per_layer(m: ModelFacts, s: RuntimeSettings) -> tuple[int, int]:
    """(KV bytes per block, compute buffer bytes), memoised by model identity (hashing ModelFacts is slow)."""
    key = ("layer", id(m), s)
    hit = _DERIVED.get(key)
    if hit is None or hit[0] is not m:
        k, v = kv_bytes_per_layer(m, s)
        hit = _DERIVED[key] = (m, (k + v, compute_buffer_bytes(m, s)))
    return hit[1]


def device_layout(m: ModelFacts, s: RuntimeSettings, arg: int, n_gpus: int) -> tuple[DeviceMemory, ...]:
    key = ("layout", id(m), s, arg, n_gpus)
    hit = _DERIVED.get(key)
    if hit is None or hit[0] is not m:
        hit = _DERIVED[key] = (m, _device_layout(m, s, arg, n_gpus))
    return hit[1]


def _gpu_runs(n: int, arg: int, n_gpus: int) -> list[tuple[int, int, bool]]:
    """(first block, blocks, holds the output head) per GPU, as llama.cpp assigns layers.

    Layers are 0..n, the output head being layer n; the last `arg` of them go to
    the GPUs in consecutive runs (device g takes j in [ceil(g*arg/G), ceil((g+1)*arg/G))).
    """
    start = n + 1 - arg
    runs = []
    for g in range(n_gpus):
        a = start + -(-g * arg // n_gpus)
        b = start + -(-(g + 1) * arg // n_gpus)
        runs.append((a, max(min(b, n) - a, 0), b == n + 1 and b > a))
    return runs


def _device_layout(m: ModelFacts, s: RuntimeSettings, arg: int, n_gpus: int) -> tuple[DeviceMemory, ...]:
    """Per-device memory for --n-gpu-layers=arg over n_gpus equal GPUs; the rest and token_embd stay on the CPU."""
    n = m.n_layers
    arg = min(max(arg, 0), n + 1) if n_gpus else 0
    pre = _prefix(m)
    kv_layer, compute = _per_layer(m, s)
    devices = []
    for g, (a, blocks, output) in enumerate(_gpu_runs(n, arg, n_gpus)):
        w = (pre.range(a, a + blocks) if blocks else 0) + (m.output_bytes if output else 0)
        devices.append(DeviceMemory(f"gpu{g}", w, kv_layer * blocks, compute if blocks or output else 0, blocks))
    cpu_blocks = min(n + 1 - arg, n)
    cpu_w = m.input_bytes + pre.range(0, cpu_blocks) + (m.output_bytes if arg == 0 else 0)
    devices.append(DeviceMemory("cpu", cpu_w, kv_layer * cpu_blocks, compute, cpu_blocks))
    return tuple(devices)


def _need_table(m: ModelFacts, s: RuntimeSettings, n_gpus: int) -> list[int]:
    """need[arg]: the most any GPU holds at --n-gpu-layers=arg, made non-decreasing.

    It depends on the model, settings and GPU count, never on a node's memory, so
    it is built once and shared by every node with that many free GPUs.
    """
    key = ("need", id(m), s, n_gpus)
    hit = _DERIVED.get(key)
    if hit is None or hit[0] is not m:
        pre, (kv_layer, compute) = _prefix(m), _per_layer(m, s)
        need, worst = [], 0
        for arg in range(m.n_layers + 2):  # the same runs as _device_layout, summed as plain integers
            for a, blocks, output in _gpu_runs(m.n_layers, arg, n_gpus):
                if blocks or output:
                    total = pre.range(a, a + blocks) + (m.output_bytes if output else 0) + kv_layer * blocks + compute
                    worst = max(worst, total)
            need.append(worst)
        hit = _DERIVED[key] = (m, need)
    return hit[1]


def max_gpu_layers(m: ModelFacts, s: RuntimeSettings, n_gpus: int, usable_per_gpu: int) -> int:
    """Largest --n-gpu-layers such that it, and every smaller value, fits each GPU in usable_per_gpu bytes."""
    if n_gpus == 0 or usable_per_gpu <= 0:
        return 0
    return max(bisect.bisect_right(_need_table(m, s, n_gpus), usable_per_gpu) - 1, 0)


def formula_layers(vram_bytes: int, file_bytes: int, n_layers: int) -> int:
    """The blog's rule, n = floor(VRAM / filesize × n_layers) − 4, clamped to [0, n_layers], in exact arithmetic."""
    if file_bytes <= 0:
        raise ValueError("file size must be > 0")
    n = math.floor(Fraction(vram_bytes) * n_layers / Fraction(file_bytes)) - 4
    return min(max(n, 0), n_layers)


# ---------------------------------------------------------------- one variant on one node

@dataclass(frozen=True)
class _Eval:
    tier: int
    arg: int
    blocks: int
    output: bool
    gpus: int  # GPUs the plan requests (all offered ones once any layer is offloaded)
    n_gpus: int  # GPUs the node offers
    usable: int  # per GPU
    ram: int  # RAM minus reserve
    memory: tuple[DeviceMemory, ...]


def _evaluate(v: Variant, node: NodeCapacity, req: PlanRequest) -> _Eval:
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
    return _Eval(tier, arg, blocks, output, used_gpus, n_gpus, usable, ram, devs)


def _why_not(v: Variant, e: _Eval, node: NodeCapacity, req: PlanRequest) -> str:
    """Why this variant misses the tier above the one it reached, with the numbers (built only when shown)."""
    m = v.facts
    if e.tier == TIER_HYBRID or (e.tier == TIER_GPU and req.offload == "formula"):
        if not e.n_gpus:
            return f"{node.name} has no free GPU"
        need = sum(d.total for d in device_layout(m, req.settings, m.n_layers + 1, e.n_gpus)[:-1])
        return (f"{v.name} does not fit entirely in GPU memory on {node.name}: needs {gib(need)}, "
                f"has {e.n_gpus}×{gib(e.usable)} usable")
    cpu = e.memory[-1]
    why = (f"{v.name} with {e.blocks}/{m.n_layers} layers on GPU needs {gib(cpu.total)} on the CPU side of {node.name}, "
           f"but RAM minus reserve is {gib(max(e.ram, 0))}")
    if e.tier == TIER_NONE:
        if node.ram_bytes < req.mmap_min_ram_bytes:
            why += f"; memory-mapping needs at least {gib(req.mmap_min_ram_bytes)} of RAM, the node has {gib(node.ram_bytes)}"
        else:
            why += f"; even memory-mapped, KV cache + compute ({gib(cpu.kv_cache + cpu.compute)}) exceed it"
    return why


def _allowed(catalog: Catalog, req: PlanRequest) -> list[Variant]:
    if req.variant != "auto":
        return [catalog.get(req.variant)]
    ranked = catalog.ranked()
    if req.min_variant:
        floor = catalog.get(req.min_variant).rank
        ranked = [v for v in ranked if v.rank >= floor]
    return ranked


def _choose(evals: list[tuple[Variant, _Eval]], req: PlanRequest) -> tuple[Variant, _Eval]:
    """Apply the policy to (variant, evaluation) pairs of one node, best variant first."""
    if req.variant != "auto":
        return evals[0]
    if req.policy == "auto":
        full = [(v, e) for v, e in evals if e.tier == TIER_GPU]
        if full:
            return full[0]
    fitting = [(v, e) for v, e in evals if e.tier in (TIER_GPU, TIER_HYBRID)]
    if fitting:
        return fitting[0]
    smallest = evals[-1]
    return smallest


def _threads(node: NodeCapacity) -> int:
    return max(1, min(node.cpus, 64))


def _disk(v: Variant, req: PlanRequest) -> int:
    # Download + merge; without kept shards each shard is deleted once merged, so one shard of slack suffices.
    return v.size_bytes * 2 if req.keep_shards else v.size_bytes + -(-v.size_bytes // max(v.shards, 1))


def _explain(v: Variant, e: _Eval, node: NodeCapacity, evals: list[tuple[Variant, _Eval]], req: PlanRequest) -> tuple[list[str], list[str]]:
    m = v.facts
    reasons, warnings = [], []
    gpu_desc = f"{e.gpus}×{node.gpu_product or 'GPU'} ({gib(node.gpu_memory_bytes)})" if e.gpus else "no GPU"
    gpu_used = sum(d.total for d in e.memory[:-1])
    head = (f"{v.name} ({v.label}, {gib(v.size_bytes)}) on {node.name}: {e.blocks}/{m.n_layers} layers"
            f"{' + output' if e.output else ''} on {gpu_desc}")
    if e.gpus:
        head += f", GPU {gib(gpu_used)} of {gib(e.gpus * max(node.gpu_memory_bytes - req.gpu_headroom_bytes, 0))} usable"
    head += f", CPU side {gib(e.memory[-1].total)} of {gib(max(node.ram_bytes - req.ram_reserve_bytes, 0))} RAM after reserve"
    reasons.append(head + f" ({req.offload} offload)")
    better = [(bv, be) for bv, be in evals if bv.rank > v.rank]
    if better:
        bv, be = better[-1]  # the next better variant
        why = _why_not(bv, be, node, req) if be.tier >= e.tier else "the auto policy prefers full GPU offload of a smaller variant"
        reasons.append(f"not {bv.name}: {why}")
    if req.policy == "auto" and e.tier == TIER_HYBRID and req.variant == "auto":
        reasons.append("no variant fits entirely in GPU memory, so the largest that fits in GPU + RAM was chosen")
    if e.tier == TIER_MMAP:
        warnings.append(f"{v.name} does not fit in RAM on {node.name}; weights will be memory-mapped from disk and "
                        "generation will be slow (the blog reports it works)")
    if e.tier == TIER_NONE:
        reasons.append(_why_not(v, e, node, req))
    if 0 < e.blocks < m.n_layers:
        warnings.append(f"{m.n_layers - e.blocks} of {m.n_layers} layers run on the CPU: expect lower tokens/s than full offload")
    disk = _disk(v, req)
    if 0 < node.disk_bytes < disk:
        warnings.append(f"the model cache needs {gib(disk)} but {node.name} has {gib(node.disk_bytes)} of ephemeral storage: "
                        "put the cache on a volume (storage class) of at least that size")
    warnings.extend(node.problems)
    return reasons, warnings


def plan_node(catalog: Catalog, node: NodeCapacity, req: PlanRequest) -> Plan:
    """The policy's best plan for one node (fits=False with reasons when nothing fits)."""
    req.validate(catalog)
    req.settings.validate()
    return _plan_node(catalog, node, req)


def _plan_node(catalog: Catalog, node: NodeCapacity, req: PlanRequest) -> Plan:
    evals = [(v, _evaluate_cached(v, node, req)) for v in _allowed(catalog, req)]
    v, e = _choose(evals, req)
    reasons, warnings = _explain(v, e, node, evals, req)
    m = v.facts
    split = tuple(round(1 / e.gpus, 6) for _ in range(e.gpus)) if e.gpus > 1 else ()
    return Plan(
        variant=v.name if e.tier != TIER_NONE else None,
        variant_label=v.label,
        n_layers=m.n_layers,
        n_gpu_layers=e.blocks,
        offload_output=e.output,
        tensor_split=split,
        node=node.name if e.tier != TIER_NONE else None,
        gpus=e.gpus,
        gpu_product=node.gpu_product,
        mode=MODES[e.tier],
        fits=e.tier != TIER_NONE,
        memory=e.memory,
        disk_bytes=_disk(v, req),
        threads=_threads(node),
        settings=req.settings,
        offload=req.offload,
        warnings=tuple(warnings),
        reasons=tuple(reasons),
        tier=e.tier,
        rank=v.rank,
    )


_CACHE: dict[tuple, _Eval] = {}


def _evaluate_cached(v: Variant, node: NodeCapacity, req: PlanRequest) -> _Eval:
    """Nodes of one shape get one evaluation: planning 1,000 nodes costs a few distinct shapes."""
    key = (id(v.facts), node.shape_key(), req.offload, req.settings, req.gpu_headroom_bytes, req.ram_reserve_bytes,
           req.mmap_min_ram_bytes, req.max_gpus)
    hit = _CACHE.get(key)
    if hit is None:
        if len(_CACHE) > 4096:
            _CACHE.clear()
        hit = _CACHE[key] = _evaluate(v, node, req)
    return hit


def eligible(node: NodeCapacity, req: PlanRequest) -> str | None:
    """Why the node cannot run the runtime at all, or None."""
    if not node.ready:
        return f"{node.name} is not Ready"
    if not node.schedulable:
        return f"{node.name} is cordoned (unschedulable)"
    for key, value in req.node_selector:
        if node.labels.get(key) != value:
            return f"{node.name} does not match nodeSelector {key}={value}"
    for t in node.taints:
        if t.effect in ("NoSchedule", "NoExecute") and not any(tol.tolerates(t) for tol in req.tolerations):
            return f"{node.name} has taint {t.key}={t.value}:{t.effect} that the spec does not tolerate"
    return None


def _sort_key(p: Plan) -> tuple:
    return (p.tier, -p.rank, -p.n_gpu_layers_arg, p.gpus, p.node or "")


def plan_cluster(catalog: Catalog, nodes: list[NodeCapacity], req: PlanRequest) -> tuple[Plan, list[Plan], list[str]]:
    """(chosen plan, per-node plans, excluded-node reasons). The chosen plan has fits=False when nothing fits."""
    req.validate(catalog)
    req.settings.validate()
    plans: list[Plan] = []
    excluded: list[str] = []
    for node in sorted(nodes, key=lambda n: n.name):  # the same answer whatever order the API lists nodes in
        why = eligible(node, req)
        if why:
            excluded.append(why)
        else:
            plans.append(_plan_node(catalog, node, req))
    fitting = sorted((p for p in plans if p.fits), key=_sort_key)
    if fitting:
        best = fitting[0]
        return replace(best, reasons=best.reasons + tuple(excluded[:5])), plans, excluded
    reasons = tuple(r for p in plans for r in p.reasons[-1:]) + tuple(excluded[:5])
    first = _allowed(catalog, req)[-1]
    none = Plan(
        variant=None, variant_label=first.label, n_layers=first.facts.n_layers, n_gpu_layers=0, offload_output=False,
        tensor_split=(), node=None, gpus=0, gpu_product="", mode="none", fits=False, memory=(), disk_bytes=_disk(first, req),
        threads=1, settings=req.settings, offload=req.offload,
        reasons=reasons or ("no nodes to plan on",), tier=TIER_NONE,
    )
    return none, plans, excluded
