"""The OpenAI-compatible HTTP API in front of the engine (FastAPI)."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from r1_operator.api.contract import SAMPLING_DEFAULTS, SERVE_FLAGS
from r1_runtime import __version__
from r1_runtime.server.engine import Engine, EngineSettings, Job, PromptTooLong, QueueFull, Sampling
from r1_runtime.server.metrics import Metrics
from r1_runtime.server.textproc import StopMatcher, ThinkSplitter

CANARY_PROMPT = "Write a short paragraph about why the sky is blue."
OUTCOME = {"stop": "success", "length": "length", "cancelled": "cancelled", "timeout": "timeout",
           "repetition": "degenerate", "error": "error"}


@dataclass
class ServeSettings:
    engine: EngineSettings
    alias: str = ""
    variant: str = ""
    api_key_env: str = SERVE_FLAGS["api_key_env"].default
    max_tokens_cap: int = SERVE_FLAGS["max_tokens_cap"].default
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


@dataclass
class State:
    phase: str = "loading"  # loading, warming, ready, canary-failed, failed, draining
    reason: str = ""
    chat_template: str | None = None
    compiled_template: object = None  # the chat template compiled once (jinja2 Template)
    think: bool = False
    bos_text: str = ""
    eos_text: str = ""
    recent: list[float] = field(default_factory=list)  # recent request durations, for Retry-After


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False
    stream_options: dict | None = None
    stop_on_loop: bool | None = None


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Common):
    prompt: str | list[str]


class TokenizeRequest(BaseModel):
    content: str
    add_special: bool = False
    parse_special: bool = True
    as_prompt: bool = Field(False, description="tokenize exactly as a completion prompt (one BOS when the model uses one)")


class TemplateRequest(BaseModel):
    messages: list[Message] = Field(min_length=1)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def err(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
        code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


def _text(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


class Runtime:
    """Everything a request handler needs: engine, metrics, settings and state."""

    def __init__(self, s: ServeSettings, metrics: Metrics | None = None):
        self.s = s
        self.metrics = metrics or Metrics()
        self.engine = Engine(s.engine, self.metrics)
        self.engine.after_step = self._flush
        self._lock = threading.Lock()
        self._pending: list = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state = State()
        self.model_id = s.alias or os.path.basename(s.engine.model)
        self.api_key = (os.environ.get(s.api_key_env) or None) if s.api_key_env else None

    # ---- start-up ------------------------------------------------------------------------
    def start_loading(self) -> threading.Thread:
        t = threading.Thread(target=self._load, name="model-load", daemon=True)
        t.start()
        return t

    def _load(self) -> None:
        try:
            self.load_model()
        except Exception as exc:  # noqa: BLE001 - reported through /ready and the log
            self.state.phase, self.state.reason = "failed", str(exc)
            print(f"r1-runtime serve: model load failed: {exc}", flush=True)
            return
        e = self.engine
        e.start()
        print(f"r1-runtime serve: loaded {self.s.engine.model} in {e.load_seconds:.1f}s "
              f"(ctx {self.s.engine.ctx_size}, {e.n_ctx_slot} per slot x {self.s.engine.parallel})", flush=True)
        self.state.phase = "warming"
        try:
            self._warm_up()
        except Exception as exc:  # noqa: BLE001
            self.state.phase, self.state.reason = "failed", f"warm-up failed: {exc}"
            return
        self.state.phase = "ready"
        self.metrics.ready.set(1)

    def load_model(self) -> None:
        """Load the model and read what prompts need from it (template, BOS/EOS text); starts no thread."""
        self.engine.load()
        e = self.engine
        self.metrics.load_seconds.set(e.load_seconds)
        self.metrics.slots.set(self.s.engine.parallel)
        self.state.chat_template = e.meta("tokenizer.chat_template")
        self.state.bos_text = e.token_text(e.bos) if e.bos >= 0 else ""
        eos = int(e.meta("tokenizer.ggml.eos_token_id") or -1)
        self.state.eos_text = e.token_text(eos) if eos >= 0 else ""
        if self.state.chat_template:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            self.state.compiled_template = env.from_string(self.state.chat_template)
        tpl = self.state.chat_template or ""
        fmt = self.s.reasoning_format
        self.state.think = fmt == "deepseek" or (fmt == "auto" and ("<think>" in tpl or "<｜Assistant｜>" in tpl))
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
        self._run_sync(self.render_chat([{"role": "user", "content": "Hi"}]), Sampling(temperature=0, max_tokens=2))
        if not self.s.canary:
            return
        prompt = self.render_chat([{"role": "user", "content": CANARY_PROMPT}])
        tokens, out = self._run_sync(prompt, Sampling(temperature=self.s.temperature, min_p=self.s.min_p,
                                                      seed=self.s.canary_seed, max_tokens=self.s.canary_tokens))
        if out.get("degenerate"):
            self.metrics.degenerate.labels("canary").inc()
            raise RuntimeError(f"the canary generation loops ({len(tokens)} tokens from a fixed prompt and seed "
                               f"{self.s.canary_seed}); the quant or the sampling settings produce degenerate output")

    # ---- prompts -------------------------------------------------------------------------
    def render_chat(self, messages: list[dict]) -> list[int]:
        return self.tokenize_prompt(self.render_text(messages))

    def render_text(self, messages: list[dict]) -> str:
        tpl = self.state.compiled_template
        if tpl is not None:
            return tpl.render(messages=messages, add_generation_prompt=True,
                              bos_token=self.state.bos_text, eos_token=self.state.eos_text)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def tokenize_prompt(self, text: str) -> list[int]:
        """Tokenize with exactly one BOS when the model wants one: the template's, or llama.cpp's, never both."""
        e = self.engine
        has_bos_text = bool(self.state.bos_text) and text.startswith(self.state.bos_text)
        tokens = e.tokenize(text, add_special=e.add_bos and not has_bos_text, parse_special=True)
        while e.bos >= 0 and len(tokens) >= 2 and tokens[0] == e.bos and tokens[1] == e.bos:
            tokens.pop(0)
        return tokens

    def prompt_ends_in_think(self, tokens: list[int]) -> bool:
        tail = "".join(self.engine.token_text(t) for t in tokens[-4:])
        return tail.rstrip().endswith("<think>")

    # ---- requests ------------------------------------------------------------------------
    def sampling(self, req: _Common, max_tokens: int | None, n_prompt: int) -> Sampling:
        cap = min(self.s.max_tokens_cap, self.engine.n_ctx_slot - n_prompt - 1)
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
            logit_bias=bias,
        )

    def retry_after(self) -> int:
        recent = self.state.recent[-20:]
        avg = sum(recent) / len(recent) if recent else 1.0
        waves = 1 + self.engine.queued() // max(1, self.s.engine.parallel)
        return max(1, min(120, math.ceil(avg * waves)))

    async def run(self, endpoint: str, req: _Common, prompt: list[int], max_tokens: int | None,
                  request: Request) -> AsyncIterator[tuple[str, dict]]:
        """Yield ('delta', {reasoning, content}) events then one ('done', {...}) or ('error', {...})."""
        arrived = time.monotonic()
        sampling = self.sampling(req, max_tokens, len(prompt))
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        stop_on_loop = self.s.stop_on_loop if req.stop_on_loop is None else req.stop_on_loop
        job = Job(prompt, sampling, self._emitter(loop, q), stop_on_loop=stop_on_loop,
                  deadline=arrived + self.s.request_timeout)
        self.engine.submit(job)  # QueueFull / PromptTooLong propagate to the handler
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        matcher = StopMatcher(stops)
        splitter = ThinkSplitter(in_think=self.prompt_ends_in_think(prompt)) if self.state.think and endpoint == "chat" else None
        stopped = False
        first = True
        finished = False
        watcher = None if req.stream else asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            while True:
                kind, payload = await q.get()
                if kind == "token":
                    if first:
                        self.metrics.ttft.labels(endpoint).observe(time.monotonic() - arrived)
                        first = False
                    if stopped:
                        continue
                    text, stopped = matcher.feed(payload["text"])
                    if stopped:
                        job.cancel()
                    yield "delta", self._split(splitter, text)
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
                    delta = self._split(splitter, text + rest)
                    if splitter is not None:
                        r, c = splitter.flush()
                        delta = {"reasoning": delta["reasoning"] + r, "content": delta["content"] + c}
                    if delta["reasoning"] or delta["content"]:
                        yield "delta", delta
                reason = "stop" if stopped else payload["finish_reason"]
                elapsed = time.monotonic() - arrived
                self.metrics.e2e.labels(endpoint).observe(elapsed)
                self.metrics.requests.labels(endpoint, OUTCOME.get(reason, "error")).inc()
                self.state.recent = (self.state.recent + [elapsed])[-50:]
                finished = True
                yield "done", {**payload, "finish_reason": reason}
                return
        finally:
            if watcher is not None:
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

    def _split(self, splitter: ThinkSplitter | None, text: str) -> dict:
        if splitter is None:
            return {"reasoning": "", "content": text}
        r, c = splitter.feed(text)
        return {"reasoning": r, "content": c}


def _dispatch(items: list) -> None:
    for q, kind, payload in items:
        q.put_nowait((kind, payload))


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Non-streaming requests: free the slot if the client goes away while it waits."""
    while not job.cancelled.is_set():
        if await request.is_disconnected():
            job.cancel()
            return
        await asyncio.sleep(1.0)


