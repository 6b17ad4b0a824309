"""Placement tables: N replicas of one variant over mixed nodes, each node with its own offload (pure planner)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1_operator.planning.catalog import BUILTIN, R1_REPO
from r1_operator.planning.evaluate import PlanRequest
from r1_operator.planning.inventory import Taint, Toleration, hypothetical
from r1_operator.planning.placement import Previous, place
from r1_operator.planning.plan import plan_cluster
from test_plan import dev_nodes

CAT = BUILTIN[R1_REPO]
GiB = 1 << 30


def h200(name: str, gpus_used: int = 0, **kw):
    return replace(hypothetical(8, 141, 2048, name=name), gpus_used=gpus_used, **kw)


def table(r) -> list[tuple]:
    return [(p.id, p.plan.node, p.plan.gpus, p.plan.n_gpu_layers, p.plan.mode, p.replicas) for p in r.placements]


def previous(r) -> list[Previous]:
    return [Previous.from_status(p.as_dict()) for p in r.placements]


CASES = {
    # the dev cluster's four shapes: three nodes host UD-Q2_K_XL, each with the offload its GPUs allow
    "mixed nodes, 3 replicas": (dev_nodes, {}, 3, "UD-Q2_K_XL",
                                [(0, "gpu-2x80g", 2, 38, "hybrid", 1), (1, "gpu-80g", 1, 20, "hybrid", 1),
                                 (2, "cpu-only", 0, 0, "cpu", 1)]),
    # a fourth replica fits only with the smaller variant (memory-mapped on the 24 GB node): all four get it
    "mixed nodes, 4 replicas take the variant that places all": (
        dev_nodes, {}, 4, "UD-IQ1_S",
        [(0, "gpu-2x80g", 2, 58, "hybrid", 1), (1, "gpu-80g", 1, 30, "hybrid", 1), (2, "cpu-only", 0, 0, "cpu", 1),
         (3, "gpu-24g", 1, 8, "mmap", 1)]),
    # two full-GPU replicas take the fewest GPUs that keep every layer on GPU, spread over both nodes first
    "spread, then pack": (lambda: [h200("a"), h200("b")], {}, 3, "UD-Q2_K_XL",
                          [(0, "a", 2, 62, "gpu", 2), (1, "b", 2, 62, "gpu", 1)]),
    # GPUs held by other pods: a has one free, so the whole model no longer fits there and b takes both replicas
    "GPUs held by other pods": (lambda: [h200("a", gpus_used=7), h200("b")], {}, 2, "UD-Q2_K_XL",
                                [(0, "b", 2, 62, "gpu", 2)]),
    # a tainted node is left out unless tolerated; a nodeSelector keeps only matching nodes
    "taint": (lambda: [h200("a", taints=(Taint("dedicated", "other"),)), h200("b")], {}, 2, "UD-Q2_K_XL",
              [(0, "b", 2, 62, "gpu", 2)]),
    "taint tolerated": (lambda: [h200("a", taints=(Taint("dedicated", "other"),)), h200("b")],
                        {"tolerations": (Toleration("dedicated", "Equal", "other", "NoSchedule"),)}, 2, "UD-Q2_K_XL",
                        [(0, "a", 2, 62, "gpu", 1), (1, "b", 2, 62, "gpu", 1)]),
    "selector": (lambda: [h200("a", labels={"pool": "x"}), h200("b", labels={"pool": "y"})],
                 {"node_selector": (("pool", "y"),)}, 2, "UD-Q2_K_XL", [(0, "b", 2, 62, "gpu", 2)]),
}


@pytest.mark.parametrize("case", CASES)
def test_placement_table(case):
    nodes, req, n, variant, want = CASES[case]
    r = place(CAT, nodes(), PlanRequest(**req), n)
    assert r.plan.variant == variant and r.plan.fits
    assert table(r) == want
    assert r.placed == n and not r.shortfall
    assert r.plan.node == want[0][1] and r.plan.n_gpu_layers == want[0][3]  # status.plan's own fields: the first


def test_more_replicas_than_capacity_places_what_fits_and_says_why_not_more():
    r = place(CAT, dev_nodes(), PlanRequest(), 6)
    assert r.placed == 4 and r.wanted == 6 and r.plan.fits
    assert r.shortfall.startswith("4 of 6 replicas placed: no node has room for another UD-IQ1_S replica")
    assert "gpu-80g has no free GPU" in r.shortfall and "RAM minus reserve" in r.shortfall
    assert r.plan.reasons[0] == r.shortfall


def test_nothing_placeable_is_the_single_node_answer():
    tiny = [replace(hypothetical(0, 0, 16, name="small"))]
    r = place(CAT, tiny, PlanRequest(), 3)
    assert r.placed == 0 and not r.plan.fits and r.placements == ()
    assert r.plan.reasons == plan_cluster(CAT, tiny, PlanRequest())[0].reasons


@pytest.mark.parametrize("nodes", [dev_nodes, lambda: [h200("a"), h200("b")], lambda: [hypothetical(2, 80, 256)]])
def test_one_replica_is_the_cluster_plan(nodes):
    best = plan_cluster(CAT, nodes(), PlanRequest())[0]
    r = place(CAT, nodes(), PlanRequest(), 1)
    assert (r.plan.variant, r.plan.node, r.plan.gpus, r.plan.n_gpu_layers, r.plan.mode) == \
        (best.variant, best.node, best.gpus, best.n_gpu_layers, best.mode)


def test_growing_never_moves_a_placement_and_shrinking_drops_the_newest():
    nodes = [h200("a"), h200("b"), h200("c")]
    one = place(CAT, nodes, PlanRequest(), 1)
    assert table(one) == [(0, "a", 2, 62, "gpu", 1)]  # alone, it takes the fewest GPUs that hold every layer
    three = place(CAT, nodes, PlanRequest(), 3, previous(one), one.plan.variant)
    assert table(three)[0] == (0, "a", 2, 62, "gpu", 1)  # kept as it was
    assert {p[1] for p in table(three)[1:]} == {"b", "c"}
    five = place(CAT, nodes, PlanRequest(), 5, previous(three), three.plan.variant)
    assert [t[:5] for t in table(five)[:3]] == [t[:5] for t in table(three)]  # grown in place
    assert all(f[5] >= t[5] for f, t in zip(table(five), table(three))) and five.placed == 5
    two = place(CAT, nodes, PlanRequest(), 2, previous(three), three.plan.variant)
    assert table(two) == table(three)[:2]  # the newest placement went first
    # a node gone: its placement goes, the others stay as they were, and the replica moves to what is left
    gone = next(t for t in table(three) if t[0] == 1)[1]
    again = place(CAT, [x for x in nodes if x.name != gone], PlanRequest(), 3, previous(three), three.plan.variant)
    assert [t[:5] for t in table(again)] == [t[:5] for t in table(three) if t[1] != gone]
    assert again.placed == 3


def test_one_replica_takes_the_fewest_gpus_that_keep_its_tier_and_layers_and_a_stored_placement_stays():
    node = h200("a")
    one = place(CAT, [node], PlanRequest(), 1)
    assert table(one) == [(0, "a", 2, 62, "gpu", 1)]
    assert (one.plan.gpus, one.plan.tensor_split) == (2, (1, 1))
    assert plan_cluster(CAT, [node], PlanRequest())[0].gpus == 2  # r1ctl plan says the same
    # a placement stored with all eight (made before) is kept as it is: re-planning never moves a running model
    kept = place(CAT, [node], PlanRequest(), 1, [Previous(0, "a", 8, 62, 1)], one.plan.variant)
    assert table(kept) == [(0, "a", 8, 62, "gpu", 1)]
    # hybrid: fewer GPUs would hold fewer layers, so it keeps them all
    hybrid = place(CAT, [hypothetical(2, 80, 256)], PlanRequest(variant="UD-Q2_K_XL"), 1)
    assert hybrid.plan.mode == "hybrid" and hybrid.plan.gpus == 2


def test_growing_a_partly_offloaded_replica_never_doubles_up_on_its_gpus():
    """One replica holding both GPUs of its node with part of the layers: the second goes to another node, not
    onto GPUs the first already holds (the dev shapes, as `kubectl scale --replicas=2` or an HPA grows it)."""
    nodes = dev_nodes()
    req = PlanRequest(variant="UD-Q2_K_XL")
    one = place(CAT, nodes, req, 1)
    (first,) = table(one)
    two = place(CAT, nodes, req, 2, previous(one), one.plan.variant)
    assert table(two)[0] == first and len(two.placements) == 2
    assert two.placements[1].plan.node != first[1]
    assert table(two) == table(place(CAT, nodes, req, 2))  # what a fresh plan for two gives


def test_the_same_answer_whatever_order_the_nodes_come_in():
    nodes = dev_nodes()
    assert table(place(CAT, nodes, PlanRequest(), 3)) == table(place(CAT, list(reversed(nodes)), PlanRequest(), 3))


node_st = st.builds(
    lambda i, gpus, used, mem, ram: replace(hypothetical(gpus, mem if gpus else 0, ram, name=f"n{i}"),
                                            gpus_used=min(used, gpus)),
    st.integers(0, 9), st.integers(0, 8), st.integers(0, 8), st.sampled_from([24, 48, 80, 141]),
    st.sampled_from([32, 64, 256, 512, 1024, 2048]))


@settings(max_examples=60, deadline=None)
@given(st.lists(node_st, min_size=1, max_size=5, unique_by=lambda n: n.name), st.integers(1, 8),
       st.sampled_from(["auto", "quality"]))
def test_no_placement_exceeds_a_node_and_never_more_than_asked(nodes, n, policy):
    req = PlanRequest(policy=policy)
    by_name = {x.name: x for x in nodes}

    def check(r, n):
        assert r.placed <= n and len({p.plan.node for p in r.placements}) == len(r.placements)
        for p in r.placements:
            node = by_name[p.plan.node]
            assert p.replicas * p.plan.gpus <= node.gpus_free
            assert p.replicas * p.plan.resident_bytes <= node.ram_bytes - req.ram_reserve_bytes
            assert p.plan.variant == r.plan.variant  # every replica serves the same model
        assert sorted(p.id for p in r.placements) == list(range(len(r.placements)))
        assert bool(r.shortfall) == (r.placed < n)

    r = place(CAT, nodes, req, n)
    check(r, n)
    # grown from those placements (as the autoscaler grows spec.replicas): the same bounds hold
    grown = place(CAT, nodes, req, n + 2, previous(r), r.plan.variant)
    check(grown, n + 2)
    assert grown.placed >= r.placed
