"""Whole `r1-runtime merge` against `cat shards > out && sync out` on the same disk, in the same run.

Writes a ~2.5 GB split set (5 shards) with the miniature R1 writer, then alternates, ROUNDS rounds:
- `r1-runtime merge SHARD1 OUT` (the default: consumes the shards as it copies), timed from the process's
  start to its exit, so start-up, the header checks, the copy, the sha256, the verify and the rename all
  count. Its peak RSS comes from wait4 (the process's own), its peak disk from sampling the filesystem's
  used bytes every 5 ms, less the set already there;
- the same with `--keep-shards` (no shard bytes freed, two copies on disk);
- `cat` of the same shards into one file, then `sync` of that file (the baseline: one sequential copy, no
  hash, no header work);
- `cat` of each shard onto the end of one file and `rm` of that shard, then `sync` (the baseline that frees the
  shards as it goes, as the merge does). On a disk whose writes are faster into blocks freed a moment before
  (a thin-provisioned virtual disk, as here at times) the freeing itself speeds both up; this baseline shows how
  much of the merge's figure against plain cat that explains.
Each command starts from a fresh copy of the set (not timed) once the kernel has written back its dirty pages, and
each command goes first in a third of the rounds, so none always meets the disk in the same state. Results: benchmarks/results/merge_throughput.*

    .venv/bin/python benchmarks/merge_throughput.py [WORKDIR]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import results_io  # benchmarks/ is on sys.path when a script runs

from r1_devtools.testmodel import ModelShape, shard_names

SHAPE = ModelShape(n_embd=2048, n_layer=12, n_dense=1, n_head=16, q_lora_rank=512, kv_lora_rank=256, n_ff=4096,
                   n_ff_exp=1024, n_expert=16, n_expert_used=2)
N_SHARDS = 5
ROUNDS = 6  # this machine is noisy: every round's ratio is kept, and the median is the headline
WRITE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from merge_throughput import SHAPE, N_SHARDS
from r1_devtools.testmodel import write_test_model
write_test_model(Path(sys.argv[1]), SHAPE, n_shards=N_SHARDS, seed=1)
"""
R1_RUNTIME = str(Path(sys.executable).with_name("r1-runtime"))


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _settle(limit: int = 16 << 20, timeout: float = 60.0) -> None:
    """Wait until the kernel's dirty and writeback pages are below limit, so each command starts on an idle disk."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        if sum(int(meminfo[k].split()[0]) << 10 for k in ("Dirty", "Writeback")) < limit:
            return
        time.sleep(0.1)


def _timed(cmd: list[str], watch: Path) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, peak extra disk bytes) of one command."""
    base = _used(watch)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _used(watch) - base)
            time.sleep(0.005)

    t = threading.Thread(target=sample)
    t.start()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stop.set()
    t.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:2]} failed")
    return wall, usage.ru_maxrss * 1024, peak[0]


