"""An R1Deployment spec and the live inventory → the plan the runtime is built from (pure).

A stored plan is kept while it stays feasible, so a node joining the cluster never
moves a running model; a spec change, or a node change that breaks the plan,
re-plans.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from r1_operator.api.types import R1DeploymentSpec
from r1_operator.planning.catalog import catalog_for
from r1_operator.planning import corrections as fx
from r1_operator.planning.corrections import apply as apply_corrections
from r1_operator.planning.evaluate import PlanRequest
from r1_operator.planning.inventory import NodeCapacity, Toleration, eligible, required_node_terms
from r1_operator.planning.memory import RuntimeSettings
from r1_operator.planning.placement import Placements, Previous, place
from r1_operator.planning.pools import pool_of


class PlanError(ValueError):
    """The spec cannot be planned at all (unknown variant or repo); the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def plan_request(spec: R1DeploymentSpec, variant: str | None = None, max_gpus: int | None = None) -> PlanRequest:
    inf = spec.inference
    settings = RuntimeSettings(ctx_size=inf.ctx_size, cache_type_k=inf.cache_type_k, cache_type_v=inf.cache_type_v,
                               flash_attn=inf.flash_attention, parallel=inf.parallel)
    tolerations = tuple(Toleration(key=t.key or "", operator=t.operator, value=t.value or "", effect=t.effect or "")
                        for t in spec.scheduling.tolerations)
    return PlanRequest(variant=variant or spec.model.variant, policy=spec.model.policy,
                       min_variant=spec.model.min_variant, offload=spec.model.offload, settings=settings,
                       tolerations=tolerations,
                       node_selector=tuple(sorted(spec.scheduling.node_selector.items())),
                       node_terms=required_node_terms(spec.scheduling.affinity), max_gpus=max_gpus,
                       shared_gpus=spec.scheduling.shared_gpus, keep_shards=spec.cache.keep_shards)


def plan_to_status(p: Placements, generation: int, why: str, corrections: list[dict[str, Any]] = ()) \
        -> dict[str, Any]:
    """status.plan: the first placement's plan as its one serialization (variant, node, offload, memory), every
    placement, the replicas wanted and placed, the spec generation it was made for and why, and the corrections
    it was planned with (planning.corrections)."""
    nodes = [x.plan.node for x in p.placements]
    out = {**p.plan.as_dict(), "replicas": p.wanted, "placedReplicas": p.placed,
           "placements": [x.as_dict() for x in p.placements],
           "nodes": nodes[0] if len(nodes) == 1 else f"{len(nodes)} nodes" if nodes else "",
           "shortfall": p.shortfall, "generation": generation, "why": why}
    if corrections:
        out["corrections"] = list(corrections)
    return out


_PLACEMENT_KEYS = ("node", "gpus", "gpuProduct", "nGpuLayers", "gpuLayers", "tensorSplit", "mode", "cpuMemoryBytes",
                   "memory")


