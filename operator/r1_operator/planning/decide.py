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
from r1_operator.planning.evaluate import PlanRequest
from r1_operator.planning.inventory import NodeCapacity, Toleration, eligible
from r1_operator.planning.memory import RuntimeSettings
from r1_operator.planning.plan import Plan, plan_cluster, plan_node


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
                       node_selector=tuple(sorted(spec.scheduling.node_selector.items())), max_gpus=max_gpus,
                       keep_shards=spec.cache.keep_shards)


def plan_to_status(p: Plan, generation: int, why: str) -> dict[str, Any]:
    """status.plan: the plan's one serialization, plus the spec generation it was made for and why."""
    return {**p.as_dict(), "generation": generation, "why": why}


def plan_hash(plan: dict[str, Any]) -> str:
    keep = {k: plan.get(k) for k in ("variant", "nGpuLayers", "node", "gpus", "tensorSplit", "mode")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PlanOutcome:
    plan: dict[str, Any]  # the status.plan to use
    changed: bool  # differs from the stored one
    why: str  # first, new, spec changed, or what broke the stored plan


def _stored_still_fits(stored: dict[str, Any], nodes: list[NodeCapacity], spec: R1DeploymentSpec) -> str | None:
    """None when the stored plan still holds on its node; otherwise why not."""
    node = next((n for n in nodes if n.name == stored.get("node")), None)
    if node is None:
        return f"node {stored.get('node')} is gone"
    req = plan_request(spec, variant=stored["variant"], max_gpus=stored.get("gpus", 0))
    why = eligible(node, req.node_selector, req.tolerations)
    if why:
        return why
    if node.gpus_free < stored.get("gpus", 0):
        return f"{node.name} has {node.gpus_free} free GPUs, the plan needs {stored.get('gpus')}"
    p = plan_node(catalog_for(spec.model.repo), node, req)
    if not p.fits or p.n_gpu_layers < stored.get("nGpuLayers", 0):
        return f"{stored['variant']} with {stored.get('gpuLayers')} GPU layers no longer fits on {node.name}"
    return None


def decide(spec: R1DeploymentSpec, generation: int, nodes: list[NodeCapacity], stored: dict[str, Any] | None) -> PlanOutcome:
    """The plan for this generation of the spec. Raises PlanError for a spec that cannot be planned."""
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
    if stored and stored.get("fits") and stored.get("generation") == generation:
        broken = _stored_still_fits(stored, nodes, spec)
        if broken is None:
            return PlanOutcome(stored, False, "")
        why = f"re-planned: {broken}"
    elif stored and stored.get("generation") != generation:
        why = "re-planned: the spec changed"
    else:
        why = "planned" if not stored else "re-planned: the previous plan did not fit"
    try:
        best, _, _ = plan_cluster(catalog, nodes, plan_request(spec))
    except ValueError as exc:
        raise PlanError("spec.inference", str(exc)) from None
    plan = plan_to_status(best, generation, why)
    changed = stored is None or plan_hash(plan) != plan_hash(stored) or plan.get("fits") != stored.get("fits")
    if not changed:
        plan["why"] = stored.get("why", why)  # the same plan for a new generation is no news
    return PlanOutcome(plan, changed, why)
