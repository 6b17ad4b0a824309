"""Reasons and warnings of a plan: why this variant on this node, and why not the next better one (pure)."""

from __future__ import annotations

from r1_operator.planning.catalog import Variant
from r1_operator.planning.evaluate import TIER_GPU, TIER_HYBRID, TIER_MMAP, TIER_NONE, Evaluation, PlanRequest, gib
from r1_operator.planning.inventory import NodeCapacity
from r1_operator.planning.layout import device_layout


def why_not(v: Variant, e: Evaluation, node: NodeCapacity, req: PlanRequest) -> str:
    """Why this variant misses the tier above the one it reached, with the numbers (built only when shown)."""
    m = v.facts
    if e.tier == TIER_NONE and node.gpu_taints and not e.arg:
        t = node.gpu_taints[0]
        return (f"{node.name} is a GPU node (taint {t.key}={t.value}:{t.effect}) and {v.name} gets no layer on its "
                f"GPUs there{': ' + gpu_shortage(node, req) if gpu_shortage(node, req) else ''}")
    if e.tier == TIER_HYBRID or (e.tier == TIER_GPU and req.offload == "formula"):
        if not e.n_gpus:
            return gpu_shortage(node, req) or f"{node.name} has no free GPU"
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


def gpu_shortage(node: NodeCapacity, req: PlanRequest) -> str:
    """Why a node with GPUs offers a runtime none (time-slicing refused, all taken), or ""."""
    if node.gpus and node.gpu_replicas > 1 and req.shared_gpus == "refuse":
        return (f"{node.name}'s GPUs are time-sliced ({node.gpu_replicas} replicas of each card, no memory "
                f"isolation): set spec.scheduling.sharedGPUs to fairShare (plan 1/{node.gpu_replicas} of a card) or "
                "wholeCard (plan the whole card, if nothing else uses it) to use one")
    if node.gpus and not node.gpus_free:
        return f"{node.name} has no free GPU (all {node.gpus} taken)"
    return ""


def explain(v: Variant, e: Evaluation, node: NodeCapacity, evals: list[tuple[Variant, Evaluation]], req: PlanRequest) -> tuple[list[str], list[str]]:
    m = v.facts
    reasons, warnings = [], []
    gpu_desc = f"{e.gpus}×{node.gpu_product or 'GPU'} ({gib(e.card)})" if e.gpus else "no GPU"
    gpu_used = sum(d.total for d in e.memory[:-1])
    head = (f"{v.name} ({v.label}, {gib(v.size_bytes)}) on {node.name}: {e.blocks}/{m.n_layers} layers"
            f"{' + output' if e.output else ''} on {gpu_desc}")
    if e.gpus:
        head += f", GPU {gib(gpu_used)} of {gib(e.gpus * max(e.card - req.gpu_headroom_bytes, 0))} usable"
    head += f", CPU side {gib(e.memory[-1].total)} of {gib(max(node.ram_bytes - req.ram_reserve_bytes, 0))} RAM after reserve"
    reasons.append(head + f" ({req.offload} offload)")
    if e.gpus and node.gpu_memory_source:
        reasons.append(f"GPU memory of {node.name}: {gib(node.gpu_memory_bytes)} per GPU, from {node.gpu_memory_source}"
                       + (f"; time-sliced ({node.gpu_replicas} replicas per card), planned as "
                          f"{'a fair share' if req.shared_gpus == 'fairShare' else 'the whole card'}"
                          if node.gpu_replicas > 1 else "")
                       + ("; MIG: one instance per pod" if node.gpu_per_pod == 1 else ""))
    elif not e.gpus and (short := gpu_shortage(node, req)):
        reasons.append(short)
    better = [(bv, be) for bv, be in evals if bv.rank > v.rank]
    if better:
        bv, be = better[-1]  # the next better variant
        why = why_not(bv, be, node, req) if be.tier >= e.tier else "the auto policy prefers full GPU offload of a smaller variant"
        reasons.append(f"not {bv.name}: {why}")
    if req.policy == "auto" and e.tier == TIER_HYBRID and req.variant == "auto":
        reasons.append("no variant fits entirely in GPU memory, so the largest that fits in GPU + RAM was chosen")
    if e.gpus and node.gpu_replicas > 1 and req.shared_gpus == "wholeCard":
        warnings.append(f"{node.name}'s GPU is time-sliced: other pods given replicas of the same card share its "
                        "memory, and the runtime can run out of it")
    if e.tier == TIER_MMAP:
        warnings.append(f"{v.name} does not fit in RAM on {node.name}; weights will be memory-mapped from disk and "
                        "generation will be slow (the blog reports it works)")
    if e.tier == TIER_NONE:
        reasons.append(why_not(v, e, node, req))
    if 0 < e.blocks < m.n_layers:
        warnings.append(f"{m.n_layers - e.blocks} of {m.n_layers} layers run on the CPU: expect lower tokens/s than full offload")
    disk = v.cache_peak_bytes(req.keep_shards)
    if 0 < node.disk_bytes < disk:
        warnings.append(f"the model cache needs {gib(disk)} but {node.name} has {gib(node.disk_bytes)} of ephemeral storage: "
                        "put the cache on a volume (storage class) of at least that size")
    warnings.extend(node.problems)
    return reasons, warnings
