"""Merge throughput against `cp` of the same bytes on the same disk, and peak RSS of the merge.

Writes a ~2.5 GB split set (4 shards) with `make-test-model`, then alternates
`r1-runtime merge` (copy only, then the full run with verify + sha256) and
`cp` of the shards, 3 rounds, in this run. Peak RSS is the merge process's
own ru_maxrss. Results: benchmarks/results/merge_throughput.{json,md}.

    .venv/bin/python benchmarks/merge_throughput.py [WORKDIR]
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_io  # benchmarks/ is on sys.path when a script runs

from r1_devtools.testmodel import ModelShape, shard_names

SHAPE = ModelShape(n_embd=2048, n_layer=12, n_dense=1, n_head=16, q_lora_rank=512, kv_lora_rank=256, n_ff=4096,
                   n_ff_exp=1024, n_expert=16, n_expert_used=2)
# Peak RSS is read from /proc/self/status VmHWM, which exec resets (ru_maxrss would inherit the parent's).
CHILD = """
import json, sys, time
from r1_runtime.cache.merge import merge
t = time.perf_counter()
info = merge(sys.argv[1], sys.argv[2], keep_shards=True)
info["wall_seconds"] = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
info["max_rss_kb"] = int(hwm.split()[1])
print(json.dumps(info))
"""
WRITE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from merge_throughput import SHAPE
from r1_devtools.testmodel import write_test_model
write_test_model(Path(sys.argv[1]), SHAPE, n_shards=4, seed=1)
"""


def main(work: Path) -> None:
    # Written by a separate process, so this one stays small.
    subprocess.run([sys.executable, "-c", WRITE, str(work / "set" / "Big.gguf"), str(Path(__file__).parent)], check=True)
    shards = shard_names(work / "set" / "Big.gguf", 4)
    total = sum(p.stat().st_size for p in shards)
    merges, copies = [], []
    for i in range(3):
        out = work / f"merged-{i}" / "Big.gguf"
        res = subprocess.run([sys.executable, "-c", CHILD, str(shards[0]), str(out)], capture_output=True, text=True, check=True)
        merges.append(json.loads(res.stdout))
        shutil.rmtree(out.parent)
        dest = work / f"cp-{i}"
        dest.mkdir()
        t = time.perf_counter()
        subprocess.run(["cp", *map(str, shards), str(dest)], check=True)
        subprocess.run(["sync", "-f", str(dest)], check=True)
        copies.append(time.perf_counter() - t)
        shutil.rmtree(dest)
    copy_s = statistics.median(m["copy_seconds"] for m in merges)
    wall_s = statistics.median(m["wall_seconds"] for m in merges)
    cp_s = statistics.median(copies)
    r = {
        "bytes": total,
        "shards": len(shards),
        "merge_copy_seconds_median": round(copy_s, 3),
        "merge_total_seconds_median": round(wall_s, 3),
        "cp_seconds_median": round(cp_s, 3),
        "merge_copy_MBps": round(total / copy_s / 1e6, 1),
        "cp_MBps": round(total / cp_s / 1e6, 1),
        "copy_throughput_vs_cp": round(cp_s / copy_s, 3),
        "total_throughput_vs_cp": round(cp_s / wall_s, 3),
        "peak_rss_MB_max": round(max(m["max_rss_kb"] for m in merges) / 1024, 1),
        "goals": {"throughput_vs_cp": 0.9, "peak_rss_MB": 100},
    }
    print(json.dumps(r, indent=2))
    results_io.save("merge_throughput", r,
        f"# Merge of a {total / 1e9:.2f} GB split set ({len(shards)} shards) vs `cp` of the same bytes, same disk, same run\n\n"
        "The copy phase (header + tensor data, fsync) is what `cp` + `sync` does; the total adds re-reading the merged\n"
        "header and the sha256 of the whole output, which `cp` does not do. Medians of 3 alternating rounds.\n\n"
        "| copy s | cp s | copy vs cp | total s (verify + sha256) | total vs cp | peak RSS | goals |\n|---|---|---|---|---|---|---|\n"
        f"| {r['merge_copy_seconds_median']} | {r['cp_seconds_median']} | {r['copy_throughput_vs_cp']}× | "
        f"{r['merge_total_seconds_median']} | {r['total_throughput_vs_cp']}× | {r['peak_rss_MB_max']} MB | ≥ 0.9×, ≤ 100 MB |\n")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory(dir=str(Path.home())) as d:
            main(Path(d))
