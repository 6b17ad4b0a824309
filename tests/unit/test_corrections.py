"""Plan corrections (pure): a load out of GPU memory → the bytes missing plus a margin → a smaller plan there;
a container OOMKilled at its memory limit → more memory for the runtimes on its node, or a plan that needs less."""

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


# ---------------------------------------------------------------- a container OOMKilled at its memory limit

def _killed(p, limit: int, plan_hash_: str | None = None) -> dict:
    """What observe reads from an OOMKilled runtime container: its pod's limit, plan hash and placement."""
    return {"kind": "memory", "limitBytes": limit, "planHash": plan_hash_ or plan_hash(p), "placement": 0,
            "pod": "r1-0-abc", "container": "runtime"}


@pytest.mark.parametrize("limit,raise_", [
    pytest.param(GiB, fx.MIN_MEMORY_RAISE, id="small limit: the minimum raise"),
    pytest.param(100 * GiB, 10 * GiB, id="large limit: a tenth of it"),
    pytest.param(3001 * MiB, 301 * MiB, id="rounded up to whole MiB"),
])
def test_an_oomkill_raises_the_memory_by_a_margin_of_the_limit_it_hit(limit, raise_):
    _, p = _first()
    c = fx.memory_correction(_killed(p, limit), p, "t0")
    assert (c["kind"], c["device"], c["node"], c["placement"]) == ("memory", "cpu", p["node"], 0)
    assert c["bytes"] == raise_ and c["plannedBytes"] == limit and c["memoryBytes"] == limit + raise_
    assert "OOMKilled at its memory limit" in fx.describe(c)


def test_the_raised_memory_goes_to_every_runtime_on_that_node_and_survives_the_status():
    from r1_operator.builders import manifests as mf
    from r1_operator.settings import OperatorSettings

    s = OperatorSettings()
    plan, p = _first()
    before = mf.runtime_memory_bytes(p, s)
    assert before == p["cpuMemoryBytes"] + s.runtime_memory_margin_bytes
    c = fx.memory_correction(_killed(p, before), p, "t0")
    stored = json.loads(json.dumps({**plan, "corrections": [c]}))  # as the API server hands it back
    again = decide(SPEC, 1, NODES, stored)
    q = placement_plans(again.plan)[0]
    assert (q["node"], q["nGpuLayers"], q["mode"]) == (p["node"], p["nGpuLayers"], p["mode"])  # RAM to spare
    assert mf.runtime_memory_bytes(q, s) == before + c["bytes"] == c["memoryBytes"]
    res = mf.runtime_resources(SPEC, q, s)
    assert res["limits"]["memory"] == res["requests"]["memory"] == f"{-(-c['memoryBytes'] // MiB)}Mi"
    # another node's runtimes are not raised
    other = {**q, "node": "another"}
    assert mf.runtime_memory_bytes(other, s) == q["cpuMemoryBytes"] + s.runtime_memory_margin_bytes
    # a later plan (the spec changed) starts from it
    later = decide(SPEC, 2, NODES, again.plan)
    assert mf.runtime_memory_bytes(placement_plans(later.plan)[0], s) == c["memoryBytes"]


@pytest.mark.parametrize("variant", ["UD-IQ1_S", "auto"])
def test_a_node_without_the_raised_memory_gets_memory_mapped_weights(variant):
    """The variant stays (its cache is on the node; a smaller one would download again) with its weights
    memory-mapped, pinned or chosen by the policy."""
    spec = R1DeploymentSpec.model_validate({"model": {"variant": variant}})
    plan, p = _first()
    # a node with just enough RAM for the hybrid plan: the CPU side plus the planner's reserve, and 1 GiB
    from r1_operator.planning.evaluate import PlanRequest
    ram = p["memory"][-1]["total"] + PlanRequest().ram_reserve_bytes + GiB
    shape = {"name": "tight", "gpus": 2, "gpuMemoryMiB": 24576, "memory": str(ram), "cpu": "32"}
    n = NodeShape.model_validate(shape).to_node()
    n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    tight = inventory([n], [], "nvidia.com/gpu")
    first = decide(spec, 1, tight, None).plan
    assert first["mode"] == "hybrid" and first["node"] == "tight" and first["variant"] == "UD-IQ1_S"
    fp = placement_plans(first)[0]
    c = fx.memory_correction(_killed(fp, fp["cpuMemoryBytes"] + 2 * GiB), fp, "t0")
    assert c["bytes"] > GiB  # more than the node has beyond the hybrid plan
    after = decide(spec, 1, tight, {**first, "corrections": [c]})
    assert after.changed and after.plan["fits"]
    assert after.plan["mode"] == "mmap" and after.plan["variant"] == "UD-IQ1_S"
    assert after.plan["cpuMemoryBytes"] + c["bytes"] <= ram - PlanRequest().ram_reserve_bytes


