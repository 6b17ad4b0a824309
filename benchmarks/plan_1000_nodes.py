"""Planning over 1,000 nodes: wall time of plan_cluster, against a baseline measured in the same run.

The baseline is reading the same 1,000 Node objects into capacities (inventory),
the work any planner must do; the ratio says what planning adds on top. Two
clusters: a realistic one (8 node types, varied GPUs in use) and a worst case
where every node has a distinct shape, so no evaluation is shared.

    .venv/bin/python benchmarks/plan_1000_nodes.py
"""

from __future__ import annotations

import random
import statistics
import time

import results_io  # benchmarks/ is on sys.path when a script runs

from r1_operator.dev.nodes import NodeShape
from r1_operator.planning import evaluate, layout
from r1_operator.planning.catalog import BUILTIN, R1_REPO
from r1_operator.planning.inventory import inventory
from r1_operator.planning.evaluate import PlanRequest
from r1_operator.planning.plan import plan_cluster

TYPES = [(0, 0, "256Gi"), (1, 24576, "64Gi"), (1, 81920, "512Gi"), (2, 81920, "256Gi"), (4, 81920, "1Ti"),
         (8, 81920, "2Ti"), (8, 143771, "2Ti"), (1, 49152, "128Gi")]

def nodes(n: int, distinct: bool, seed: int = 1) -> tuple[list[dict], list[dict]]:
    rnd = random.Random(seed)
    out, pods = [], []
    for i in range(n):
        g, mib, mem = TYPES[i % len(TYPES)]
        if distinct:  # every node a different shape
            mib = mib + i if g else 0
            mem = f"{256 + i}Gi"
        node = NodeShape(name=f"n{i:04d}", gpus=g, gpuMemoryMiB=mib or None, memory=mem).to_node()
        node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        out.append(node)
        used = rnd.randint(0, g) if g else 0
        if used:
            pods.append({"metadata": {"name": f"p{i}"}, "status": {"phase": "Running"},
                         "spec": {"nodeName": node["metadata"]["name"],
                                  "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(used)}}}]}})
    return out, pods

def timed(fn, repeat: int = 7, cold: bool = True) -> list[float]:
    out = []
    for _ in range(repeat):
        if cold:  # nothing carried over from a previous run: per-shape evaluations and per-model tables
            evaluate._CACHE.clear()
            layout._DERIVED.clear()
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out

def main() -> None:
    cat = BUILTIN[R1_REPO]
    for v in cat.variants:
        _ = v.facts  # the catalog description is built once per process, not per plan
    req = PlanRequest()
    results = {}
    for label, distinct in (("8 node types", False), ("1000 distinct shapes", True)):
        raw, pods = nodes(1000, distinct)
        caps = inventory(raw, pods)
        baseline = timed(lambda: inventory(raw, pods))
        planning = timed(lambda: plan_cluster(cat, caps, req))
        warm = timed(lambda: plan_cluster(cat, caps, req), cold=False)
        total = timed(lambda: plan_cluster(cat, inventory(raw, pods), req))
        results[label] = {
            "nodes": 1000,
            "baseline_inventory_ms_median": round(statistics.median(baseline), 2),
            "plan_cluster_ms_median": round(statistics.median(planning), 2),
            "plan_cluster_ms_max": round(max(planning), 2),
            "plan_cluster_warm_ms_median": round(statistics.median(warm), 2),
            "inventory_plus_plan_ms_median": round(statistics.median(total), 2),
            "plan_over_baseline": round(statistics.median(planning) / statistics.median(baseline), 2),
            "goal_ms": 50,
        }
        print(label, results[label], flush=True)
    lines = ["# Planning 1,000 nodes (R1 catalog, estimate offload, auto policy)", "",
             "Median of 7 cold runs (all memos cleared each run); warm keeps the per-model tables and per-shape evaluations,",
             "as a running operator does. Baseline: reading the same Node objects (inventory), measured in the same run.", "",
             "| cluster | baseline inventory ms | plan_cluster ms (cold) | plan / baseline | plan_cluster ms (warm) | inventory + plan ms | goal |",
             "|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['baseline_inventory_ms_median']} | {r['plan_cluster_ms_median']} | "
                     f"{r['plan_over_baseline']}× | {r['plan_cluster_warm_ms_median']} | {r['inventory_plus_plan_ms_median']} | < {r['goal_ms']} ms |")
    results_io.save("plan_1000_nodes", results, "\n".join(lines))

if __name__ == "__main__":
    main()
