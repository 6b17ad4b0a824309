"""The periodic re-plan loop (r1_operator.replan): all R1Deployments when the inventory changes; those without a
feasible plan every interval, whatever the digest says, so a node that comes back is never missed."""

from __future__ import annotations

import asyncio

from r1_operator.replan import replan_loop

NODE = {"metadata": {"name": "gpu-80g", "labels": {}}, "spec": {"unschedulable": False, "taints": []},
        "status": {"allocatable": {}, "conditions": []}}


def run_loop(nodes, waiting, rounds: int) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []

    async def main():
        task = asyncio.create_task(replan_loop(lambda: [("ns", "ok"), ("ns", "waits")], nodes, lambda: [],
                                               lambda ns, n: calls.append((ns, n)), 0.01, 3600.0, waiting))
        await asyncio.sleep(0.01 * rounds + 0.005)
        task.cancel()

    asyncio.run(main())
    return calls


def test_an_unchanged_inventory_re_checks_only_those_without_a_plan_each_interval():
    calls = run_loop(lambda: [NODE], lambda: [("ns", "waits")], rounds=6)
    assert calls[:2] == [("ns", "ok"), ("ns", "waits")]  # the first look: everything
    rest = calls[2:]
    assert rest and set(rest) == {("ns", "waits")} and len(rest) >= 3


def test_without_unplanned_deployments_an_unchanged_inventory_re_checks_nothing():
    assert run_loop(lambda: [NODE], lambda: [], rounds=6) == [("ns", "ok"), ("ns", "waits")]


def test_a_changed_node_re_checks_everything():
    state = {"n": 0}

    def nodes():  # a label that changes at every look
        state["n"] += 1
        return [{**NODE, "metadata": {"name": "gpu-80g", "labels": {"seen": str(state["n"])}}}]

    calls = run_loop(nodes, lambda: [], rounds=4)
    assert calls.count(("ns", "ok")) >= 3
