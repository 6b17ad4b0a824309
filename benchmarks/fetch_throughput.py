"""Whole `r1-runtime fetch` against the dev hub with a per-connection cap C and a total cap 8·C, in the same run.

The hub's caps stand in for a CDN's: a per-connection limit well below the link (`--conn-rate`), and the link
or the CDN's total (`--total-rate`). The set is a miniature R1 split set of about 345 MB (2 shards), generated
once. Each round, on a fresh directory:
- `--connections 1`: the single-connection baseline (one file at a time, one connection);
- `--connections 8` (the default): byte ranges of 64 MiB over eight connections.
Both are timed from the process's start to its exit (listing, download, the sha256 of every file, the renames:
what the user waits for, without the merge). Throughput is the set's bytes over that time, against the total
cap. Peak RSS comes from wait4.

Then a resume round: `--connections 8` under the caps is SIGKILLed once half the set is written, and rerun
without caps. The bytes fetched again are the hub's served bytes beyond the set (the goal is 0: only what was
in flight at the kill may come twice), and no request of the rerun overlaps a span written before the kill.
Results: benchmarks/results/fetch_throughput.*

    .venv/bin/python benchmarks/fetch_throughput.py [WORKDIR]
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import results_io  # benchmarks/ is on sys.path when a script runs

from r1_devtools import devhub
from r1_devtools.testmodel import ModelShape
from r1_runtime.cache.download import written_bytes, written_spans

SHAPE = ModelShape(n_embd=2048, n_layer=4, n_dense=1, n_head=16, q_lora_rank=512, kv_lora_rank=256, n_ff=4096,
                   n_ff_exp=1024, n_expert=6, n_expert_used=2)  # about 345 MB in 2 files
REPO, VARIANT = "unsloth/DeepSeek-R1-GGUF", "UD-IQ1_S"
# C, bytes per second per connection. Well below what this machine moves uncapped (the hub and the fetch, both
# Python, share its 2 cores: about 100 MB/s over 1 or 8 connections alike), so the caps, not the CPU, bound it.
CONN_RATE = 5_000_000
TOTAL_RATE = 8 * CONN_RATE
ROUNDS = 3
R1_RUNTIME = str(Path(sys.executable).with_name("r1-runtime"))
WRITE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from fetch_throughput import SHAPE
from r1_devtools.testmodel import write_test_model
write_test_model(Path(sys.argv[1]), SHAPE, n_shards=2, seed=3)
"""


def _cmd(endpoint: str, dest: Path, connections: int) -> tuple[list[str], dict]:
    cmd = [R1_RUNTIME, "fetch", "--repo", REPO, "--variant", VARIANT, "--dest", str(dest), "--connections",
           str(connections), "--progress-interval", "5", "--termination-log", str(dest.parent / "none")]
    return cmd, {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"}


def _timed(endpoint: str, dest: Path, connections: int) -> tuple[float, int]:
    cmd, env = _cmd(endpoint, dest, connections)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"fetch --connections {connections} failed")
    return wall, usage.ru_maxrss * 1024


def _resume(root: Path, work: Path, files: list[Path]) -> dict:
    dest = work / "resume"
    sizes = {f.relative_to(root).as_posix(): f.stat().st_size for f in files}
    total = sum(sizes.values())
    finals = {k: dest / Path(k).relative_to(REPO) for k in sizes}
    with devhub.running(root, throttle_bps=CONN_RATE, total_bps=TOTAL_RATE) as (endpoint, hub):
        cmd, env = _cmd(endpoint, dest, 8)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while sum(sizes[k] if finals[k].is_file() else written_bytes(finals[k], sizes[k]) for k in sizes) < total / 2:
            if proc.poll() is not None:
                raise SystemExit("the fetch ended before half the set was written")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = len(hub.stats()["requests"])
        had = {k: [(0, sizes[k])] if finals[k].is_file() else written_spans(finals[k], sizes[k]) for k in sizes}
        written = sum(b - a for spans in had.values() for a, b in spans)
        hub.throttle_bps = hub.total_bps = 0
        start = time.perf_counter()
        _timed(endpoint, dest, 8)
        rerun_s = time.perf_counter() - start
        stats = hub.stats()
    rerun = [q for q in stats["requests"][killed_at:]]
    overlapping = sum(1 for q in rerun for a, b in had[q["file"]] if not (q["end"] < a or q["start"] >= b))
    return {"written_at_kill_bytes": written, "written_at_kill_percent": round(100 * written / total, 1),
            "rerun_requested_bytes": sum(q["bytes"] for q in rerun), "missing_at_kill_bytes": total - written,
            "refetched_bytes": sum(stats["served"].values()) - total, "rerun_requests_overlapping_written": overlapping,
            "rerun_seconds": round(rerun_s, 2)}