def placement_plans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Each placement of status.plan as a plan of its own: the shared fields with its id, node, GPUs, offload and
    replicas. A plan stored before placements existed is one placement, id 0."""
    shared = {k: v for k, v in plan.items() if k != "placements"}
    stored = plan.get("placements")
    if stored is None:
        return [{**shared, "id": 0, "replicas": int(plan.get("replicas") or 1)}]
    return [{**shared, **{k: p[k] for k in _PLACEMENT_KEYS if k in p}, "id": int(p.get("id", 0)),
             "replicas": int(p.get("replicas") or 0)} for p in stored]


def previous_placements(plan: dict[str, Any] | None) -> list[Previous]:
    if not plan or not plan.get("fits") or not plan.get("variant"):
        return []
    return [Previous.from_status(p) for p in placement_plans(plan)]


def plan_hash(plan: dict[str, Any]) -> str:
    """What a runtime pod is built from: the variant and one placement's node and offload (not its replicas)."""
    keep = {k: plan.get(k) for k in ("variant", "nGpuLayers", "node", "gpus", "tensorSplit", "mode")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


def placements_hash(plan: dict[str, Any]) -> str:
    """Every placement with its replicas: a change is a new plan."""
    keep = [[plan_hash(p), p["id"], p["replicas"]] for p in placement_plans(plan)] if plan.get("fits") else []
    return hashlib.sha256(json.dumps([keep, plan.get("fits"), plan.get("replicas")]).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PlanOutcome:
    plan: dict[str, Any]  # the status.plan to use
    changed: bool  # differs from the stored one
    why: str  # first, new, spec changed, or what broke the stored plan


def _lost(previous: list[Previous], kept: Placements, wanted: int, nodes: list[NodeCapacity],
          req: PlanRequest, variant: str) -> str | None:
    """None when every stored placement (up to the replicas wanted) is still placed as it was; else why not."""
    now = {p.id: p for p in kept.placements}
    left = wanted
    for prev in previous:
        if left <= 0:
            break
        want = min(prev.replicas, left)
        left -= want
        got = now.get(prev.id)
        if got is not None and got.plan.node == prev.node and got.plan.gpus == prev.gpus \
                and got.plan.n_gpu_layers >= prev.n_gpu_layers and got.replicas >= want:
            continue
        node = next((n for n in nodes if n.name == prev.node), None)
        if node is None:
            return f"node {prev.node} is gone"
        why = eligible(node, req.node_selector, req.tolerations, req.node_terms)
        if why:
            return why
        if node.gpus_free < prev.gpus:
            return f"{node.name} has {node.gpus_free} free GPUs, the placement there needs {prev.gpus}"
        return f"{variant} with {prev.n_gpu_layers} GPU layers no longer fits {want} replica(s) on {node.name}"
    return None


def on_pools(plan: dict[str, Any] | None) -> list[str]:
    """The node pools (planning.pools) the plan's placements wait on, in order."""
    found = (pool_of(p.get("node")) for p in placement_plans(plan)) if plan and plan.get("fits") else ()
    return list(dict.fromkeys(x for x in found if x))


def decide(spec: R1DeploymentSpec, generation: int, nodes: list[NodeCapacity], stored: dict[str, Any] | None,
           pools: list[NodeCapacity] = ()) -> PlanOutcome:
    """The plan for this generation of the spec. Raises PlanError for a spec that cannot be planned.

    pools: the new nodes declared node pools can add (planning.pools.pool_nodes), planned on only when the
    existing nodes place fewer replicas than wanted; a plan on a pool is never kept, so it moves to a real node as
    soon as one places as many."""
    try:
        catalog = catalog_for(spec.model.repo)
    except ValueError as exc:
        raise PlanError("spec.model.repo", str(exc)) from None
    for field, value in (("spec.model.variant", spec.model.variant), ("spec.model.minVariant", spec.model.min_variant)):
        if value and value != "auto":
            try:
                catalog.get(value)
            except ValueError as exc:
                raise PlanError(field, str(exc)) from None
    corrections = list((stored or {}).get("corrections") or [])
    # each GPU of a corrected node no larger than its corrections allow
    nodes = apply_corrections(nodes, corrections, plan_request(spec).gpu_headroom_bytes)
    previous = previous_placements(stored)
    before = stored.get("variant") if previous else None
    kept = None
    waited = on_pools(stored)
    if waited and stored.get("generation") == generation:
        why = f"re-planned: it waited on a new node of pool {', '.join(waited)}"
    elif stored and stored.get("fits") and stored.get("generation") == generation:
        req = plan_request(spec, variant=before)
        kept = place(catalog, nodes, req, spec.replicas, previous, before)
        broken = _lost(previous, kept, max(spec.replicas, 1), nodes, req, before)
        if broken is None and kept.placed >= kept.wanted:
            plan = plan_to_status(kept, generation, stored.get("why", "planned"), corrections)
            if placements_hash(plan) == placements_hash(stored) and "placements" in stored:
                return PlanOutcome(stored, False, "")  # as stored: its reasons too
            return PlanOutcome(plan, placements_hash(plan) != placements_hash(stored), "")
        why = f"re-planned: {broken}" if broken else "re-planned: the stored plan places fewer replicas than wanted"
    elif stored and stored.get("generation") != generation:
        why = "re-planned: the spec changed"
    else:
        why = "planned" if not stored else "re-planned: the previous plan did not fit"
    try:
        best = place(catalog, nodes, plan_request(spec), spec.replicas, previous, before)
    except ValueError as exc:
        raise PlanError("spec.inference", str(exc)) from None
    if kept is not None and kept.placed >= best.placed and not _lost(previous, kept, max(spec.replicas, 1), nodes,
                                                                     plan_request(spec, variant=before), before):
        best = kept  # nothing places more than the stored variant does: keep it
    if pools and best.placed < best.wanted:
        grown = place(catalog, [*nodes, *pools], plan_request(spec), spec.replicas, previous, before)
        if grown.placed > best.placed:
            best = grown
    plan = plan_to_status(best, generation, why, corrections)
    asked = on_pools(plan)
    if asked:
        plan["reasons"] = [f"no existing node places every replica: planned on a new node of pool "
                           f"{', '.join(asked)} (the operator's nodePools), which the cluster's autoscaler adds for "
                           "the pod that selects it", *plan.get("reasons", [])]
    if not plan.get("fits") and fx.ram_notes(corrections):
        plan["reasons"] = [*fx.ram_notes(corrections), *plan.get("reasons", [])]
    changed = stored is None or placements_hash(plan) != placements_hash(stored) or plan.get("fits") != stored.get("fits")
    if not changed:
        plan["why"] = stored.get("why", why)  # the same plan for a new generation is no news
    return PlanOutcome(plan, changed, why)


def correction_for(plan: dict[str, Any], oom: dict[str, Any], now: str, memory_pinned: bool = False) \
        -> dict[str, Any] | str | None:
    """What to do about a runtime that ran out of memory (observe: a load's termination message, or an OOMKilled
    container's limit, with the pod's plan hash and placement): a new correction under the current plan; "gave up"
    after fx.MAX_PER_NODE of its kind on its node; None for a pod of an earlier plan, one corrected already, a
    CPU-side load failure, or an OOMKill at a memory figure the spec sets (`memory_pinned`)."""
    placement = next((p for p in placement_plans(plan) if p["id"] == oom.get("placement")), None)
    if placement is None or oom.get("planHash") != plan_hash(placement):
        return None  # a pod of an earlier plan, on its way out
    what = fx.kind(oom)
    if what == fx.MEMORY and (memory_pinned or not oom.get("limitBytes")):
        return None  # the user's limit (the condition says to raise it), or no limit to raise
    done = [c for c in plan.get("corrections") or [] if fx.kind(c) == what]
    if what == fx.MEMORY:
        # killed at a limit already corrected: a pod of the same plan from before the raise
        if any(c.get("planHash") == oom["planHash"] and c.get("node") == placement["node"]
               and int(c.get("plannedBytes") or 0) >= int(oom["limitBytes"]) for c in done):
            return None
    elif any(c.get("planHash") == oom["planHash"] for c in done):
        return None  # corrected already; the re-planned pod replaces it
    if sum(c.get("node") == placement["node"] for c in done) >= fx.MAX_PER_NODE:
        return "gave up"
    if what == fx.MEMORY:
        return fx.memory_correction(oom, placement, now)
    return fx.correction(oom, placement, now)
