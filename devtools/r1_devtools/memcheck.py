"""The planner's memory model against the buffers llama.cpp allocates, model by model and setting by setting.

Used by tests/models/test_memory_validation.py (asserts the ratios) and
benchmarks/memory_validation.py (saves them).
"""

from __future__ import annotations

from pathlib import Path

from r1_devtools.models import smollm2_path
from r1_devtools.testmodel import PRESETS, ModelShape, write_test_model
from r1_operator.api.contract import CACHE_TYPES
from r1_operator.modelinfo.describe import describe_local
from r1_operator.planning.layout import device_layout
from r1_operator.planning.memory import RuntimeSettings, compute_buffer_bytes, kv_cache_bytes
from r1_runtime.llamalog import captured_log, parse_buffers

# The planner's default (the blog's: 8192 context, K q4_0, V f16, no flash attention) is the
# setting held to ±5%; the others are measured and reported.
DEFAULT = RuntimeSettings()
OTHERS = (RuntimeSettings(ctx_size=4096, cache_type_k="f16"), RuntimeSettings(ctx_size=4096, flash_attn=True))


def models(workdir: Path) -> dict[str, Path]:
    out = {
        "r1-tiny": write_test_model(workdir / "tiny" / "m.gguf")[0],
        "r1-tiny-split3": write_test_model(workdir / "split" / "m.gguf", n_shards=3)[0],
        "r1-small": write_test_model(workdir / "small" / "m.gguf", PRESETS["small"])[0],
        "r1-wide-heads": write_test_model(workdir / "heads" / "m.gguf", ModelShape(n_head=16, n_ff=2048))[0],
        "r1-mla": write_test_model(workdir / "mla" / "m.gguf", ModelShape(layout="mla"))[0],
        "smollm2-135m": smollm2_path(),
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
    # what the planner lays out on the CPU at --n-gpu-layers 0 (a tied output head counted once), not the file's sum
    cpu = device_layout(facts, s, 0, 0)[-1]
    predicted = {"weights": cpu.weights, "kv_cache": kv_cache_bytes(facts, s), "compute": compute_buffer_bytes(facts, s)}
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
