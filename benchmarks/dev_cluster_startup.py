"""Time `r1ctl dev up` to a usable cluster (nodes Ready, default ServiceAccount) and `r1ctl dev down`.

Baseline measured in the same run: starting etcd alone until /health answers,
the floor any cluster start pays. Writes benchmarks/results/dev_cluster_startup.{json,md}.

    .venv/bin/python benchmarks/dev_cluster_startup.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import results_io  # benchmarks/ is on sys.path when a script runs

from r1_operator.dev.processes import find_binary, free_port

BIN = Path(sys.executable).parent


def etcd_alone() -> float:
    d = tempfile.mkdtemp(prefix="bench-etcd-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    port, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    t = time.perf_counter()
    p = subprocess.Popen([str(find_binary("r1-cluster")), "etcd", f"--data-dir={d}", f"--listen-client-urls={url}",
                          f"--advertise-client-urls={url}", f"--listen-peer-urls=http://127.0.0.1:{peer}",
                          f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                          f"--initial-cluster=default=http://127.0.0.1:{peer}", "--log-level=error"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t
            except OSError:
                time.sleep(0.05)
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main(runs: int = 3) -> None:
    ups, downs, base = [], [], []
    for i in range(runs):
        base.append(etcd_alone())
        name = f"bench-{os.getpid()}-{i}"
        t = time.perf_counter()
        subprocess.run([str(BIN / "r1ctl"), "dev", "up", "--name", name, "--real-nodes", "0"], check=True,
                       capture_output=True)
        ups.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([str(BIN / "r1ctl"), "dev", "down", "--name", name], check=True, capture_output=True)
        downs.append(time.perf_counter() - t)
    r = {"runs": runs, "dev_up_s_median": round(statistics.median(ups), 2), "dev_up_s_max": round(max(ups), 2),
         "dev_down_s_median": round(statistics.median(downs), 2), "baseline_etcd_alone_s_median": round(statistics.median(base), 2),
         "up_over_baseline": round(statistics.median(ups) / statistics.median(base), 1), "goal_up_s": 60}
    print(r)
    results_io.save("dev_cluster_startup", r,
        "# `r1ctl dev up` with cached binaries\n\n| runs | up (median) | up (max) | down (median) | baseline: etcd alone | up / baseline | goal |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {runs} | {r['dev_up_s_median']} s | {r['dev_up_s_max']} s | {r['dev_down_s_median']} s | "
        f"{r['baseline_etcd_alone_s_median']} s | {r['up_over_baseline']}× | < 60 s |\n")


if __name__ == "__main__":
    main()
