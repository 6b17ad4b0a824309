"""Prefix caching: the second turn of a ~1,500-token conversation, with the slot's cache and without it.

What the user waits for in a multi-turn chat is the time to the first token of each new turn: the client sends
the whole history again. With the cache (the default, llama-server's cache_prompt) the runtime finds the history
in the slot the first turn left and evaluates only the new message; with ``cache_prompt: false`` it evaluates the
whole prompt, as the runtime did before it had the cache. Both run on one server, the same prompt, in one round,
the order alternating each round; each round opens a new conversation (its own system prompt), so no round
reuses another's cache. Figures are medians over the rounds, and the per-round ratios are listed.

Results: benchmarks/results/prefix_cache.{json,md}.

    .venv/bin/python benchmarks/prefix_cache.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import results_io  # benchmarks/ is on sys.path when a script runs

from r1_devtools.models import smollm2_path
from r1_devtools.serving import running_server

FILLER = ("The archive keeps the ship's logs, the harbour charts and the letters of the crew, each filed by "
          "year and by port. ")


def ttft(client, messages, cache: bool, max_tokens: int = 16) -> tuple[float, float, int, int]:
    """(seconds to the first content token, seconds to the last, prompt tokens, cached tokens)."""
    start = time.perf_counter()
    first = None
    usage = None
    stream = client.chat.completions.create(model="r1-test", messages=messages, max_tokens=max_tokens,
                                            temperature=0, stream=True, stream_options={"include_usage": True},
                                            extra_body={"cache_prompt": cache})
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage:
            usage = chunk.usage
    total = time.perf_counter() - start
    return first if first is not None else total, total, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--filler", type=int, default=62, help="filler sentences in the system prompt (~1,400 tokens)")
    args = ap.parse_args()
    extra = ["--threads", str(args.threads)] if args.threads else []
    rows = []
    with running_server(smollm2_path(), "--parallel", "2", "--ctx-size", "8192", *extra) as s:
        client = s.openai()
        for r in range(args.rounds):
            system = f"Conversation {r}. You answer questions about the archive. " + FILLER * args.filler
            turn1 = [{"role": "system", "content": system}, {"role": "user", "content": "What does it keep?"}]
            first = client.chat.completions.create(model="r1-test", messages=turn1, max_tokens=64, temperature=0)
            turn2 = turn1 + [{"role": "assistant", "content": first.choices[0].message.content},
                             {"role": "user", "content": "How is it filed?"}]
            order = (True, False) if r % 2 == 0 else (False, True)
            got = {}
            for cache in order:
                got[cache] = ttft(client, turn2, cache)
            (c_ttft, c_total, n_prompt, n_cached), (f_ttft, f_total, _, f_cached) = got[True], got[False]
            assert f_cached == 0 and n_cached > 0, (f_cached, n_cached)
            rows.append({"round": r, "prompt_tokens": n_prompt, "cached_tokens": n_cached,
                         "cached_ttft_s": c_ttft, "cold_ttft_s": f_ttft, "cached_total_s": c_total,
                         "cold_total_s": f_total, "ttft_ratio": c_ttft / f_ttft, "first": "cached" if order[0]
                         else "cold"})
            print(rows[-1], flush=True)
    med = lambda k: statistics.median(x[k] for x in rows)  # noqa: E731
    summary = {"prompt_tokens": med("prompt_tokens"), "cached_tokens": med("cached_tokens"),
               "cached_ttft_s": med("cached_ttft_s"), "cold_ttft_s": med("cold_ttft_s"),
               "cached_total_s": med("cached_total_s"), "cold_total_s": med("cold_total_s"),
               "ttft_ratio": med("ttft_ratio")}
    data = {"model": "SmolLM2-135M-Instruct (PyPI)", "parallel": 2, "ctx_size": 8192, "threads": args.threads or "auto",
            "max_tokens": 16, "rounds": rows, "median": summary, "cpus": os.cpu_count(),
            "machine": platform.machine(), "goal": "second-turn TTFT <= 0.2x the same prompt evaluated cold"}
    lines = [
        "# Prefix caching: second-turn time to first token, with the slot's cache and without it",
        "",
        f"SmolLM2-135M, `--parallel 2 --ctx-size 8192`, {os.cpu_count()} CPUs; the second turn of a conversation of "
        f"~{summary['prompt_tokens']:.0f} prompt tokens, streamed, 16 tokens; medians of {len(rows)} rounds, the "
        "order alternating. Cold is the same request with `cache_prompt: false` on the same server.",
        "Per-round TTFT ratios (cached / cold): " + ", ".join(f"{x['ttft_ratio']:.3f}" for x in rows) + ".",
        "",
        "| prompt tokens | cached tokens | TTFT cached | TTFT cold | cached / cold | whole request cached | "
        "whole request cold | goal |",
        "|---|---|---|---|---|---|---|---|",
        f"| {summary['prompt_tokens']:.0f} | {summary['cached_tokens']:.0f} | {summary['cached_ttft_s'] * 1000:.1f} ms "
        f"| {summary['cold_ttft_s'] * 1000:.1f} ms | {summary['ttft_ratio']:.3f}× | {summary['cached_total_s']:.3f} s "
        f"| {summary['cold_total_s']:.3f} s | ≤ 0.2× |",
    ]
    results_io.save("prefix_cache", data, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