def main(work: Path) -> None:
    src = work / "set"
    subprocess.run([sys.executable, "-c", WRITE, str(src / "Big.gguf"), str(Path(__file__).parent)], check=True)
    shards = shard_names(src / "Big.gguf", N_SHARDS)
    total = sum(p.stat().st_size for p in shards)
    merge_cmd = [R1_RUNTIME, "merge", "{first}", "{out}"]
    keep_cmd = [R1_RUNTIME, "merge", "--keep-shards", "{first}", "{out}"]
    cat_cmd = ["bash", "-c", " ".join(["cat", *(f"{{run}}/{p.name}" for p in shards), "> {out} && sync {out}"])]
    cat_rm_cmd = ["bash", "-c", " ".join(f"cat {{run}}/{p.name} >> {{out}} && rm {{run}}/{p.name} &&" for p in shards)
                  + " sync {out}"]
    times: dict[str, list] = {"merge": [], "keep": [], "cat": [], "cat_rm": []}
    cmds = {"merge": merge_cmd, "keep": keep_cmd, "cat": cat_cmd, "cat_rm": cat_rm_cmd}
    for i in range(ROUNDS):
        names = list(cmds)
        for name in names[i % len(names):] + names[:i % len(names)]:  # each command leads in turn
            run = work / f"round-{i}"
            shutil.copytree(src, run)
            subprocess.run(["sync", "-f", str(run)], check=True)
            _settle()
            fill = {"first": str(run / shards[0].name), "out": str(run / "Big.gguf"), "run": str(run)}
            times[name].append(_timed([a.format(**fill) for a in cmds[name]], run))
            shutil.rmtree(run)
    merges, keeps, cats = times["merge"], times["keep"], times["cat"]
    merge_s = statistics.median(m[0] for m in merges)
    cat_s = statistics.median(c[0] for c in cats)
    keep_s = statistics.median(k[0] for k in keeps)
    cat_rm_s = statistics.median(c[0] for c in times["cat_rm"])
    r = {
        "bytes": total,
        "shards": len(shards),
        "merge_wall_seconds_median": round(merge_s, 3),
        "cat_sync_seconds_median": round(cat_s, 3),
        "merge_MBps": round(total / merge_s / 1e6, 1),
        "cat_sync_MBps": round(total / cat_s / 1e6, 1),
        "merge_vs_cat": round(cat_s / merge_s, 3),
        "keep_shards_seconds_median": round(keep_s, 3),
        "keep_shards_vs_cat": round(cat_s / keep_s, 3),
        "cat_rm_sync_seconds_median": round(cat_rm_s, 3),
        "merge_vs_cat_rm": round(cat_rm_s / merge_s, 3),
        "cat_rm_seconds": [round(c[0], 3) for c in times["cat_rm"]],
        "keep_seconds": [round(k[0], 3) for k in keeps],
        "merge_seconds": [round(m[0], 3) for m in merges],
        "cat_seconds": [round(c[0], 3) for c in cats],
        "merge_vs_cat_per_round": [round(c[0] / m[0], 3) for m, c in zip(merges, cats)],
        "peak_rss_MB_max": round(max(m[1] for m in merges) / 1e6, 1),
        "peak_extra_disk_MB_max": round(max(m[2] for m in merges) / 1e6, 1),
        "cat_peak_extra_disk_MB_max": round(max(c[2] for c in cats) / 1e6, 1),
        "goals": {"merge_vs_cat": 0.9, "peak_rss_MB": 100, "peak_extra_disk_MB": round((1 << 30) / 1e6, 1)},
    }
    print(r)
    results_io.save("merge_throughput", r,
        f"# `r1-runtime merge` of a {total / 1e9:.2f} GB split set ({len(shards)} shards) vs `cat` + `sync`, same disk, "
        "same run\n\n"
        "The merge's wall time is the whole command (start-up, header checks, copy with the sha256 on the way, verify,\n"
        "rename, marker); it consumes the shards as it copies. Peak disk is the most the filesystem held beyond the\n"
        f"set during the command (the merged copy less the shard bytes already freed). Medians of {ROUNDS} rounds, the order\n"
        "rotating each round; this disk is noisy (per-round ratios below), so compare the medians.\n"
        f"merge vs cat per round: {', '.join(f'{x}×' for x in r['merge_vs_cat_per_round'])}. "
        f"cat+sync ran at {r['cat_sync_MBps']} MB/s (this disk's state in this run).\n"
        "Two like-for-like pairs: the merge (it frees the shards) against cat+rm of each shard, and --keep-shards\n"
        "(it frees nothing) against plain cat.\n\n"
        "| merge s | --keep-shards s | cat+sync s | cat+rm+sync s | merge vs cat | merge vs cat+rm | "
        "--keep-shards vs cat | peak RSS | peak disk beyond the set | goals |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {r['merge_wall_seconds_median']} | {r['keep_shards_seconds_median']} | {r['cat_sync_seconds_median']} | "
        f"{r['cat_rm_sync_seconds_median']} | {r['merge_vs_cat']}× | {r['merge_vs_cat_rm']}× | {r['keep_shards_vs_cat']}× | "
        f"{r['peak_rss_MB_max']} MB | {r['peak_extra_disk_MB_max']} MB (cat: {r['cat_peak_extra_disk_MB_max']} MB) | "
        "≥ 0.9×, ≤ 100 MB, ≤ 1 GiB |\n")


if __name__ == "__main__":
    results_io.run_in_workdir(main)
