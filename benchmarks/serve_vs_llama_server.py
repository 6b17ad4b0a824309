"""r1-runtime serve against llama-server, built from the same llama.cpp source, on the same model, threads, ctx and
parallel slots, with the same client, in one run.

llama-server comes from hack/llama-server.sh: the llama.cpp that llama-cpp-python's sdist vendors (the runtime's
own llama.cpp), built once and cached. It is a reference here and nowhere else.

Both servers run side by side, each idle while the other is measured, with SmolLM2-135M, --threads T,
ctx CTX over PARALLEL slots (a slot holds CTX / PARALLEL tokens), K cache q4_0, V f16, flash attention off, the
model's own chat template (llama-server --jinja). Each round measures, each measure on both servers back to back
(the order alternating, so drift hits both alike):
- decode tokens/s: one stream, and the aggregate of 8 concurrent streams (greedy, ignore_eos, TOKENS each; the
  window in which every stream has started and none has finished), with serve_throughput's lean socket client;
- time to first token cold: the second turn of a ~1,500-token conversation with cache_prompt false, so the whole
  prompt is evaluated;
- time to first token of that second turn after the first turn was answered (cache_prompt on, each server's
  default): what a multi-turn chat waits for. Every round's conversation starts with a new line, so no round
  reuses another's cache.
The ratios are medians of per-round pairs. Goals: decode at 1 and 8 streams ≥ 0.95× llama-server's; the
second-turn TTFT ≤ 1.2× llama-server's and ≤ 0.2× our own cold TTFT of the same prompt.
Results: benchmarks/results/serve_vs_llama_server.{json,md}.

    .venv/bin/python benchmarks/serve_vs_llama_server.py [--threads 2] [--tokens 128] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

import httpx

import results_io  # benchmarks/ is on sys.path when a script runs
from serve_throughput import CONTENT, server_run

from r1_devtools.models import smollm2_path
from r1_devtools.serving import running_server
from r1_devtools.waiting import wait_for
from r1_operator.dev.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
CTX, PARALLEL = 16384, 8  # 2,048 tokens a slot: the conversation fits one
PARAGRAPH = ("The keeper of the northern light wrote each evening in a ledger: the wind's direction, the colour of "
             "the sea, the ships that passed and the hour the lamp was lit. ")


def conversation(tag: str, answer: str | None = None) -> list[dict]:
    """About 1,500 tokens of history; with the first turn's answer, the second turn's messages."""
    first = [{"role": "system", "content": f"Session {tag}. You answer briefly."},
             {"role": "user", "content": f"Read this log, entry {tag}:\n" + PARAGRAPH * 42 +
              "\nWhat does the keeper record?"}]
    if answer is None:
        return first
    return first + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And in one word?"}]


def first_token_seconds(url: str, messages: list[dict], cache_prompt: bool) -> float:
    """One streaming chat request over a plain socket: seconds from sending to the first token's chunk."""
    body = json.dumps({"messages": messages, "max_tokens": 4, "temperature": 0, "stream": True,
                       "cache_prompt": cache_prompt}).encode()
    u = urllib.parse.urlsplit(url)
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with socket.create_connection((u.hostname, u.port), timeout=600) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        sock.sendall(request)
        buf = b""
        while data := sock.recv(1 << 16):
            buf += data
            if CONTENT.search(buf):
                return time.perf_counter() - t0
    raise AssertionError(f"no token came back: {buf[:300]!r}")


def answer(url: str, messages: list[dict]) -> str:
    r = httpx.post(url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 24, "temperature": 0},
                   timeout=600)
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def prompt_tokens(url: str, messages: list[dict]) -> int:
    r = httpx.post(url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 1, "temperature": 0,
                                                       "cache_prompt": False}, timeout=600)
    r.raise_for_status()
    return r.json()["usage"]["prompt_tokens"]