def test_a_node_that_cannot_memory_map_and_lacks_the_raised_memory_has_no_plan_saying_why():
    """Below 20 GiB of RAM nothing is memory-mapped: the raise leaves the smallest variant no fit there."""
    shape = {"name": "small-ram", "gpus": 2, "gpuMemoryMiB": 81920, "memory": "19Gi", "cpu": "32"}
    n = NodeShape.model_validate(shape).to_node()
    n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    nodes = inventory([n], [], "nvidia.com/gpu")
    spec = R1DeploymentSpec.model_validate({"model": {"variant": "auto"}})
    first = decide(spec, 1, nodes, None).plan
    assert first["fits"] and first["variant"] == "UD-IQ1_S" and first["mode"] == "hybrid"  # the smallest
    fp = placement_plans(first)[0]
    three = [{**fx.memory_correction(_killed(fp, fp["cpuMemoryBytes"] + (2 + i) * GiB), fp, f"t{i}"), "bytes": 2 * GiB}
             for i in range(2)]
    after = decide(spec, 1, nodes, {**first, "corrections": three})
    assert not after.plan["fits"] and after.changed
    assert after.plan["reasons"][0].startswith("memory corrections give each runtime on small-ram 4.0 GiB more")
    assert any("small-ram" in r and "RAM minus reserve" in r for r in after.plan["reasons"][1:])


def test_which_oomkills_are_corrected_and_when_the_operator_stops():
    from r1_operator.planning.decide import correction_for

    plan, p = _first()
    c = correction_for(plan, _killed(p, 3 * GiB), "t0")
    assert isinstance(c, dict) and c["kind"] == "memory" and c["memoryBytes"] > 3 * GiB
    assert correction_for(plan, _killed(p, 3 * GiB), "t0", memory_pinned=True) is None  # the spec's limit
    assert correction_for(plan, _killed(p, 3 * GiB, "an-older-plan"), "t0") is None
    assert correction_for(plan, {**_killed(p, 0), "limitBytes": None}, "t0") is None  # no limit: the node ran out
    done = {**plan, "corrections": [c]}
    assert correction_for(done, _killed(p, 3 * GiB), "t1") is None  # the pod from before the raise
    second = correction_for(done, _killed(p, c["memoryBytes"]), "t1")  # the raised pod, killed again
    assert isinstance(second, dict) and second["plannedBytes"] == c["memoryBytes"]
    three = [{**c, "plannedBytes": c["plannedBytes"] + i} for i in range(fx.MAX_PER_NODE)]
    assert correction_for({**plan, "corrections": three}, _killed(p, 9 * GiB), "t2") == "gave up"
    # the kinds are counted apart: three GPU corrections there leave memory corrections to do, and the other way
    gpu = [{"node": p["node"], "placement": 0, "device": "gpu0", "limitBytes": 20 * GiB, "planHash": f"h{i}"}
           for i in range(fx.MAX_PER_NODE)]
    assert isinstance(correction_for({**plan, "corrections": gpu}, _killed(p, 3 * GiB), "t2"), dict)
    gpu_oom = {"planDevice": "gpu0", "what": "KV cache", "requestedBytes": 2 * GiB, "plannedBytes": GiB,
               "planHash": plan_hash(p), "placement": 0}
    assert isinstance(correction_for({**plan, "corrections": three}, gpu_oom, "t2"), dict)
