"""Time a repeat `make setup` (everything already built and cached): the issue's goal is under 2 minutes.

Baseline measured in the same run: starting the venv's Python once, the floor of any setup step.
Writes benchmarks/results/setup_repeat.{json,md}.

    .venv/bin/python benchmarks/setup_repeat.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import results_io  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], runs: int = 3) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    setup = timed(["make", "setup"])
    base = timed([sys.executable, "-c", "pass"])
    r = {"runs": len(setup), "make_setup_s_median": round(statistics.median(setup), 2), "make_setup_s_max": round(max(setup), 2),
         "baseline_python_start_s_median": round(statistics.median(base), 3),
         "setup_over_baseline": round(statistics.median(setup) / statistics.median(base), 1), "goal_s": 120}
    print(r)
    results_io.save("setup_repeat", r,
        "# Repeat `make setup` (all builds cached)\n\n| runs | median | max | baseline: python start | ratio | goal |\n|---|---|---|---|---|---|\n"
        f"| {r['runs']} | {r['make_setup_s_median']} s | {r['make_setup_s_max']} s | {r['baseline_python_start_s_median']} s | "
        f"{r['setup_over_baseline']}× | < 120 s |\n")


if __name__ == "__main__":
    main()