@contextmanager
def llama_server(binary: str, model: Path, threads: int):
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
    cmd = [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
           "-tb", str(threads), "-c", str(CTX), "-np", str(PARALLEL), "-ctk", "q4_0", "-ctv", "f16", "-fa", "off",
           "--jinja"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            if proc.poll() is not None:
                raise AssertionError(f"llama-server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 120, "llama-server's /health")
        yield url, proc
    finally:
        proc.kill()
        proc.wait()


def second_turn(url: str, tag: str) -> dict:
    said = answer(url, conversation(tag))
    second = conversation(tag, said)
    warm = first_token_seconds(url, second, cache_prompt=True)
    return {"ttft_second_turn": warm, "ttft_cold": first_token_seconds(url, second, cache_prompt=False)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    binary = subprocess.run([str(ROOT / "hack" / "llama-server.sh")], check=True, capture_output=True,
                            text=True).stdout.strip()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True)
    model = smollm2_path()
    ours_args = ("--parallel", str(PARALLEL), "--ctx-size", str(CTX), "--max-queue", "8")
    runs: dict[str, list[dict]] = {"r1": [], "llama": []}
    with running_server(model, *ours_args, threads=args.threads) as ours, \
            llama_server(binary, model, args.threads) as (peer_url, peer_proc):
        servers = {"r1": (ours.url, ours.proc.pid), "llama": (peer_url, peer_proc.pid)}
        n_prompt = {name: prompt_tokens(url, conversation("count", "A ledger.")) for name, (url, _) in servers.items()}
        for url, pid in servers.values():
            server_run(url, 1, 8, pid)  # warm each HTTP path
        steps = [("decode_1", lambda url, pid, tag: {"decode_1": server_run(url, 1, args.tokens, pid)["tokens_per_second"]}),
                 ("decode_8", lambda url, pid, tag: {"decode_8": server_run(url, 8, args.tokens, pid)["tokens_per_second"]}),
                 ("ttft", lambda url, pid, tag: second_turn(url, tag))]
        for rnd in range(args.rounds):
            row = {"r1": {}, "llama": {}}
            for i, (_, step) in enumerate(steps):  # each measure back to back on both, the order alternating
                order = ["r1", "llama"] if (rnd + i) % 2 == 0 else ["llama", "r1"]
                for name in order:
                    url, pid = servers[name]
                    row[name].update(step(url, pid, f"{rnd}-{i}-{name}-{os.getpid()}"))
            for name in runs:
                runs[name].append(row[name])
                print(name, rnd, {k: round(v, 3) for k, v in row[name].items()}, flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    def pairs(key: str) -> list[float]:
        return [a[key] / b[key] for a, b in zip(runs["r1"], runs["llama"])]

    def paired(key: str) -> float:
        return statistics.median(pairs(key))

    own = statistics.median(r["ttft_second_turn"] / r["ttft_cold"] for r in runs["r1"])
    rows = [
        ("decode tokens/s, 1 stream", med("r1", "decode_1"), med("llama", "decode_1"), paired("decode_1"),
         "≥ 0.95×", paired("decode_1") >= 0.95),
        ("decode tokens/s, 8 streams (aggregate)", med("r1", "decode_8"), med("llama", "decode_8"),
         paired("decode_8"), "≥ 0.95×", paired("decode_8") >= 0.95),
        ("TTFT cold, s", med("r1", "ttft_cold"), med("llama", "ttft_cold"), paired("ttft_cold"), "-", None),
        ("TTFT second turn, s", med("r1", "ttft_second_turn"), med("llama", "ttft_second_turn"),
         paired("ttft_second_turn"), "≤ 1.2×", paired("ttft_second_turn") <= 1.2),
    ]
    result = {"model": model.name, "threads": args.threads, "ctx": CTX, "parallel": PARALLEL,
              "tokens_per_stream": args.tokens, "rounds": args.rounds, "cpus": os.cpu_count(),
              "llama_server_version": (version.stdout + version.stderr).strip().splitlines()[-2:],
              "second_turn_prompt_tokens": n_prompt,
              "rows": [{"measure": m, "r1_runtime": round(a, 4), "llama_server": round(b, 4), "ratio": round(r, 3),
                        "ratio_of_medians": round(a / b, 3), "goal": g, "met": ok} for m, a, b, r, g, ok in rows],
              "own_second_turn_vs_cold": round(own, 4), "own_goal": "≤ 0.2×", "own_met": own <= 0.2,
              "runs": runs}
    lines = [f"# r1-runtime serve vs llama-server (same llama.cpp source), {model.name}, {args.threads} threads, "
             f"{os.cpu_count()} CPUs, ctx {CTX} over {PARALLEL} slots, {args.rounds} rounds", "",
             f"The second turn's prompt: {n_prompt['r1']} tokens (llama-server counts {n_prompt['llama']}). Ratios "
             "are medians of per-round pairs (r1-runtime / llama-server).", "",
             "Each measure runs on both servers back to back, the order alternating; the machine's speed drifts "
             "between rounds, so the pairs' range and the ratio of the medians are shown too.", "",
             "| measure | r1-runtime (median) | llama-server (median) | ratio (median of pairs) | pairs' range "
             "| ratio of medians | goal |", "|---|---|---|---|---|---|---|"]
    keys = {"decode tokens/s, 1 stream": "decode_1", "decode tokens/s, 8 streams (aggregate)": "decode_8",
            "TTFT cold, s": "ttft_cold", "TTFT second turn, s": "ttft_second_turn"}
    for m, a, b, r, g, ok in rows:
        verdict = "" if ok is None else (" met" if ok else " NOT met")
        p = pairs(keys[m])
        lines.append(f"| {m} | {a:.4g} | {b:.4g} | **{r:.3f}×** | {min(p):.3f}-{max(p):.3f} | {a / b:.3f}× | "
                     f"{g}{verdict} |")
    lines += ["", f"r1-runtime's second-turn TTFT against its own cold TTFT of the same prompt: {own:.3f}× "
              f"(goal ≤ 0.2×{', met' if own <= 0.2 else ', NOT met'}).", ""]
    results_io.save("serve_vs_llama_server", result, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
