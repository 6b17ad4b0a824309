"""r1-runtime serve against a raw llama.cpp decode loop, on the same model, threads and context.

Baseline (in this process): llama-cpp-python's low-level API, B sequences in one
``llama_batch``, one ``llama_decode`` per step, greedy sampling, the same
context parameters as the server (ctx, n_seq_max = 8, K cache q4_0, no flash
attention).
Server: ``r1-runtime serve --parallel 8`` in a subprocess, B concurrent
streaming HTTP clients (httpx, SSE), greedy, ignore_eos, N tokens each.

Figures:
- aggregate decode tokens/s at B = 1, 2, 4, 8 in steady state (the window in
  which every stream has started and none has finished; the raw loop's decode
  steps) and the ratio server / raw at the same B;
- time to first token for one request over HTTP against raw prompt evaluation
  (decode of the prompt plus the first sample).

At each B the raw loop and the server run back to back (the server idles
while the raw loop runs), ROUNDS rounds; medians are reported.
Results: benchmarks/results/serve_throughput.{json,md}.

    .venv/bin/python benchmarks/serve_throughput.py [--threads 2] [--tokens 128] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import llama_cpp as L

import results_io  # benchmarks/ is on sys.path when a script runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import smollm2_path  # noqa: E402
from serving import running_server  # noqa: E402

BS = (1, 2, 4, 8)
CTX = 4096
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def raw_loop(model_path: str, prompt: list[int], b: int, n: int, threads: int) -> dict:
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(model_path.encode(), mp)
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.kv_unified = CTX, 512, 512, 8, False
    cp.type_k, cp.type_v = L.GGML_TYPE_Q4_0, L.GGML_TYPE_F16
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # the server's default (no --flash-attn)
    cp.n_threads = cp.n_threads_batch = threads
    cp.no_perf = True
    ctx = L.llama_init_from_model(model, cp)
    batch = L.llama_batch_init(512, 0, 1)
    samplers = [L.llama_sampler_chain_init(L.llama_sampler_chain_default_params()) for _ in range(b)]
    for s in samplers:
        L.llama_sampler_chain_add(s, L.llama_sampler_init_greedy())

    def prompt_eval(seq: int) -> int:
        for i, t in enumerate(prompt):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, i, 1, i == len(prompt) - 1
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(prompt)
        assert L.llama_decode(ctx, batch) == 0
        return L.llama_sampler_sample(samplers[seq], ctx, len(prompt) - 1)

    t0 = time.perf_counter()
    last = [prompt_eval(0)]
    ttft = time.perf_counter() - t0
    last += [prompt_eval(s) for s in range(1, b)]
    pos = len(prompt)
    t0 = time.perf_counter()
    for _ in range(n - 1):
        for s in range(b):
            batch.token[s], batch.pos[s], batch.n_seq_id[s], batch.logits[s] = last[s], pos, 1, True
            batch.seq_id[s][0] = s
        batch.n_tokens = b
        assert L.llama_decode(ctx, batch) == 0
        last = [L.llama_sampler_sample(samplers[s], ctx, s) for s in range(b)]
        pos += 1
    dt = time.perf_counter() - t0
    for s in samplers:
        L.llama_sampler_free(s)
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return {"tokens_per_second": b * (n - 1) / dt, "ttft_seconds": ttft}


def stream(url: str, n: int, out: list, barrier: threading.Barrier) -> None:
    body = {"messages": PROMPT, "max_tokens": n, "temperature": 0, "ignore_eos": True, "stream": True}
    stamps = []
    barrier.wait()
    t_send = time.perf_counter()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"delta": {"content"' in line:
                stamps.append(time.perf_counter())
    out.append((t_send, stamps))


def server_run(url: str, b: int, n: int) -> dict:
    out: list = []
    barrier = threading.Barrier(b)
    threads = [threading.Thread(target=stream, args=(url, n, out, barrier)) for _ in range(b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(s) == n for _, s in out), [len(s) for _, s in out]
    start = max(s[0] for _, s in out)  # every stream has its first token
    end = min(s[-1] for _, s in out)  # no stream has finished
    inside = sum(sum(1 for t in s if start < t <= end) for _, s in out)
    return {"tokens_per_second": inside / (end - start), "ttft_seconds": min(s[0] - t0 for t0, s in out)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    model = str(smollm2_path())

    from r1_runtime.server.app import Runtime, ServeSettings
    from r1_runtime.server.engine import EngineSettings

    rt = Runtime(ServeSettings(engine=EngineSettings(model=model, ctx_size=CTX, threads=args.threads)))
    rt.load_model()
    prompt = rt.render_chat(PROMPT)  # the same prompt tokens the server builds for PROMPT
    assert rt.state.compiled_template is not None, "SmolLM2's chat template was not read"
    rt.engine.close()

    raw = {b: [] for b in BS}
    srv = {b: [] for b in BS}
    for _ in range(args.rounds):
        with running_server(Path(model), "--parallel", "8", "--ctx-size", str(CTX), "--max-queue", "8",
                            threads=args.threads) as server:
            server_run(server.url, 1, 8)  # warm the HTTP path
            for b in BS:  # raw then server at each B, back to back, so drift hits both alike
                raw[b].append(raw_loop(model, prompt, b, args.tokens, args.threads))
                srv[b].append(server_run(server.url, b, args.tokens))

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    rows = []
    for b in BS:
        r_tps, s_tps = med(raw[b], "tokens_per_second"), med(srv[b], "tokens_per_second")
        rows.append({"concurrency": b, "raw_tokens_per_second": round(r_tps, 1),
                     "server_tokens_per_second": round(s_tps, 1), "ratio": round(s_tps / r_tps, 3),
                     "goal": 0.95 if b == 1 else 0.9})
    ttft = {"raw_prompt_eval_seconds": round(med(raw[1], "ttft_seconds"), 4),
            "server_ttft_seconds": round(med(srv[1], "ttft_seconds"), 4)}
    ttft["ratio"] = round(ttft["server_ttft_seconds"] / ttft["raw_prompt_eval_seconds"], 3)
    result = {"model": Path(model).name, "threads": args.threads, "tokens_per_stream": args.tokens,
              "prompt_tokens": len(prompt), "rounds": args.rounds, "cpus": os.cpu_count(),
              "machine": platform.machine(), "throughput": rows, "time_to_first_token": ttft,
              "raw_runs": {str(b): raw[b] for b in BS}, "server_runs": {str(b): srv[b] for b in BS}}
    tag = "" if args.threads == 2 else f"_t{args.threads}"
    lines = [f"# r1-runtime serve vs raw llama_decode loop ({Path(model).name}, {args.threads} threads, "
             f"{os.cpu_count()} CPUs, {args.tokens} tokens/stream, median of {args.rounds})", "",
             "| concurrent streams | raw loop tok/s | server tok/s | ratio | goal |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['raw_tokens_per_second']} | {r['server_tokens_per_second']} | "
                     f"{r['ratio']} | ≥ {r['goal']} |")
    lines += ["", f"Time to first token, one request: raw prompt eval {ttft['raw_prompt_eval_seconds']} s, "
              f"server over HTTP {ttft['server_ttft_seconds']} s (ratio {ttft['ratio']}).", ""]
    results_io.save(f"serve_throughput{tag}", result, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
