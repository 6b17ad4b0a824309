"""Generation: loading and warm-up (canary), then each request's life from queue to finish, as events."""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from r1_operator.api.contract import SAMPLING_DEFAULTS, SERVE_FLAGS, Exit
from r1_runtime import __version__
from r1_runtime.llamalog import classify_load_failure
from r1_runtime.server.engine import Engine, EngineSettings, Job, LoadOutOfMemory, Sampling
from r1_runtime.server.metrics import Metrics
from r1_runtime.server.prompt import Prompter
from r1_runtime.server.schemas import CommonRequest
from r1_runtime.server.textproc import StopMatcher, ThinkSplitter
from r1_runtime.server.tools import CallStream, ToolRequest

CANARY_PROMPT = "Write a short paragraph about why the sky is blue."
OUTCOME = {"stop": "success", "tool_calls": "success", "function_call": "success", "length": "length",
           "cancelled": "cancelled", "timeout": "timeout", "repetition": "degenerate", "error": "error"}


@dataclass
class ServeSettings:
    engine: EngineSettings
    alias: str = ""
    variant: str = ""
    api_key_env: str = SERVE_FLAGS["api_key_env"].default
    max_tokens_cap: int = SERVE_FLAGS["max_tokens_cap"].default
    max_request_bytes: int = SERVE_FLAGS["max_request_bytes"].default
    max_messages: int = SERVE_FLAGS["max_messages"].default
    request_timeout: float = SERVE_FLAGS["request_timeout"].default
    temperature: float = SAMPLING_DEFAULTS["temperature"]
    min_p: float = SAMPLING_DEFAULTS["min_p"]
    top_p: float = SAMPLING_DEFAULTS["top_p"]
    top_k: int = SAMPLING_DEFAULTS["top_k"]
    stop_on_loop: bool = False
    canary: bool = False
    canary_seed: int = SAMPLING_DEFAULTS["seed"]
    canary_tokens: int = SERVE_FLAGS["canary_tokens"].default
    reasoning_format: str = SERVE_FLAGS["reasoning_format"].default  # auto | deepseek | none
    planned_memory: dict = field(default_factory=dict)  # the plan's bytes per device and kind (--planned-memory)
    gpu_devices: int = 0  # GPUs the plan gives the runtime; fewer seen by llama.cpp: exit GPU_UNAVAILABLE
    dev_simulated_gpus: bool = False  # DEV ONLY: the node's GPUs are simulated, gpu_devices is not checked
    dev_simulated_gpu_free_bytes: int = 0  # DEV ONLY, a mock of a GPU (r1_runtime.devgpu); 0: off
    dev_simulated_host_bytes: int = 0  # DEV ONLY, host memory a real model would hold (r1_runtime.devgpu); 0: off
    termination_log: str = SERVE_FLAGS["termination_log"].default
    slots: bool = SERVE_FLAGS["slots"].default  # GET /slots


@dataclass
class State:
    phase: str = "loading"  # loading, warming, ready, canary-failed, failed, draining
    reason: str = ""
    recent: list[float] = field(default_factory=list)  # recent request durations, for Retry-After



class GpuUnavailable(Exception):
    def __init__(self, message: dict) -> None:
        super().__init__(message["cause"])
        self.message = message