def _raise(message: str):
    raise ValueError(message)


def _usage(d: dict) -> dict:
    return {"prompt_tokens": d["prompt_tokens"], "completion_tokens": d["completion_tokens"],
            "total_tokens": d["prompt_tokens"] + d["completion_tokens"]}


OPEN_PATHS = frozenset(("/health", "/ready", "/metrics"))


class BearerAuth:
    """Bearer API key on every path but health, ready and metrics.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` would pass every
    streamed chunk through an extra task and memory stream, costing CPU per token
    that the decode threads need."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            header = dict(scope["headers"]).get(b"authorization", b"")
            given = header[7:] if header[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, self.key):
                resp = err(401, "Invalid or missing API key: send 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")
                return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(rt: Runtime) -> FastAPI:
    app = FastAPI(title="r1-runtime", version=__version__,
                  description="OpenAI-compatible API for llama.cpp with continuous batching and Prometheus metrics.")
    app.state.rt = rt

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        rt.metrics.requests.labels(_endpoint(request), "invalid").inc()
        return err(400, f"{where}: {first.get('msg', 'invalid value')}", param=where or None)

    if rt.api_key:
        app.add_middleware(BearerAuth, key=rt.api_key)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        st = rt.state
        if st.phase == "ready":
            return {"status": "ready", "model": rt.model_id}
        return JSONResponse({"status": st.phase, "reason": st.reason}, status_code=503)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(rt.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": rt.model_id, "object": "model", "created": 0,
                                            "owned_by": "r1-operator"}]}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        if (resp := _not_ready(rt)) is not None:
            return resp
        if body.as_prompt:
            return {"tokens": rt.tokenize_prompt(body.content)}
        return {"tokens": rt.engine.tokenize(body.content, body.add_special, body.parse_special)}

    @app.post("/apply-template")
    async def apply_template(body: TemplateRequest):
        if (resp := _not_ready(rt)) is not None:
            return resp
        return {"prompt": rt.render_text([{"role": m.role, "content": _text(m.content)} for m in body.messages])}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        if (resp := _not_ready(rt)) is not None:
            return resp
        messages = [{"role": m.role, "content": _text(m.content)} for m in body.messages]
        try:
            prompt = rt.render_chat(messages)
        except Exception as exc:  # noqa: BLE001 - template errors are the caller's messages
            return _invalid_request(rt, "chat", f"messages: the chat template rejected them: {exc}", "messages")
        return await _respond(rt, "chat", body, prompt, body.max_completion_tokens or body.max_tokens, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        if (resp := _not_ready(rt)) is not None:
            return resp
        text = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt[:1])
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            return _invalid_request(rt, "completions", "prompt: give one prompt per request", "prompt")
        return await _respond(rt, "completions", body, rt.tokenize_prompt(text), body.max_tokens, request)

    return app


def _endpoint(request: Request) -> str:
    return "chat" if request.url.path.endswith("chat/completions") else "completions"


def _invalid_request(rt: Runtime, endpoint: str, message: str, param: str, code: str | None = None) -> JSONResponse:
    rt.metrics.requests.labels(endpoint, "invalid").inc()
    return err(400, message, param=param, code=code)


def _not_ready(rt: Runtime) -> JSONResponse | None:
    if rt.state.phase in ("ready", "draining"):
        return None
    return err(503, f"the model is not ready ({rt.state.phase}{': ' + rt.state.reason if rt.state.reason else ''})",
               type_="server_error", code="model_not_ready", headers={"Retry-After": "10"})


async def _respond(rt: Runtime, endpoint: str, body: _Common, prompt: list[int], max_tokens: int | None,
                   request: Request):
    try:
        events = rt.run(endpoint, body, prompt, max_tokens, request)
        first = await events.__anext__()  # submits the job; errors surface here
    except PromptTooLong as exc:
        param = "messages" if endpoint == "chat" else "prompt"
        return _invalid_request(rt, endpoint, f"{param}: {exc}", param, code="context_length_exceeded")
    except QueueFull:
        rt.metrics.requests.labels(endpoint, "rejected").inc()
        return err(429, f"all {rt.s.engine.parallel} slots are busy and the queue of {rt.s.engine.max_queue} is full; "
                   "retry later", type_="rate_limit_error", code="queue_full",
                   headers={"Retry-After": str(rt.retry_after())})
    except ValueError as exc:
        return _invalid_request(rt, endpoint, str(exc), str(exc).split(":")[0])
    rid = ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_sse(rt, endpoint, rid, created, first, events, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    reasoning, content = [], []
    ev = first
    async for ev in _chain(first, events):
        if ev[0] == "delta":
            reasoning.append(ev[1]["reasoning"])
            content.append(ev[1]["content"])
    kind, payload = ev
    if kind == "error":
        return err(500, payload.get("message", "generation failed"), type_="server_error")
    if payload["finish_reason"] == "timeout":
        return err(504, f"the request ran past --request-timeout ({rt.s.request_timeout:g} s)", type_="server_error",
                   code="timeout")
    if endpoint == "chat":
        msg = {"role": "assistant", "content": "".join(content)}
        if rt.state.think:
            msg["reasoning_content"] = "".join(reasoning)
        choice = {"index": 0, "message": msg, "finish_reason": payload["finish_reason"], "logprobs": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": "".join(content), "finish_reason": payload["finish_reason"], "logprobs": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": rt.model_id, "choices": [choice],
            "usage": _usage(payload)}


async def _chain(first, rest):
    yield first
    async for ev in rest:
        yield ev


async def _sse(rt: Runtime, endpoint: str, rid: str, created: int, first, events, include_usage: bool):
    obj = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    # The envelope is the same for every chunk of a stream: encode it once, then only the choice per token.
    head = "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": rt.model_id},
                                 ensure_ascii=False)[:-1] + ', "choices": ['

    def chunk(choice: dict, usage: dict | None = None) -> str:
        if usage is not None:
            return f"{head}], \"usage\": {json.dumps(usage)}}}\n\n"
        return f"{head}{json.dumps(choice, ensure_ascii=False)}]}}\n\n"

    if endpoint == "chat":
        yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
    async for kind, payload in _chain(first, events):
        if kind == "delta":
            if not (payload["reasoning"] or payload["content"]):
                continue
            if endpoint == "chat":
                delta = {}
                if payload["reasoning"]:
                    delta["reasoning_content"] = payload["reasoning"]
                if payload["content"]:
                    delta["content"] = payload["content"]
                yield chunk({"index": 0, "delta": delta, "finish_reason": None})
            else:
                yield chunk({"index": 0, "text": payload["content"], "finish_reason": None, "logprobs": None})
        elif kind == "error" or payload.get("finish_reason") == "timeout":
            message = payload.get("message") or f"the request ran past --request-timeout ({rt.s.request_timeout:g} s)"
            yield f"data: {json.dumps(error_body(message, 'server_error'))}\n\n"
            return
        else:
            reason = payload["finish_reason"]
            if endpoint == "chat":
                yield chunk({"index": 0, "delta": {}, "finish_reason": reason})
            else:
                yield chunk({"index": 0, "text": "", "finish_reason": reason, "logprobs": None})
            if include_usage:
                yield chunk({}, _usage(payload))
    yield "data: [DONE]\n\n"