def main(work: Path) -> None:
    root = work / "hub"
    # written by a child: a fetch forked from this process would count its numpy pages in ru_maxrss
    out = root / REPO / f"DeepSeek-R1-{VARIANT}" / f"DeepSeek-R1-{VARIANT}.gguf"
    subprocess.run([sys.executable, "-c", WRITE, str(out), str(Path(__file__).parent)], check=True)
    files = sorted(out.parent.glob("*-of-*.gguf"))
    total = sum(f.stat().st_size for f in files)
    one, eight = [], []
    with devhub.running(root, throttle_bps=CONN_RATE, total_bps=TOTAL_RATE) as (endpoint, _):
        for i in range(ROUNDS):
            for runs, conns in ((one, 1), (eight, 8)):
                dest = work / f"round-{i}-{conns}"
                runs.append(_timed(endpoint, dest, conns))
                subprocess.run(["rm", "-rf", str(dest)], check=True)
    resume = _resume(root, work, files)
    one_s, eight_s = statistics.median(w for w, _ in one), statistics.median(w for w, _ in eight)
    r = {
        "bytes": total, "files": len(files), "conn_rate_Bps": CONN_RATE, "total_rate_Bps": TOTAL_RATE,
        "one_connection_seconds_median": round(one_s, 2), "eight_connections_seconds_median": round(eight_s, 2),
        "one_connection_MBps": round(total / one_s / 1e6, 1), "eight_connections_MBps": round(total / eight_s / 1e6, 1),
        "eight_vs_total_cap": round(total / eight_s / TOTAL_RATE, 3),
        "one_vs_conn_cap": round(total / one_s / CONN_RATE, 3),
        "speedup_vs_one_connection": round(one_s / eight_s, 2),
        "one_connection_seconds": [round(w, 2) for w, _ in one], "eight_connections_seconds": [round(w, 2) for w, _ in eight],
        "peak_rss_MB_max": round(max(m for _, m in one + eight) / 1e6, 1),
        "resume": resume,
        "goals": {"eight_vs_total_cap": 0.85, "refetched_bytes": 0},
    }
    print(r)
    rs = resume
    results_io.save("fetch_throughput", r,
        f"# `r1-runtime fetch` of a {total / 1e9:.2f} GB split set ({len(files)} files) from the dev hub capped at "
        f"{CONN_RATE / 1e6:.0f} MB/s per connection and {TOTAL_RATE / 1e6:.0f} MB/s in total\n\n"
        "Whole command, start to exit (listing, download, the sha256 of each file, renames; no merge), medians of "
        f"{ROUNDS} alternating rounds in the same run. The caps stand in for a CDN's.\n\n"
        "| connections | seconds | MB/s | vs the cap | peak RSS |\n|---|---|---|---|---|\n"
        f"| 1 (baseline) | {r['one_connection_seconds_median']} | {r['one_connection_MBps']} | "
        f"{r['one_vs_conn_cap']}× of the per-connection cap | |\n"
        f"| 8 (default) | {r['eight_connections_seconds_median']} | {r['eight_connections_MBps']} | "
        f"{r['eight_vs_total_cap']}× of the total cap (goal ≥ 0.85×) | {r['peak_rss_MB_max']} MB (max of all) |\n\n"
        f"Speed-up over one connection: {r['speedup_vs_one_connection']}×. Per round, 1 connection: "
        f"{', '.join(map(str, r['one_connection_seconds']))} s; 8: {', '.join(map(str, r['eight_connections_seconds']))} s.\n\n"
        f"Resume: SIGKILL at {rs['written_at_kill_percent']}% written; the rerun asked for {rs['rerun_requested_bytes']} "
        f"bytes ({rs['missing_at_kill_bytes']} were missing), {rs['rerun_requests_overlapping_written']} of its "
        f"requests overlapped a written span, and the hub served {rs['refetched_bytes']} bytes beyond the set "
        "(in flight at the kill; goal 0).\n")


if __name__ == "__main__":
    results_io.run_in_workdir(main)
