"""Policy: choose a variant, a node and the GPU offload over a cluster, and serialize the result (pure)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from r1_operator.planning.catalog import Catalog, Variant
from r1_operator.planning.evaluate import MODES, TIER_GPU, TIER_HYBRID, TIER_NONE, Evaluation, PlanRequest, \
    evaluate_cached, fewest_gpus
from r1_operator.planning.explain import explain
from r1_operator.planning.inventory import NodeCapacity, eligible
from r1_operator.planning.memory import DeviceMemory, RuntimeSettings


@dataclass(frozen=True)
class Plan:
    variant: str | None
    variant_label: str
    n_layers: int  # the model's repeating blocks
    n_gpu_layers: int  # llama.cpp's --n-gpu-layers: the output head counts as one layer and is offloaded first
    tensor_split: tuple[int, ...]  # proportions per GPU (equal GPUs: 1 each), empty for one GPU
    node: str | None
    gpus: int
    gpu_product: str
    mode: str  # gpu | hybrid | mmap | none
    fits: bool
    memory: tuple[DeviceMemory, ...]
    model_bytes: int  # the variant's files
    disk_bytes: int  # the cache volume's peak during fetch + merge (contract.cache_peak_bytes)
    settings: RuntimeSettings
    offload: str
    warnings: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    tier: int = TIER_NONE
    rank: int = 0

    @property
    def gpu_blocks(self) -> int:
        """Repeating blocks on GPU (the output head takes the first offloaded layer)."""
        return max(self.n_gpu_layers - 1, 0)

    @property
    def gpu_layers_text(self) -> str:
        """As llama.cpp logs it: "offloaded 20/62 layers" (blocks + the output head)."""
        return f"{self.n_gpu_layers}/{self.n_layers + 1}"

    @property
    def resident_bytes(self) -> int:
        """RAM the runtime holds: the CPU side, less the weights in mmap mode (pages of the file, reclaimable)."""
        cpu = self.memory[-1] if self.memory else None
        if cpu is None:
            return 0
        return cpu.total if self.mode != "mmap" else cpu.kv_cache + cpu.compute

    def as_dict(self) -> dict[str, Any]:
        """The one serialization of a plan: `r1ctl plan -o json` and the R1Deployment's status.plan."""
        s = self.settings
        return {
            "variant": self.variant or "",
            "variantLabel": self.variant_label,
            "nLayers": self.n_layers,
            "nGpuLayers": self.n_gpu_layers,
            "gpuLayers": self.gpu_layers_text,
            "mode": self.mode,
            "node": self.node or "",
            "gpus": self.gpus,
            "gpuProduct": self.gpu_product,
            "tensorSplit": list(self.tensor_split),
            "modelBytes": self.model_bytes,
            "diskBytes": self.disk_bytes,
            "cpuMemoryBytes": self.resident_bytes,
            "memory": [d.as_dict() for d in self.memory],
            "offload": self.offload,
            "settings": {"ctxSize": s.ctx_size, "cacheTypeK": s.cache_type_k, "cacheTypeV": s.cache_type_v,
                         "flashAttention": s.flash_attn, "parallel": s.parallel},
            "fits": self.fits,
            "reasons": list(self.reasons)[:8],
            "warnings": list(self.warnings)[:8],
        }


def _allowed(catalog: Catalog, req: PlanRequest) -> list[Variant]:
    if req.variant != "auto":
        return [catalog.get(req.variant)]
    ranked = catalog.ranked()
    if req.min_variant:
        floor = catalog.get(req.min_variant).rank
        ranked = [v for v in ranked if v.rank >= floor]
    return ranked


def _choose(evals: list[tuple[Variant, Evaluation]], req: PlanRequest) -> tuple[Variant, Evaluation]:
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
    return evals[-1]


def plan_node(catalog: Catalog, node: NodeCapacity, req: PlanRequest) -> Plan:
    """The policy's best plan for one node (fits=False with reasons when nothing fits)."""
    req.validate(catalog)
    req.settings.validate()
    return _plan_node(catalog, node, req)


def _plan_node(catalog: Catalog, node: NodeCapacity, req: PlanRequest) -> Plan:
    evals = [(v, evaluate_cached(v, node, req)) for v in _allowed(catalog, req)]
    v, e = _choose(evals, req)
    return build_plan(v, fewest_gpus(v, node, req, e), node, evals, req)


def build_plan(v: Variant, e: Evaluation, node: NodeCapacity, evals: list[tuple[Variant, Evaluation]],
               req: PlanRequest) -> Plan:
    """The Plan of variant v on node as evaluated (e), its reasons weighing it against the other evaluations."""
    reasons, warnings = explain(v, e, node, evals, req)
    return Plan(
        variant=v.name if e.tier != TIER_NONE else None,
        variant_label=v.label,
        n_layers=v.facts.n_layers,
        n_gpu_layers=e.arg,
        tensor_split=(1,) * e.gpus if e.gpus > 1 else (),
        node=node.name if e.tier != TIER_NONE else None,
        gpus=e.gpus,
        gpu_product=node.gpu_product,
        mode="cpu" if e.tier == TIER_HYBRID and e.arg == 0 else MODES[e.tier],  # nothing offloaded: no GPU used
        fits=e.tier != TIER_NONE,
        memory=e.memory,
        model_bytes=v.size_bytes,
        disk_bytes=v.cache_peak_bytes(req.keep_shards),
        settings=req.settings,
        offload=req.offload,
        warnings=tuple(warnings),
        reasons=tuple(reasons),
        tier=e.tier,
        rank=v.rank,
    )


def _sort_key(p: Plan) -> tuple:
    return (p.tier, -p.rank, -p.n_gpu_layers, p.gpus, p.node or "")


def plan_cluster(catalog: Catalog, nodes: list[NodeCapacity], req: PlanRequest) -> tuple[Plan, list[Plan], list[str]]:
    """(chosen plan, per-node plans, excluded-node reasons). The chosen plan has fits=False when nothing fits."""
    req.validate(catalog)
    req.settings.validate()
    plans: list[Plan] = []
    excluded: list[str] = []
    for node in sorted(nodes, key=lambda n: n.name):  # the same answer whatever order the API lists nodes in
        why = eligible(node, req.node_selector, req.tolerations, req.node_terms)
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
        variant=None, variant_label=first.label, n_layers=first.facts.n_layers, n_gpu_layers=0, tensor_split=(),
        node=None, gpus=0, gpu_product="", mode="none", fits=False, memory=(), model_bytes=first.size_bytes,
        disk_bytes=first.cache_peak_bytes(req.keep_shards), settings=req.settings, offload=req.offload,
        reasons=reasons or ("no nodes to plan on",), tier=TIER_NONE,
    )
    return none, plans, excluded
