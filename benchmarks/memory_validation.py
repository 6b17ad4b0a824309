"""Planner memory model against what llama.cpp allocates.

For each model (miniature R1 shapes written by `r1-dev make-test-model`,
split and not, MLA, and SmolLM2 from PyPI) and each setting, load it with
llama-cpp-python, read the buffer sizes from llama.cpp's log, and compare them
with planning.memory's prediction. Writes benchmarks/results/memory_validation.{json,md}.

    .venv/bin/python benchmarks/memory_validation.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import results_io  # benchmarks/ is on sys.path when a script runs

from r1_devtools.memcheck import run

def save(rows: list[dict]) -> None:
    lines = ["# Planner memory model vs llama.cpp buffers (predicted / actual)", "",
             "CPU build of llama-cpp-python 0.3.36, n_ubatch 512. Rows marked * are the planner's default settings, held to ±5%.", "",
             "| model | ctx | K/V | flash attn | weights | KV cache | compute |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["settings"]
        lines.append(f"| {r['model']}{' *' if r['default'] else ''} | {s['ctx_size']} | {s['cache_type_k']}/{s['cache_type_v']} | "
                     f"{'on' if s['flash_attn'] else 'off'} | {r['ratio']['weights']:.3f} | {r['ratio']['kv_cache']:.3f} | "
                     f"{r['ratio']['compute']:.3f} |")
    results_io.save("memory_validation", rows, "\n".join(lines))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        save(run(Path(d)))
    sys.exit(0)
