"""Placements: N runtime replicas of one variant over the nodes that can host it, each node with its own offload (pure).

Every replica serves the same variant, so every answer comes from the same model. For each variant the
policy allows, replicas are placed one at a time on the node that hosts the next one best (tier, then GPU
layers, then fewest GPUs, then name), taking that replica's GPUs and RAM from the node before the next one:

- a node hosts one placement: all its replicas have the same GPUs and GPU layers (one Deployment each);
- with more than one replica wanted, a replica fully on GPU takes the fewest GPUs that keep it there, so a
  node with GPUs to spare hosts several;
- the previous placements of the same variant are placed first, as they were, while they still fit: growing
  N never moves one, and shrinking N drops the newest first.

The variant chosen is the best one (by the policy) that places all N; when none does, the one that places the
most, and the result says how many and why not more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from r1_operator.planning.catalog import Catalog, Variant
from r1_operator.planning.evaluate import TIER_GPU, TIER_HYBRID, TIER_NONE, Evaluation, PlanRequest, evaluate_cached, \
    fewest_gpus
from r1_operator.planning.explain import why_not
from r1_operator.planning.inventory import NodeCapacity, eligible
from r1_operator.planning.plan import Plan, _allowed, build_plan, plan_cluster

MAX_REPLICAS = 64  # spec.replicas' bound


@dataclass(frozen=True)
class Previous:
    """A placement as status.plan.placements recorded it."""

    id: int
    node: str
    gpus: int
    n_gpu_layers: int
    replicas: int

    @classmethod
    def from_status(cls, d: Mapping[str, Any]) -> Previous:
        return cls(int(d.get("id", 0)), str(d.get("node") or ""), int(d.get("gpus") or 0),
                   int(d.get("nGpuLayers") or 0), int(d.get("replicas") or 0))


@dataclass(frozen=True)
class Placement:
    id: int  # stable: names the placement's Deployment; a new placement takes the lowest free id
    plan: Plan  # the variant on this node, with this node's offload
    replicas: int

    def as_dict(self) -> dict[str, Any]:
        p = self.plan
        return {"id": self.id, "node": p.node or "", "replicas": self.replicas, "gpus": p.gpus,
                "gpuProduct": p.gpu_product, "nGpuLayers": p.n_gpu_layers, "gpuLayers": p.gpu_layers_text,
                "tensorSplit": list(p.tensor_split), "mode": p.mode, "cpuMemoryBytes": p.resident_bytes,
                "memory": [d.as_dict() for d in p.memory]}


@dataclass(frozen=True)
class Placements:
    plan: Plan  # the first placement's plan (fits=False with reasons when none could be placed)
    placements: tuple[Placement, ...]
    wanted: int
    shortfall: str = ""  # why fewer than wanted were placed ("" when all were)

    @property
    def placed(self) -> int:
        return sum(p.replicas for p in self.placements)


@dataclass
class _Trial:
    variant: Variant
    placements: list[list]  # [id, Plan, replicas]
    placed: int
    worst: int  # the worst tier among the placements (TIER_NONE when none)
    why: list[str]  # why no further replica fits, per node


def _resident_of(e: Evaluation) -> int:
    cpu = e.memory[-1]
    return cpu.kv_cache + cpu.compute if e.tier not in (TIER_GPU, TIER_HYBRID) else cpu.total


def _less(node: NodeCapacity, gpus: int, ram: int) -> NodeCapacity:
    return replace(node, gpus_used=node.gpus_used + gpus, ram_bytes=max(node.ram_bytes - ram, 0))


def _fixed(v: Variant, node: NodeCapacity, req: PlanRequest, gpus: int, arg: int, tier: int | None) -> Evaluation | None:
    """One more replica of a placement (gpus, GPU layers, tier) on what is left of its node, or None when it no
    longer fits (tier None: a previous placement's first replica, whose tier is whatever the node gives now)."""
    e = evaluate_cached(v, node, replace(req, max_gpus=gpus))
    ok = e.tier != TIER_NONE and e.gpus == gpus and (e.arg == arg if tier is not None else e.arg >= arg)
    return e if ok and (tier is None or e.tier == tier) else None


def _try(v: Variant, nodes: list[NodeCapacity], req: PlanRequest, wanted: int, previous: list[Previous]) -> _Trial:
    left = {n.name: n for n in nodes}
    placements: list[list] = []
    held: dict[str, tuple[int, int, int]] = {}  # node -> (gpus, arg, tier) of its placement
    placed = 0

    def take(node: str, e: Evaluation) -> None:
        left[node] = _less(left[node], e.gpus, _resident_of(e))

    # The previous placements as they were, while they fit, one replica each per round: replicas were added
    # spread over the placements, so a smaller N drops the newest first.
    @dataclass
    class Kept:
        prev: Previous
        first: Evaluation | None = None
        node: NodeCapacity | None = None  # what was left of the node before its first replica
        count: int = 0
        stopped: bool = False

    kept: list[Kept] = []
    for prev in previous:
        if prev.node in left and prev.node not in {k.prev.node for k in kept}:
            kept.append(Kept(prev))
    growing = True
    while placed < wanted and growing:
        growing = False
        for k in kept:
            if placed >= wanted or k.stopped or k.count >= k.prev.replicas:
                continue
            at = left[k.prev.node]
            e = (_fixed(v, at, req, k.prev.gpus, k.prev.n_gpu_layers, None) if k.first is None
                 else _fixed(v, at, req, k.first.gpus, k.first.arg, k.first.tier))
            if e is None:
                k.stopped = True
                continue
            if k.first is None:
                k.first, k.node = e, at
            take(k.prev.node, e)
            k.count += 1
            placed += 1
            growing = True
    for k in kept:
        if k.count:
            placements.append([k.prev.id, (k.first, k.node), k.count])
            held[k.prev.node] = (k.first.gpus, k.first.arg, k.first.tier)

    def candidate(node: NodeCapacity) -> Evaluation | None:
        if node.name in held:
            return _fixed(v, node, req, *held[node.name])
        e = evaluate_cached(v, node, req)
        if e.tier == TIER_NONE:
            return None
        return fewest_gpus(v, node, req, e)

    # every node is evaluated only when the kept placements leave replicas to place (a steady reconcile does not)
    cands = {n.name: candidate(left[n.name]) for n in nodes} if placed < wanted else {}  # what the kept left
    on: dict[str, int] = {p[1][1].name: p[2] for p in placements}  # replicas per node so far
    while placed < wanted:
        # the best offload first; among equals a node with fewer replicas (spread), then fewer GPUs, then the name
        best = min(((e.tier, -e.arg, on.get(name, 0), e.gpus, name) for name, e in cands.items() if e is not None),
                   default=None)
        if best is None:
            break
        name = best[-1]
        e = cands[name]
        if name in held:
            next(p for p in placements if p[1][1].name == name)[2] += 1
        else:
            used = {p[0] for p in placements}
            pid = next(i for i in range(MAX_REPLICAS + len(previous) + 1) if i not in used)
            placements.append([pid, (e, left[name]), 1])
            held[name] = (e.gpus, e.arg, e.tier)
        take(name, e)
        on[name] = on.get(name, 0) + 1
        placed += 1
        cands[name] = candidate(left[name])
    why = [why_not(v, evaluate_cached(v, left[n.name], req), left[n.name], req)
           for n in nodes if cands.get(n.name) is None][:4] if placed < wanted else []
    worst = max((p[1][0].tier for p in placements), default=TIER_NONE)
    return _Trial(v, placements, placed, worst, why)


def _policy_key(t: _Trial, req: PlanRequest) -> tuple:
    """Lower is better. auto: the best tier, then the largest variant; quality: the largest in GPU + RAM. A variant
    only memory-mapped prefers the smallest (less to stream from disk)."""
    size = -t.variant.rank if t.worst <= TIER_HYBRID else t.variant.rank
    return (t.worst, size) if req.policy == "auto" else (t.worst > TIER_HYBRID, size, t.worst)


def place(catalog: Catalog, nodes: Iterable[NodeCapacity], req: PlanRequest, replicas: int,
          previous: Iterable[Previous] = (), previous_variant: str | None = None) -> Placements:
    """Place `replicas` runtime replicas (at least one is planned, so 0 still shows what would run)."""
    req.validate(catalog)
    req.settings.validate()
    wanted = min(max(replicas, 1), MAX_REPLICAS)
    ordered = sorted(nodes, key=lambda n: n.name)  # the same answer whatever order the API lists nodes in
    excluded: list[str] = []
    ok: list[NodeCapacity] = []
    for n in ordered:
        why = eligible(n, req.node_selector, req.tolerations, req.node_terms)
        if why:
            excluded.append(why)
        else:
            ok.append(n)
    prev = list(previous)
    trials = [_try(v, ok, req, wanted, prev if v.name == previous_variant else []) for v in _allowed(catalog, req)]
    complete = [t for t in trials if t.placed >= wanted]
    pool = complete or [t for t in trials if t.placed]
    if not pool:
        none, _, _ = plan_cluster(catalog, ordered, req)
        return Placements(none, (), wanted, f"0 of {wanted} replicas placed")
    best = min(pool, key=lambda t: (-t.placed, *_policy_key(t, req)))
    out = []
    for pid, (e, node), count in best.placements:
        evals = [(v, evaluate_cached(v, node, req)) for v in _allowed(catalog, req)]
        out.append(Placement(pid, build_plan(best.variant, e, node, evals, req), count))
    first = out[0].plan
    reasons = list(first.reasons)
    if wanted > 1:
        where = ", ".join(f"{p.plan.node} ×{p.replicas} ({p.plan.gpu_layers_text} GPU layers)" for p in out)
        reasons.insert(0, f"{best.placed} of {wanted} replicas of {best.variant.name}: {where}")
    shortfall = ""
    if best.placed < wanted:
        shortfall = (f"{best.placed} of {wanted} replicas placed: no node has room for another {best.variant.name} "
                     f"replica" + (f" ({'; '.join(best.why + excluded[:2])})" if best.why or excluded else ""))
        reasons.insert(0, shortfall)
    if not complete and len(trials) > 1:
        reasons.append("no variant places all replicas; the one placing the most was chosen")
    plan = replace(first, reasons=tuple(reasons) + tuple(excluded[:5]))
    out[0] = replace(out[0], plan=plan)
    return Placements(plan, tuple(out), wanted, shortfall)
