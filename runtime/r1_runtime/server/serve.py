"""`r1-runtime serve`: flags, start-up and graceful shutdown."""

from __future__ import annotations

import argparse
import json
import math
import os
import threading

from r1_operator.api import contract


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve a GGUF model over an OpenAI-compatible API with continuous batching and /metrics",
        description="Load a GGUF (a merged file or shard 1 of a split set) with llama.cpp and serve /v1/chat/completions, "
        "/v1/completions, /v1/models, /health, /ready and /metrics. --ctx-size is the whole KV cache; each of "
        "--parallel sequences gets ctx-size/parallel tokens, as in llama-server.")
    contract.add_arguments(p, contract.SERVE_FLAGS)


def resolve_model(path: str) -> str:
    """A GGUF file, or a cache directory written by `r1-runtime fetch` (its manifest names the model)."""
    if os.path.isdir(path):
        manifest = os.path.join(path, contract.MANIFEST_FILE)
        if not os.path.isfile(manifest):
            raise ValueError(f"--model {path}: a directory without {contract.MANIFEST_FILE}; the fetch into this cache volume "
                             f"has not completed (run `r1-runtime fetch --dest {path}` or wait for the cache Job)")
        with open(manifest) as f:
            rel = json.load(f).get("model")
        if not rel:
            raise ValueError(f"--model {path}: {manifest} names no model; rerun `r1-runtime fetch` on this volume")
        path = os.path.join(path, rel)
    if not os.path.isfile(path):
        raise ValueError(f"--model {path}: no such file; is the cache volume mounted and the fetch complete?")
    return path


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (v2 cpu.max or v1 cfs)."""
    cpus = len(os.sched_getaffinity(0))
    quota = None
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            q, period = f.read().split()
            quota = None if q == "max" else int(q) / int(period)
    except (OSError, ValueError):
        try:
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as g:
                q, period = int(f.read()), int(g.read())
                quota = q / period if q > 0 else None
        except (OSError, ValueError):
            pass
    return max(1, min(cpus, math.ceil(quota)) if quota else cpus)


def settings_from_args(args: argparse.Namespace):
    from r1_runtime.server.generation import ServeSettings
    from r1_runtime.server.engine import EngineSettings

    args.model = resolve_model(args.model)
    problems = contract.inference_problems(args.ctx_size, args.parallel, args.cache_type_v, args.flash_attn)
    if problems:
        raise ValueError("; ".join(problems))
    try:
        split = [float(x) for x in args.tensor_split.split(",")] if args.tensor_split else None
    except ValueError:
        raise ValueError(f"--tensor-split {args.tensor_split!r}: expected comma-separated numbers, e.g. 1,1") from None
    try:
        planned = json.loads(args.planned_memory) if args.planned_memory else {}
    except ValueError:
        planned = None
    if not isinstance(planned, dict):
        raise ValueError(f"--planned-memory {args.planned_memory!r}: expected a JSON object of devices, e.g. "
                         '{"cpu": {"weights": 1000, "kv_cache": 10, "compute": 5}}')
    if args.metrics_port and args.metrics_port == args.port:
        raise ValueError(f"--metrics-port {args.metrics_port} is --port; give another port, or 0 for none")
    if split is not None and (any(x < 0 for x in split) or not any(split)):
        raise ValueError(f"--tensor-split {args.tensor_split!r}: proportions must be >= 0 and not all 0")
    eng = EngineSettings(model=args.model, n_gpu_layers=args.n_gpu_layers, tensor_split=split, ctx_size=args.ctx_size,
                         cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v, flash_attn=args.flash_attn,
                         threads=args.threads or available_cpus(), parallel=args.parallel, n_batch=args.n_batch,
                         seed=args.seed, max_queue=args.max_queue, use_mmap=not args.no_mmap)
    return ServeSettings(engine=eng, alias=args.alias or "", variant=args.variant, api_key_env=args.api_key_env,
                         max_tokens_cap=args.max_tokens_cap, request_timeout=args.request_timeout,
                         max_request_bytes=args.max_request_bytes, max_messages=args.max_messages,
                         temperature=args.temperature, min_p=args.min_p, top_p=args.top_p, top_k=args.top_k,
                         stop_on_loop=args.stop_on_loop, canary=args.canary, canary_seed=args.canary_seed,
                         canary_tokens=args.canary_tokens, reasoning_format=args.reasoning_format,
                         planned_memory=planned, termination_log=args.termination_log,
                         gpu_devices=args.gpu_devices, dev_simulated_gpus=args.dev_simulated_gpus,
                         dev_simulated_gpu_free_bytes=args.dev_simulated_gpu_free_bytes,
                         dev_simulated_host_bytes=args.dev_simulated_host_bytes, slots=args.slots)


def serve_metrics(host: str, port: int, render) -> None:
    """GET /metrics alone on its own port, in a daemon thread: the same text exposition (format 0.0.4) as /metrics
    on the API port, whatever the scraper asks for, so the series names (`llamacpp:*`) are the same on both."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served on this port")
                return
            body = render()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # scrapes are not logged
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from r1_runtime import llamalog
    from r1_runtime.server.app import create_app
    from r1_runtime.server.generation import Runtime

    settings = settings_from_args(args)
    llamalog.install(echo_level=3)  # UTF-8-safe callback; warnings and errors to stderr
    rt = Runtime(settings)
    app = create_app(rt)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM/SIGINT: stop accepting, drain, then exit
            if rt.state.phase != "draining":
                print(f"r1-runtime serve: signal {sig}: draining {rt.engine.busy()} running and "
                      f"{rt.engine.queued()} queued requests (grace {args.shutdown_grace:g}s)", flush=True)
            rt.state.phase, rt.state.reason = "draining", "shutting down"
            rt.metrics.ready.set(0)
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # a finished drain exits 0 rather than re-raising the signal

    # uvloop and httptools by name, not "auto": without them each streamed token costs more event-loop CPU,
    # taken from the decode threads, so a missing package must fail here rather than run slow.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=args.shutdown_grace, lifespan="off",
                            loop="uvloop", http="httptools")
    server = Server(config)
    if args.metrics_port:
        serve_metrics(args.host, args.metrics_port, rt.metrics.render)
        print(f"r1-runtime serve: /metrics also on {args.host}:{args.metrics_port}", flush=True)
    rt.start_loading()
    print(f"r1-runtime serve: listening on {args.host}:{args.port}, loading {args.model}", flush=True)
    server.run()
    rt.engine.close()
    print("r1-runtime serve: stopped", flush=True)
    return 0
