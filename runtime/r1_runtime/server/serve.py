"""`r1-runtime serve`: flags, start-up and graceful shutdown."""

from __future__ import annotations

import argparse
import json
import os

from r1_runtime.server.engine import CACHE_TYPES, EngineSettings

DEFAULT_MAX_TOKENS_CAP = 4096


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve a GGUF model over an OpenAI-compatible API with continuous batching and /metrics",
        description="Load a GGUF (a merged file or shard 1 of a split set) with llama.cpp and serve /v1/chat/completions, "
        "/v1/completions, /v1/models, /health, /ready and /metrics. --ctx-size is the whole KV cache; each of "
        "--parallel sequences gets ctx-size/parallel tokens, as in llama-server.")
    p.add_argument("--model", required=True, help="GGUF file (merged, or NAME-00001-of-0000N.gguf), or a cache "
                   "directory filled by `r1-runtime fetch` (its .r1-fetch.json names the model)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--alias", help="model id reported by /v1/models (default: the file name)")
    p.add_argument("--variant", default="", help="variant name for the info metric, e.g. UD-IQ1_S")
    g = p.add_argument_group("placement and memory (as planned by the operator)")
    g.add_argument("--n-gpu-layers", type=int, default=0)
    g.add_argument("--tensor-split", help="comma-separated proportions per GPU, e.g. 1,1")
    g.add_argument("--ctx-size", type=int, default=8192)
    g.add_argument("--cache-type-k", default="q4_0", choices=sorted(CACHE_TYPES))
    g.add_argument("--cache-type-v", default="f16", choices=sorted(CACHE_TYPES), help="a type other than f16 needs --flash-attn")
    g.add_argument("--flash-attn", action="store_true")
    g.add_argument("--threads", type=int, default=0, help="CPU threads (default: llama.cpp's choice)")
    g.add_argument("--parallel", type=int, default=1, help="sequences decoded together (slots)")
    g.add_argument("--n-batch", type=int, default=512)
    g.add_argument("--no-mmap", action="store_true")
    g.add_argument("--seed", type=int, default=3407, help="default sampling seed")
    s = p.add_argument_group("sampling defaults (requests may override)")
    s.add_argument("--temperature", type=float, default=0.6)
    s.add_argument("--min-p", type=float, default=0.05)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--reasoning-format", choices=["auto", "deepseek", "none"], default="auto",
                   help="deepseek: return <think> text as reasoning_content (auto: when the chat template is R1's)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-queue", type=int, default=16, help="requests waiting for a slot before 429")
    lim.add_argument("--max-tokens-cap", type=int, default=DEFAULT_MAX_TOKENS_CAP, help="upper bound on max_tokens")
    lim.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request")
    lim.add_argument("--shutdown-grace", type=float, default=60.0, help="seconds to finish in-flight requests on SIGTERM")
    lim.add_argument("--api-key-env", default="R1_API_KEY", help="env var holding the bearer API key (unset: no key)")
    d = p.add_argument_group("degenerate output")
    d.add_argument("--stop-on-loop", action="store_true", help="stop looping generations (finish_reason 'repetition')")
    d.add_argument("--canary", action="store_true", help="at start-up, fail readiness if a fixed prompt's output loops")
    d.add_argument("--canary-seed", type=int, default=3407)
    d.add_argument("--canary-tokens", type=int, default=256)


def resolve_model(path: str) -> str:
    """A GGUF file, or a cache directory written by `r1-runtime fetch` (its manifest names the model)."""
    if os.path.isdir(path):
        manifest = os.path.join(path, ".r1-fetch.json")
        if not os.path.isfile(manifest):
            raise ValueError(f"--model {path}: a directory without .r1-fetch.json; the fetch into this cache volume "
                             f"has not completed (run `r1-runtime fetch --dest {path}` or wait for the cache Job)")
        with open(manifest) as f:
            rel = json.load(f).get("model")
        if not rel:
            raise ValueError(f"--model {path}: {manifest} names no model; rerun `r1-runtime fetch` on this volume")
        path = os.path.join(path, rel)
    if not os.path.isfile(path):
        raise ValueError(f"--model {path}: no such file; is the cache volume mounted and the fetch complete?")
    return path


def settings_from_args(args: argparse.Namespace):
    from r1_runtime.server.app import ServeSettings

    args.model = resolve_model(args.model)
    if args.cache_type_v != "f16" and not args.flash_attn:
        raise ValueError(f"--cache-type-v {args.cache_type_v} needs --flash-attn (llama.cpp quantizes V only with flash attention)")
    if args.parallel < 1 or args.ctx_size // args.parallel < 64:
        raise ValueError(f"--ctx-size {args.ctx_size} / --parallel {args.parallel} leaves under 64 tokens per sequence")
    split = [float(x) for x in args.tensor_split.split(",")] if args.tensor_split else None
    eng = EngineSettings(model=args.model, n_gpu_layers=args.n_gpu_layers, tensor_split=split, ctx_size=args.ctx_size,
                         cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v, flash_attn=args.flash_attn,
                         threads=args.threads, parallel=args.parallel, n_batch=args.n_batch, seed=args.seed,
                         max_queue=args.max_queue, use_mmap=not args.no_mmap)
    return ServeSettings(engine=eng, alias=args.alias or "", variant=args.variant, api_key_env=args.api_key_env,
                         max_tokens_cap=args.max_tokens_cap, request_timeout=args.request_timeout,
                         temperature=args.temperature, min_p=args.min_p, top_p=args.top_p, top_k=args.top_k,
                         stop_on_loop=args.stop_on_loop, canary=args.canary, canary_seed=args.canary_seed,
                         canary_tokens=args.canary_tokens, reasoning_format=args.reasoning_format)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from r1_runtime import llamalog
    from r1_runtime.server.app import Runtime, create_app

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
    rt.start_loading()
    print(f"r1-runtime serve: listening on {args.host}:{args.port}, loading {args.model}", flush=True)
    server.run()
    rt.engine.close()
    print("r1-runtime serve: stopped", flush=True)
    return 0
