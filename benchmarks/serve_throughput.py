"""r1-runtime serve against a raw llama.cpp decode loop, on the same model, threads and context.

Baseline (in this process): llama-cpp-python's low-level API, B sequences in one
``llama_batch``, one ``llama_decode`` per step, greedy sampling, the same
context parameters as the server (ctx, n_seq_max = 8, K cache q4_0, no flash
attention).
Server: ``r1-runtime serve --parallel 8`` in a subprocess, B concurrent
streaming HTTP clients (SSE), greedy, ignore_eos, N tokens each.

The clients share the machine's CPUs with the server while the raw loop has
them to itself, so every CPU cycle a client spends per token is taken from the
decode threads and counted against the server. The clients are therefore lean
(a plain socket speaking HTTP/1.1, events split on blank lines: about 0.1 ms
of CPU per token on this VM, mostly the kernel's recv and wake-up; httpx's
``iter_lines`` took 0.4-0.5 ms), and the run reports their CPU per token next
to the server's event-loop CPU per token, so the share each side takes is
visible.

Figures:
- aggregate decode tokens/s at B = 1, 2, 4, 8 in steady state (the window in
  which every stream has started and none has finished; the raw loop's decode
  steps) and the ratio server / raw at the same B;
- time to first token for one request over HTTP against raw prompt evaluation
  (decode of the prompt plus the first sample).

At each B the raw loop and the server run back to back (the server idles
while the raw loop runs), ROUNDS rounds, alternating which goes first. The
machine's speed drifts between rounds by more than the effect measured (the raw
loop alone has spread 80-90 tok/s over five rounds on 2 shared CPUs), so the
ratio reported for each B is the median of the paired ratios, each taken from
one raw run and the server run next to it, with a 95% bootstrap interval; the
ratio of the two medians and the pairs' range are reported next to it. B=1,
whose goal is the tightest, gets --b1-pairs pairs per round.
Results: benchmarks/results/serve_throughput.{json,md}.

    .venv/bin/python benchmarks/serve_throughput.py [--threads 2] [--tokens 128] [--rounds 7] [--results NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import socket
import statistics
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import llama_cpp as L

import results_io  # benchmarks/ is on sys.path when a script runs

from r1_devtools.models import smollm2_path
from r1_devtools.serving import running_server

BS = (1, 2, 4, 8)
CTX = 4096
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
CONTENT = re.compile(rb'"delta":\s*\{"content":\s*"')  # a token's chunk, in r1-runtime's and llama-server's JSON


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
    """One streaming chat request over a plain socket: HTTP/1.1, SSE events split on blank lines."""
    body = json.dumps({"messages": PROMPT, "max_tokens": n, "temperature": 0, "ignore_eos": True,
                       "stream": True}).encode()
    u = urllib.parse.urlsplit(url)
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    sock = socket.create_connection((u.hostname, u.port), timeout=600)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stamps, seen, buf = [], b"", b""
    barrier.wait()
    cpu0 = time.thread_time()
    t_send = time.perf_counter()
    sock.sendall(request)
    while data := sock.recv(1 << 16):  # the server closes the connection after the last chunk
        now = time.perf_counter()
        if not seen:
            seen = data[:64]
        *events, buf = (buf + data).split(b"\n\n")
        stamps += [now for ev in events if CONTENT.search(ev)]  # the role chunk has no content key
    sock.close()
    assert seen.startswith(b"HTTP/1.1 200"), seen
    out.append((t_send, stamps, time.thread_time() - cpu0))


def thread_cpu_seconds(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def server_run(url: str, b: int, n: int, pid: int | None = None) -> dict:
    out: list = []
    barrier = threading.Barrier(b)
    threads = [threading.Thread(target=stream, args=(url, n, out, barrier)) for _ in range(b)]
    loop_cpu0 = thread_cpu_seconds(pid, pid) if pid else 0.0  # uvicorn's event loop is the main thread
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loop_cpu = thread_cpu_seconds(pid, pid) - loop_cpu0 if pid else 0.0
    assert all(len(s) == n for _, s, _ in out), [len(s) for _, s, _ in out]
    start = max(s[0] for _, s, _ in out)  # every stream has its first token
    end = min(s[-1] for _, s, _ in out)  # no stream has finished
    inside = sum(sum(1 for t in s if start < t <= end) for _, s, _ in out)
    tokens = b * n
    return {"tokens_per_second": inside / (end - start), "ttft_seconds": min(s[0] - t0 for t0, s, _ in out),
            "client_cpu_ms_per_token": 1000 * sum(c for _, _, c in out) / tokens,
            "server_loop_cpu_ms_per_token": 1000 * loop_cpu / tokens}


def median_ci(xs: list[float], n: int = 2000, seed: int = 7) -> tuple[float, float]:
    """95% bootstrap interval of the median (percentile method)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--b1-pairs", type=int, default=3, help="raw/server pairs at B=1 per round (its goal is the "
                    "tightest, so it gets the most samples)")
    ap.add_argument("--results", help="results name under benchmarks/results/ (default serve_throughput[_tN])")
    args = ap.parse_args()
    model = str(smollm2_path())

    from r1_runtime.server.generation import Runtime, ServeSettings
    from r1_runtime.server.engine import EngineSettings

    rt = Runtime(ServeSettings(engine=EngineSettings(model=model, ctx_size=CTX, threads=args.threads)))
    rt.load_model()
    prompt = rt.prompt.render_chat(PROMPT)  # the same prompt tokens the server builds for PROMPT
    assert rt.prompt.compiled_template is not None, "SmolLM2's chat template was not read"
    rt.engine.close()

    raw = {b: [] for b in BS}
    srv = {b: [] for b in BS}
    for rnd in range(args.rounds):
        with running_server(Path(model), "--parallel", "8", "--ctx-size", str(CTX), "--max-queue", "8",
                            threads=args.threads) as server:
            server_run(server.url, 1, 8)  # warm the HTTP path
            for b in BS:  # raw and server at each B back to back, so drift hits both alike; order alternates
                for rep in range(args.b1_pairs if b == 1 else 1):
                    runs = [lambda: raw[b].append(raw_loop(model, prompt, b, args.tokens, args.threads)),
                            lambda: srv[b].append(server_run(server.url, b, args.tokens, server.proc.pid))]
                    for run in runs if (rnd + rep) % 2 == 0 else runs[::-1]:
                        run()

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    rows = []
    for b in BS:
        r_tps, s_tps = med(raw[b], "tokens_per_second"), med(srv[b], "tokens_per_second")
        paired = [s["tokens_per_second"] / r["tokens_per_second"] for r, s in zip(raw[b], srv[b])]
        goal = 0.95 if b == 1 else 0.9
        lo, hi = median_ci(paired)
        rows.append({"concurrency": b, "raw_tokens_per_second": round(r_tps, 1),
                     "server_tokens_per_second": round(s_tps, 1), "ratio": round(statistics.median(paired), 3),
                     "ratio_of_medians": round(s_tps / r_tps, 3), "paired_ratios": [round(x, 3) for x in paired],
                     "ratio_ci95": [round(lo, 3), round(hi, 3)],
                     "goal": goal, "goal_met": statistics.median(paired) >= goal,
                     "server_loop_cpu_ms_per_token": round(med(srv[b], "server_loop_cpu_ms_per_token"), 3),
                     "client_cpu_ms_per_token": round(med(srv[b], "client_cpu_ms_per_token"), 3)})
    ttft = {"raw_prompt_eval_seconds": round(med(raw[1], "ttft_seconds"), 4),
            "server_ttft_seconds": round(med(srv[1], "ttft_seconds"), 4)}
    ttft["ratio"] = round(ttft["server_ttft_seconds"] / ttft["raw_prompt_eval_seconds"], 3)
    result = {"model": Path(model).name, "threads": args.threads, "tokens_per_stream": args.tokens,
              "prompt_tokens": len(prompt), "rounds": args.rounds, "cpus": os.cpu_count(),
              "machine": platform.machine(), "throughput": rows, "time_to_first_token": ttft,
              "raw_runs": {str(b): raw[b] for b in BS}, "server_runs": {str(b): srv[b] for b in BS}}
    name = args.results or "serve_throughput" + ("" if args.threads == 2 else f"_t{args.threads}")
    lines = [f"# r1-runtime serve vs raw llama_decode loop ({Path(model).name}, {args.threads} threads, "
             f"{os.cpu_count()} CPUs, {args.tokens} tokens/stream, {args.rounds} rounds)", "",
             "| concurrent streams | pairs | raw loop tok/s | server tok/s | ratio (median of pairs) | 95% CI "
             "| pairs' range | ratio of medians | goal | server event-loop CPU ms/token | client CPU ms/token |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {len(r['paired_ratios'])} | {r['raw_tokens_per_second']} | "
                     f"{r['server_tokens_per_second']} | **{r['ratio']}** | {r['ratio_ci95'][0]}-{r['ratio_ci95'][1]} | "
                     f"{min(r['paired_ratios'])}-{max(r['paired_ratios'])} | "
                     f"{r['ratio_of_medians']} | ≥ {r['goal']} {'met' if r['goal_met'] else 'NOT met'} | "
                     f"{r['server_loop_cpu_ms_per_token']} | {r['client_cpu_ms_per_token']} |")
    lines += ["", f"Time to first token, one request: raw prompt eval {ttft['raw_prompt_eval_seconds']} s, "
              f"server over HTTP {ttft['server_ttft_seconds']} s (ratio {ttft['ratio']}).", ""]
    results_io.save(name, result, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
