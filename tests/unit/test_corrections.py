"""Plan corrections (pure): a load out of GPU memory → the bytes missing plus a margin → a smaller plan there."""

from __future__ import annotations

import json

import pytest

from r1_operator.api.types import R1DeploymentSpec
from r1_operator.dev.nodes import NodeShape
from r1_operator.planning import corrections as fx
from r1_operator.planning.decide import decide, placement_plans, plan_hash
from r1_operator.planning.inventory import inventory

MiB, GiB = 1 << 20, 1 << 30


def _node(name: str, gpus: int = 2, mib: int = 24576) -> dict:
    n = NodeShape.model_validate({"name": name, "gpus": gpus, "gpuMemoryMiB": mib, "memory": "256Gi",
                                  "cpu": "32"}).to_node()
    n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return n


SPEC = R1DeploymentSpec.model_validate({"model": {"variant": "UD-IQ1_S"}})
NODES = inventory([_node("a"), _node("b")], [], "nvidia.com/gpu")


def _first():
    plan = decide(SPEC, 1, NODES, None).plan
    return plan, placement_plans(plan)[0]


def _on(placement, device="gpu0") -> int:
    return next(d["total"] for d in placement["memory"] if d["device"] == device)


@pytest.mark.parametrize("oom,missing", [
    pytest.param({"freeBytes": 16 * GiB}, lambda p: p - 16 * GiB, id="free-logged: the plan beyond what was free"),
    pytest.param({"requestedBytes": 9 * GiB, "plannedBytes": 8 * GiB}, lambda p: GiB,
                 id="no free figure: the allocation beyond its prediction"),
    pytest.param({"requestedBytes": 8 * GiB, "plannedBytes": 8 * GiB}, lambda p: 0,
                 id="prediction exact: the margin alone"),
])
def test_the_correction_is_the_bytes_missing_plus_a_margin(oom, missing):
    _, p = _first()
    planned = _on(p)
    c = fx.correction({"planDevice": "gpu0", "what": "model weights", "planHash": "h", **oom}, p, "t0")
    margin = max(int(fx.MARGIN * planned), fx.MIN_MARGIN)
    assert c["bytes"] == missing(planned) + margin and c["limitBytes"] == planned - c["bytes"]
    assert (c["node"], c["placement"], c["device"], c["planHash"], c["at"]) == (p["node"], 0, "gpu0", "h", "t0")


def test_a_cpu_side_failure_is_not_corrected_with_gpu_layers():
    _, p = _first()
    assert fx.correction({"planDevice": "cpu", "requestedBytes": GiB}, p, "t0") is None


def test_the_corrected_plan_fits_what_was_free_and_keeps_its_corrections_through_the_status():
    plan, p = _first()
    free = _on(p) * 3 // 4
    c = fx.correction({"planDevice": "gpu0", "what": "model weights", "freeBytes": free, "planHash": plan_hash(p)},
                      p, "t0")
    stored = json.loads(json.dumps({**plan, "corrections": [c]}))  # as the API server hands it back
    # an equal node without a correction serves the plan as it was
    moved = decide(SPEC, 1, NODES, stored)
    assert moved.changed and "re-planned" in moved.why
    m = placement_plans(moved.plan)[0]
    assert m["node"] != p["node"] and m["nGpuLayers"] == p["nGpuLayers"]
    # the corrected node alone: fewer layers on its GPUs, within what was free
    alone = [n for n in NODES if n.name == p["node"]]
    again = decide(SPEC, 1, alone, stored)
    q = placement_plans(again.plan)[0]
    assert q["node"] == p["node"] and q["nGpuLayers"] < p["nGpuLayers"] and _on(q) <= c["limitBytes"] <= free
    assert again.plan["corrections"] == [c] and moved.plan["corrections"] == [c]
    # a later re-plan (the spec changed) starts from the correction: never back above the limit
    later = decide(SPEC, 2, alone, again.plan)
    assert _on(placement_plans(later.plan)[0]) <= c["limitBytes"] and later.plan["corrections"] == [c]


def test_an_uncorrected_node_keeps_its_full_gpus():
    plan, p = _first()
    c = fx.correction({"planDevice": "gpu0", "freeBytes": GiB, "planHash": "h"}, p, "t0")
    out = {n.name: n for n in fx.apply(NODES, [c], GiB)}
    other = next(n for n in NODES if n.name != p["node"])
    assert out[other.name] == other
    assert out[p["node"]].gpu_memory_bytes == c["limitBytes"] + GiB


def test_what_is_corrected_and_when_the_operator_stops():
    from r1_operator.planning.decide import correction_for

    plan, p = _first()
    oom = {"planDevice": "gpu0", "what": "KV cache", "requestedBytes": 2 * GiB, "plannedBytes": GiB,
           "planHash": plan_hash(p), "placement": 0}
    c = correction_for(plan, oom, "t0")
    assert isinstance(c, dict) and c["bytes"] >= GiB
    assert correction_for(plan, {**oom, "planHash": "an-older-plan"}, "t0") is None  # its pod is on its way out
    assert correction_for({**plan, "corrections": [c]}, oom, "t1") is None  # corrected already
    assert correction_for(plan, {**oom, "planDevice": "cpu"}, "t0") is None  # fewer GPU layers would not help
    three = [{**c, "planHash": f"h{i}"} for i in range(fx.MAX_PER_NODE)]
    assert correction_for({**plan, "corrections": three}, oom, "t2") == "gave up"
    elsewhere = [{**x, "node": "another"} for x in three]
    assert isinstance(correction_for({**plan, "corrections": elsewhere}, oom, "t2"), dict)  # per node