class Runtime:
    """Everything a request handler needs: engine, metrics, settings and state."""

    def __init__(self, s: ServeSettings, metrics: Metrics | None = None):
        self.s = s
        self.metrics = metrics or Metrics()
        self.engine = Engine(s.engine, self.metrics)
        self.engine.after_step = self._flush
        self._lock = threading.Lock()
        self._pending: list = []
        self._ballast = b""  # DEV ONLY (--dev-simulated-host-bytes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state = State()
        self.model_id = s.alias or os.path.basename(s.engine.model)
        self.fingerprint = fingerprint(s)
        self.api_key = (os.environ.get(s.api_key_env) or None) if s.api_key_env else None

    # ---- start-up ------------------------------------------------------------------------
    def start_loading(self) -> threading.Thread:
        t = threading.Thread(target=self._load, name="model-load", daemon=True)
        t.start()
        return t

    def _load(self) -> None:
        try:
            self.load_model()
        except LoadOutOfMemory as exc:  # the operator re-plans from this: say it and exit with its own code
            self.out_of_memory(exc)
            return
        except GpuUnavailable as exc:  # no re-plan can help: the operator says what to fix
            self.gpu_unavailable(exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - reported through /ready and the log
            self.state.phase, self.state.reason = "failed", str(exc)
            print(f"r1-runtime serve: model load failed: {exc}", flush=True)
            return
        e = self.engine
        e.start()
        print(f"r1-runtime serve: loaded {self.s.engine.model} in {e.load_seconds:.1f}s "
              f"(ctx {self.s.engine.ctx_size}, {e.n_ctx_slot} per slot x {self.s.engine.parallel})", flush=True)
        print(f"r1-runtime serve: llama.cpp {describe_report(e.report)}", flush=True)
        self.state.phase = "warming"
        try:
            self._warm_up()
        except Exception as exc:  # noqa: BLE001
            self.state.phase, self.state.reason = "failed", f"warm-up failed: {exc}"
            return
        self.state.phase = "ready"
        self.metrics.ready.set(1)

    def out_of_memory(self, exc: LoadOutOfMemory) -> None:
        """Print the classified failure, write it as the termination message, and exit OUT_OF_MEMORY."""
        f = exc.failure
        planned = (self.s.planned_memory.get(f.plan_device()) or {}).get(f.kind)
        message = {"reason": "OutOfMemory", "what": f.what, "device": f.device, "planDevice": f.plan_device(),
                   "requestedBytes": f.bytes, "plannedBytes": planned, "freeBytes": f.free, "line": f.line[:300]}
        said = f"; the plan predicted {planned / (1 << 20):.1f} MiB of {f.what} on {f.plan_device()}" if planned else ""
        print(f"r1-runtime serve: {exc}{said}", flush=True)
        self._terminate(message, Exit.OUT_OF_MEMORY, str(exc))

    def gpu_unavailable(self, message: dict) -> None:
        """Print why the planned GPUs are not there, write it as the termination message, exit GPU_UNAVAILABLE."""
        print(f"r1-runtime serve: {message['cause']} (--gpu-devices {message['wanted']}, --n-gpu-layers "
              f"{message['nGpuLayers']}); not loading", flush=True)
        self._terminate(message, Exit.GPU_UNAVAILABLE, message["cause"])

    def _terminate(self, message: dict, code: int, reason: str) -> None:
        if os.path.exists(self.s.termination_log):
            try:
                with open(self.s.termination_log, "w") as out:
                    out.write(json.dumps(message))
            except OSError:
                pass
        self.state.phase, self.state.reason = "failed", reason
        os._exit(code)

    def load_model(self) -> None:
        """Load the model and read what prompts need from it (template, BOS/EOS text); starts no thread."""
        if not self.s.dev_simulated_gpus:  # DEV ONLY when set: simulated GPUs are never seen by llama.cpp
            from r1_runtime.gpucheck import missing_gpus

            missing = missing_gpus(self.s.gpu_devices, self.s.engine.n_gpu_layers)
            if missing is not None:
                raise GpuUnavailable(missing)
        if self.s.dev_simulated_gpu_free_bytes:  # DEV ONLY: a mock of a GPU with this many bytes free
            from r1_runtime.devgpu import simulated_failure_log

            log = simulated_failure_log(self.s.planned_memory, self.s.dev_simulated_gpu_free_bytes,
                                        self.s.engine.n_gpu_layers)
            if log is not None:
                print(log, end="", flush=True)
                raise LoadOutOfMemory(classify_load_failure(log), "a simulated GPU (--dev-simulated-gpu-free-bytes "
                                      f"{self.s.dev_simulated_gpu_free_bytes})")
        if self.s.dev_simulated_host_bytes:  # DEV ONLY: what a real model's load would hold on the host
            from r1_runtime.devgpu import host_ballast

            self._ballast = host_ballast(self.s.dev_simulated_host_bytes)
        self.engine.load()
        e = self.engine
        self.metrics.load_seconds.set(e.load_seconds)
        self.metrics.loaded(e.report)
        self.metrics.slots.set(self.s.engine.parallel)
        self.prompt = Prompter.from_engine(e, self.s.reasoning_format)
        self.metrics.info.info({
            "model": self.model_id, "variant": self.s.variant or "unknown",
            "n_gpu_layers": str(self.s.engine.n_gpu_layers), "ctx": str(self.s.engine.ctx_size),
            "parallel": str(self.s.engine.parallel), "version": __version__,
        })

    def _run_sync(self, prompt: list[int], sampling: Sampling) -> tuple[list[int], dict]:
        done = threading.Event()
        out: dict = {}
        tokens: list[int] = []

        def emit(kind: str, payload: dict) -> None:
            if kind == "token":
                tokens.append(payload["token"])
            else:
                out.update(payload, kind=kind)
                done.set()

        self.engine.submit(Job(prompt, sampling, emit))
        if not done.wait(600):
            raise TimeoutError("no answer within 600 s")
        if out.get("kind") == "error":
            raise RuntimeError(out.get("message"))
        return tokens, out

    def _warm_up(self) -> None:
        self._run_sync(self.prompt.render_chat([{"role": "user", "content": "Hi"}]), Sampling(temperature=0, max_tokens=2))
        if not self.s.canary:
            return
        prompt = self.prompt.render_chat([{"role": "user", "content": CANARY_PROMPT}])
        tokens, out = self._run_sync(prompt, Sampling(temperature=self.s.temperature, min_p=self.s.min_p,
                                                      seed=self.s.canary_seed, max_tokens=self.s.canary_tokens))
        if out.get("degenerate"):
            self.metrics.degenerate.labels("canary").inc()
            raise RuntimeError(f"the canary generation loops ({len(tokens)} tokens from a fixed prompt and seed "
                               f"{self.s.canary_seed}); the quant or the sampling settings produce degenerate output")

    # ---- requests ------------------------------------------------------------------------
    def sampling(self, req: CommonRequest, max_tokens: int | None, n_prompt: int, grammar: str | None = None) \
            -> Sampling:
        cap = min(self.s.max_tokens_cap, self.engine.n_ctx_slot - n_prompt - 1)
        if req.repetition_penalty and req.repeat_penalty and req.repetition_penalty != req.repeat_penalty:
            raise ValueError("repeat_penalty: repetition_penalty is the same setting; send one of the two")
        bias = {}
        for k, v in (req.logit_bias or {}).items():
            if not k.lstrip("-").isdigit() or not 0 <= int(k) < self.engine.n_vocab:
                raise ValueError(f"logit_bias: {k!r} is not a token id of this model")
            bias[int(k)] = max(-100.0, min(100.0, v))
        return Sampling(
            temperature=self.s.temperature if req.temperature is None else req.temperature,
            top_p=self.s.top_p if req.top_p is None else req.top_p,
            top_k=self.s.top_k if req.top_k is None else req.top_k,
            min_p=self.s.min_p if req.min_p is None else req.min_p,
            seed=req.seed, max_tokens=max(1, min(max_tokens or cap, cap)), ignore_eos=req.ignore_eos,
            logit_bias=bias, presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0, n_probs=req.wanted_probs(), grammar=grammar,
            repeat_penalty=req.repetition_penalty or req.repeat_penalty or 1.0,
        )

    def retry_after(self) -> int:
        recent = self.state.recent[-20:]
        avg = sum(recent) / len(recent) if recent else 1.0
        waves = 1 + self.engine.queued() // max(1, self.s.engine.parallel)
        return max(1, min(120, math.ceil(avg * waves)))

    async def run(self, endpoint: str, req: CommonRequest, prompt: list[int], max_tokens: int | None,
                  request: Request, grammar: str | None = None, tools: ToolRequest | None = None,
                  choice: int = 0) -> AsyncIterator[tuple[str, dict]]:
        """Yield ('delta', {reasoning, content[, tool_calls]}) events then one ('done', {...}) or ('error', {...}).
        With `tools`, the content is parsed for calls as it comes (a call is a delta's `tool_calls`), and an
        answer that made one finishes with `tool_calls`. `choice` i of a request's n samples with its seed + i."""
        arrived = time.monotonic()
        sampling = self.sampling(req, max_tokens, len(prompt), grammar)
        if choice:
            sampling.seed = ((self.s.engine.seed if req.seed is None else req.seed) + choice) & 0xFFFFFFFF
        calls = CallStream(tools.names, tools.parallel) if tools is not None and tools.active else None
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        stop_on_loop = self.s.stop_on_loop if req.stop_on_loop is None else req.stop_on_loop
        job = Job(prompt, sampling, self._emitter(loop, q), stop_on_loop=stop_on_loop,
                  deadline=arrived + self.s.request_timeout, cache_prompt=req.cache_prompt)
        self.engine.submit(job)  # QueueFull / PromptTooLong propagate to the handler
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        matcher = StopMatcher(stops)
        splitter = ThinkSplitter(in_think=self.prompt.ends_in_think(prompt)) if self.prompt.think and endpoint == "chat" else None
        stopped = False
        first = True
        finished = False
        # A client that goes away is noticed here until its first token; past that, a stream's response has started
        # and Starlette notices (the generator is closed, and `finally` cancels the job).
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            while True:
                kind, payload = await q.get()
                if kind == "token":
                    if first:
                        self.metrics.ttft.labels(endpoint).observe(time.monotonic() - arrived)
                        first = False
                        if req.stream:
                            watcher.cancel()  # one reader of the client's messages at a time
                    if stopped:
                        continue
                    text, stopped = matcher.feed(payload["text"])
                    if stopped:
                        job.cancel()
                    delta = self._split(splitter, text, calls)
                    if "logprob" in payload:  # with the delta its token arrived in, even if a stop string holds its text
                        delta["logprobs"] = [payload["logprob"]]
                    yield "delta", delta
                    continue
                if kind == "error":
                    finished = True
                    self.metrics.requests.labels(endpoint, "error").inc()
                    yield "error", payload
                    return
                # done
                if not stopped:
                    text, stopped_now = matcher.feed(payload.get("tail", ""))
                    rest = "" if stopped_now else matcher.flush()
                    delta = self._split(splitter, text + rest, calls)
                    if splitter is not None:
                        r, c = splitter.flush()
                        delta["reasoning"] += r
                        delta["content"] += self._calls_in(calls, c, delta)
                    if calls is not None:
                        delta["content"] += calls.flush()
                    if delta["reasoning"] or delta["content"] or delta.get("tool_calls"):
                        yield "delta", delta
                reason = "stop" if stopped else payload["finish_reason"]
                if calls is not None and calls.calls and reason == "stop":
                    reason = "function_call" if tools.legacy else "tool_calls"
                elapsed = time.monotonic() - arrived
                self.metrics.e2e.labels(endpoint).observe(elapsed)
                self.metrics.requests.labels(endpoint, OUTCOME.get(reason, "error")).inc()
                self.state.recent = (self.state.recent + [elapsed])[-50:]
                finished = True
                yield "done", {**payload, "finish_reason": reason}
                return
        finally:
            watcher.cancel()
            job.cancel()  # no-op when finished; frees the slot when the client went away
            if not finished:
                self.metrics.requests.labels(endpoint, "cancelled").inc()

    def _emitter(self, loop: asyncio.AbstractEventLoop, q: asyncio.Queue):
        """Engine-thread callback: events are buffered and handed to the event loop once per decode step."""

        def emit(kind: str, payload: dict) -> None:
            with self._lock:
                self._pending.append((q, kind, payload))
                self._loop = loop

        return emit

    def _flush(self) -> None:  # called by the engine after each step
        with self._lock:
            items, self._pending = self._pending, []
            loop = self._loop
        if items and loop is not None:
            loop.call_soon_threadsafe(_dispatch, items)

    def _split(self, splitter: ThinkSplitter | None, text: str, calls: CallStream | None = None) -> dict:
        """The text as a delta: reasoning apart from content (a <think> model), and calls out of the content."""
        r, c = ("", text) if splitter is None else splitter.feed(text)
        if calls is None:  # per token: no work for tools a request did not send
            return {"reasoning": r, "content": c}
        delta = {"reasoning": r, "content": ""}
        delta["content"] = self._calls_in(calls, c, delta)
        return delta

    @staticmethod
    def _calls_in(calls: CallStream | None, content: str, delta: dict) -> str:
        """`content` less the calls it completes, which are added to the delta's tool_calls."""
        if calls is None:
            return content
        text, made = calls.feed(content)
        if made:
            delta["tool_calls"] = delta.get("tool_calls", []) + made
        return text


def fingerprint(s: ServeSettings) -> str:
    """OpenAI's system_fingerprint: what, besides the request, decides an answer (this runtime and llama.cpp's
    versions, the model file, its offload and KV cache); it changes when any of them does."""
    import hashlib

    import llama_cpp

    e = s.engine
    facts = [__version__, llama_cpp.__version__, os.path.basename(e.model), s.variant, e.n_gpu_layers, e.ctx_size,
             e.parallel, e.cache_type_k, e.cache_type_v, e.flash_attn]
    return "fp_" + hashlib.sha256("|".join(map(str, facts)).encode()).hexdigest()[:10]


def _dispatch(items: list) -> None:
    for q, kind, payload in items:
        q.put_nowait((kind, payload))


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Drop the job (from the queue, or free its slot) if the client goes away while it waits for an answer."""
    while not job.cancelled.is_set():
        if await request.is_disconnected():
            job.cancel()
            return
        await asyncio.sleep(1.0)


def describe_report(report) -> str:
    """One line of what llama.cpp allocated: layers offloaded, then MiB per device and kind."""
    layers = (f"offloaded {report.offloaded}/{report.layers} layers to GPU" if report.offloaded is not None
              else "offloaded no layers to GPU")
    devices = "; ".join(f"{d}: " + ", ".join(f"{k} {n / (1 << 20):.1f} MiB" for k, n in kinds.items())
                        for d, kinds in report.by_device.items())
    return f"{layers}; {devices}" if devices else layers
