"""The OpenAI-compatible HTTP API (FastAPI): routes, bearer auth, and the SSE stream of a generation."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from r1_runtime import __version__
from r1_runtime.server.engine import PromptTooLong, QueueFull
from r1_runtime.server.generation import Runtime
from r1_runtime.server.structured import grammar_for
from r1_runtime.server.tools import ToolError, ToolRequest, template_messages, tool_request
from r1_runtime.server.tools import grammar as tool_grammar
from r1_runtime.server.schemas import ChatRequest, CommonRequest, CompletionRequest, DetokenizeRequest, \
    TemplateRequest, TokenizeRequest, chat_messages, err, error_body, refused_field


def _usage(*finals: dict) -> dict:
    """The usage of a request's choices: the prompt once, and every choice's completion tokens."""
    prompt = finals[0]["prompt_tokens"]
    completion = sum(d["completion_tokens"] for d in finals)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": finals[0].get("cached_tokens", 0)}}


OPEN_PATHS = frozenset(("/health", "/ready", "/metrics"))


class JSONBodies:
    """POST bodies: one larger than `limit` bytes gets 413 before anything parses it (by its Content-Length, or
    as it arrives); one without a JSON Content-Type is read as JSON (`curl -d '{...}'` sends
    application/x-www-form-urlencoded, and llama-server accepts it too)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def _too_large(self):
        return err(413, f"the request body is larger than {self.limit} bytes (--max-request-bytes); send less",
                   code="request_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"])
        if int(given.get(b"content-length", b"0") or 0) > self.limit:
            return await self._too_large()(scope, receive, send)
        ctype = given.get(b"content-type", b"")
        if not ctype or ctype.split(b";")[0].strip() in (b"application/x-www-form-urlencoded", b"text/plain"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        if b"content-length" in given:
            return await self.app(scope, receive, send)
        # a chunked body: read it here, up to the limit, then hand it on
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._too_large()(scope, receive, send)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, replay, send)


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

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        """404, 405 and an unreadable body (invalid UTF-8, broken JSON) in OpenAI's error shape."""
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            detail = f"{request.method} {request.url.path}: no such endpoint"
        elif exc.status_code == 405:
            detail = f"{request.method} {request.url.path}: method not allowed"
        elif exc.status_code == 400:
            detail = f"the request body could not be read ({detail}); send a JSON object in UTF-8"
        return err(exc.status_code, detail, code=code, headers=getattr(exc, "headers", None))

    @app.exception_handler(UnicodeError)
    async def _not_unicode(request: Request, exc: UnicodeError):
        rt.metrics.requests.labels(_endpoint(request), "invalid").inc()
        return err(400, "the request holds text that is not valid Unicode (a lone surrogate such as \\ud800, or "
                   f"bytes that are not UTF-8): {exc.reason}; send valid UTF-8 text", code="invalid_text")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        """A fault of this server, in OpenAI's shape too (Starlette logs the traceback after sending it)."""
        rt.metrics.requests.labels(_endpoint(request), "error").inc()
        return err(500, f"internal error ({type(exc).__name__}); the server's log has the traceback",
                   type_="server_error", code="internal_error")

    if rt.api_key:
        app.add_middleware(BearerAuth, key=rt.api_key)
    app.add_middleware(JSONBodies, limit=rt.s.max_request_bytes)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        st = rt.state
        if st.phase == "ready":  # with what llama.cpp allocated at load, per device and kind
            report = rt.engine.report
            return {"status": "ready", "model": rt.model_id, "load": report.as_dict() if report else None}
        return JSONResponse({"status": st.phase, "reason": st.reason}, status_code=503)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(rt.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict:
        return {"id": rt.model_id, "object": "model", "created": 0, "owned_by": "r1-operator"}

    @app.get("/v1/models")
    @app.get("/models")  # llama-server's path too
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != rt.model_id:
            return err(404, f"model {model_id!r} does not exist; this server serves {rt.model_id!r}", param="model",
                       code="model_not_found")
        return model_card()

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        if (resp := _not_ready(rt)) is not None:
            return resp
        if body.as_prompt:
            tokens = await asyncio.to_thread(rt.prompt.tokenize_prompt, body.content)
        else:
            tokens = await asyncio.to_thread(rt.engine.tokenize, body.content, body.add_special, body.parse_special)
        if body.with_pieces:
            return {"tokens": await asyncio.to_thread(_pieces, rt.engine, tokens)}
        return {"tokens": tokens}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        if (resp := _not_ready(rt)) is not None:
            return resp
        n_vocab = rt.engine.n_vocab
        bad = next((i for i, t in enumerate(body.tokens) if not 0 <= t < n_vocab), None)
        if bad is not None:
            return err(400, f"tokens[{bad}]: {body.tokens[bad]} is not a token id of this model (0 to {n_vocab - 1})",
                       param=f"tokens[{bad}]")
        text = await asyncio.to_thread(lambda: b"".join(rt.engine.piece(t, special=True) for t in body.tokens))
        return {"content": text.decode("utf-8", "replace")}

    @app.get("/props")
    async def props():
        """llama-server's /props, read-only: the defaults a request starts from, the slots and the model."""
        if (resp := _not_ready(rt)) is not None:
            return resp
        return server_props(rt)

    @app.post("/props")
    async def set_props():
        return err(501, "this server's properties are read-only: set them with r1-runtime serve's flags (under the "
                   "operator, the R1Deployment's spec)", type_="not_supported_error", code="not_supported")

    @app.get("/slots")
    async def slots(fail_on_no_slot: str = ""):
        """llama-server's /slots (with --slots): each slot's state; never a prompt or the text generated."""
        if not rt.s.slots:
            return err(501, "this server does not serve /slots; start it with --slots", type_="not_supported_error",
                       code="not_supported")
        if (resp := _not_ready(rt)) is not None:
            return resp
        listing = slot_states(rt)
        if fail_on_no_slot and all(sl["is_processing"] for sl in listing):
            return err(503, "no slot available", type_="unavailable_error", code="no_slot_available")
        return listing

    @app.post("/apply-template")
    async def apply_template(body: TemplateRequest):
        if (resp := _not_ready(rt)) is not None:
            return resp
        if (resp := _too_many(rt, "chat", body.messages)) is not None:
            return resp
        try:
            treq = tool_request({"tools": body.tools}, rt.prompt.chat_template, rt.prompt.renders_tools)
        except ToolError as exc:
            return _invalid_request(rt, "chat", str(exc), exc.param, code="invalid_tools")
        messages, bad = chat_messages(body.messages, rt.prompt.renders_tools)
        if bad is not None:
            return _invalid_request(rt, "chat", bad[1], bad[0], code="unsupported_content")
        return {"prompt": await asyncio.to_thread(rt.prompt.render_text, template_messages(messages),
                                                  treq.tools if treq else None)}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        if (resp := _not_ready(rt)) is not None:
            return resp
        if (resp := _too_many(rt, "chat", body.messages)) is not None:
            return resp
        if (resp := _refused(rt, "chat", body)) is not None:
            return resp
        if body.top_logprobs and not body.logprobs:
            return _invalid_request(rt, "chat", "top_logprobs: set logprobs to true to get top_logprobs",
                                    "top_logprobs")
        try:
            grammar = grammar_for(body.response_format)
            if grammar is not None:
                if rt.prompt.think:
                    raise ValueError("response_format: this model reasons in <think> before it answers, and a "
                                     "grammar would constrain the reasoning too; ask for JSON in the prompt instead")
                await asyncio.to_thread(rt.engine.check_grammar, grammar)
            treq = tool_request(body.tool_fields(), rt.prompt.chat_template, rt.prompt.renders_tools)
            if treq is not None and treq.active:
                if grammar is not None:
                    raise ToolError("response_format", "a tool call's JSON is already constrained by its tool's "
                                    "parameters; send response_format or tools, not both")
                if treq.forced and rt.prompt.think:
                    raise ToolError("tool_choice", "this model reasons in <think> before it answers, and a forced "
                                    "call's grammar would constrain the reasoning too; use auto")
                if treq.forced:  # auto: the answer is parsed, not constrained (see tools.grammar)
                    grammar = tool_grammar(treq)
                    await asyncio.to_thread(rt.engine.check_grammar, grammar, "tools")
        except ToolError as exc:
            return _invalid_request(rt, "chat", str(exc), exc.param, code="invalid_tools")
        except ValueError as exc:
            return _invalid_request(rt, "chat", str(exc), str(exc).split(":")[0])
        messages, bad = chat_messages(body.messages, rt.prompt.renders_tools)
        if bad is not None:
            return _invalid_request(rt, "chat", bad[1], bad[0], code="unsupported_content")
        shown = treq.tools if treq is not None and treq.active else None
        try:  # templating and tokenizing run beside the event loop: /health answers meanwhile
            prompt = await asyncio.to_thread(rt.prompt.render_chat, template_messages(messages), shown)
        except UnicodeError:
            raise  # the app's handler: not valid Unicode
        except Exception as exc:  # noqa: BLE001 - template errors are the caller's messages
            return _invalid_request(rt, "chat", f"messages: the chat template rejected them: {exc}", "messages")
        return await _respond(rt, "chat", body, prompt, body.max_completion_tokens or body.max_tokens, request,
                              grammar, tools=treq)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        if (resp := _not_ready(rt)) is not None:
            return resp
        if (resp := _refused(rt, "completions", body)) is not None:
            return resp
        text = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt[:1])
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            return _invalid_request(rt, "completions", "prompt: give one prompt per request", "prompt")
        if body.echo and body.logprobs is not None:
            return _invalid_request(rt, "completions", "echo: the prompt's logprobs are not computed; send echo or "
                                    "logprobs, not both", "echo", code="unsupported_parameter")
        prompt = await asyncio.to_thread(rt.prompt.tokenize_prompt, text)
        return await _respond(rt, "completions", body, prompt, body.max_tokens, request,
                              echo=text if body.echo else "")

    return app


def _pieces(engine, tokens: list[int]) -> list[dict]:
    """Each token with its piece as llama-server gives it: the text when its bytes are UTF-8 by themselves, else
    the bytes."""
    out = []
    for t in tokens:
        raw = engine.piece(t, special=True)
        try:
            piece = raw.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(raw)
        out.append({"id": t, "piece": piece})
    return out


def _defaults(rt: Runtime) -> dict:
    """The sampling settings a request starts from, in llama-server's names."""
    s = rt.s
    return {"seed": s.engine.seed, "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
            "min_p": s.min_p, "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "max_tokens": s.max_tokens_cap, "n_predict": s.max_tokens_cap, "ignore_eos": False, "stream": False,
            "n_probs": 0, "cache_prompt": True, "stop_on_loop": s.stop_on_loop}


def server_props(rt: Runtime) -> dict:
    import llama_cpp

    p = rt.prompt
    return {"default_generation_settings": {"params": _defaults(rt), "n_ctx": rt.engine.n_ctx_slot},
            "total_slots": rt.s.engine.parallel, "model_alias": rt.model_id, "model_path": rt.s.engine.model,
            "modalities": {"vision": False, "video": False, "audio": False},
            "endpoint_slots": rt.s.slots, "endpoint_props": False, "endpoint_metrics": True,
            "chat_template": p.chat_template or "", "chat_template_caps": {"supports_tools": p.renders_tools},
            "bos_token": p.bos_text, "eos_token": p.eos_text, "is_sleeping": False,
            "build_info": f"r1-runtime {__version__}, llama-cpp-python {llama_cpp.__version__}"}


def slot_states(rt: Runtime) -> list[dict]:
    """Each slot as llama-server's /slots shows it, read from the engine without a lock (a snapshot that may be a
    token behind), without the prompt or generated text: they may hold what clients sent in confidence."""
    out = []
    for sl in rt.engine.slots:
        job = sl.job
        d = {"id": sl.seq, "n_ctx": rt.engine.n_ctx_slot, "speculative": False, "is_processing": job is not None,
             "n_prompt_tokens_cache": len(sl.kv) if job is None else job.cached}
        if job is not None:
            sp = job.sampling
            d.update({"n_prompt_tokens": len(job.prompt),
                      "params": {"seed": sp.seed if sp.seed is not None else rt.s.engine.seed,
                                 "temperature": sp.temperature, "top_k": sp.top_k, "top_p": sp.top_p,
                                 "min_p": sp.min_p, "repeat_penalty": sp.repeat_penalty,
                                 "presence_penalty": sp.presence_penalty, "frequency_penalty": sp.frequency_penalty,
                                 "max_tokens": sp.max_tokens, "n_predict": sp.max_tokens,
                                 "ignore_eos": sp.ignore_eos, "n_probs": max(sp.n_probs, 0),
                                 "cache_prompt": job.cache_prompt},
                      "next_token": [{"has_next_token": True, "n_remain": sp.max_tokens - sl.n_gen,
                                      "n_decoded": sl.n_gen}]})
        out.append(d)
    return out


def _endpoint(request: Request) -> str:
    return "chat" if request.url.path.endswith("chat/completions") else "completions"


def _invalid_request(rt: Runtime, endpoint: str, message: str, param: str, code: str | None = None) -> JSONResponse:
    rt.metrics.requests.labels(endpoint, "invalid").inc()
    return err(400, message, param=param, code=code)


def _refused(rt: Runtime, endpoint: str, body: CommonRequest) -> JSONResponse | None:
    """A model this server does not serve (404), or a field it would otherwise ignore (400)."""
    if body.model is not None and body.model != rt.model_id:
        rt.metrics.requests.labels(endpoint, "invalid").inc()
        return err(404, f"model {body.model!r} does not exist; this server serves {rt.model_id!r}", param="model",
                   code="model_not_found")
    bad = refused_field(body)
    if bad is not None:
        return _invalid_request(rt, endpoint, bad[1], bad[0], code="unsupported_parameter")
    return None


def _too_many(rt: Runtime, endpoint: str, messages: list) -> JSONResponse | None:
    if len(messages) <= rt.s.max_messages:
        return None
    return _invalid_request(rt, endpoint, f"messages: {len(messages)} messages, more than the {rt.s.max_messages} "
                            "this server takes (--max-messages); send fewer", "messages", code="too_many_messages")


def _not_ready(rt: Runtime) -> JSONResponse | None:
    if rt.state.phase in ("ready", "draining"):
        return None
    return err(503, f"the model is not ready ({rt.state.phase}{': ' + rt.state.reason if rt.state.reason else ''})",
               type_="server_error", code="model_not_ready", headers={"Retry-After": "10"})


async def _respond(rt: Runtime, endpoint: str, body: CommonRequest, prompt: list[int], max_tokens: int | None,
                   request: Request, grammar: str | None = None, echo: str = "", tools: ToolRequest | None = None):
    """Generate body.n choices, each its own job in its own slot (choice i samples with seed + i), and answer
    with all of them, streamed or not."""
    if body.n > rt.s.engine.parallel:
        return _invalid_request(rt, endpoint, f"n: {body.n} choices, but this server decodes at most "
                                f"{rt.s.engine.parallel} sequences together (--parallel); ask for fewer", "n")
    streams = [rt.run(endpoint, body, prompt, max_tokens, request, grammar, tools, choice=i) for i in range(body.n)]
    # each job is submitted when its generator starts; all start at once, then each one's first event is awaited.
    # One refused (a full queue) answers at once: the others are cancelled, not waited for.
    starts = [asyncio.ensure_future(g.__anext__()) for g in streams]
    done, pending = await asyncio.wait(starts, return_when=asyncio.FIRST_EXCEPTION)
    failed = next((t.exception() for t in starts if t in done and t.exception() is not None), None)
    if failed is not None:
        for t in pending:
            t.cancel()  # its generator's finally cancels its job
        await asyncio.gather(*pending, return_exceptions=True)
        for g in streams:
            await g.aclose()
        if isinstance(failed, PromptTooLong):
            param = "messages" if endpoint == "chat" else "prompt"
            return _invalid_request(rt, endpoint, f"{param}: {failed}", param, code="context_length_exceeded")
        if isinstance(failed, QueueFull):
            rt.metrics.requests.labels(endpoint, "rejected").inc()
            return err(429, f"all {rt.s.engine.parallel} slots are busy and the queue of {rt.s.engine.max_queue} is "
                       "full; retry later", type_="rate_limit_error", code="queue_full",
                       headers={"Retry-After": str(rt.retry_after())})
        if isinstance(failed, ValueError):
            return _invalid_request(rt, endpoint, str(failed), str(failed).split(":")[0])
        raise failed
    firsts = [t.result() for t in starts]
    rid = ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    legacy = tools is not None and tools.legacy
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        events = _indexed(firsts[0], streams[0]) if body.n == 1 else _merged(firsts, streams)
        return StreamingResponse(_sse(rt, endpoint, rid, created, events, body.n, include_usage, echo, legacy),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    answers = await asyncio.gather(*(_collect(f, g) for f, g in zip(firsts, streams)))
    finals = [a["final"] for a in answers]
    failed = next((payload for kind, payload in finals if kind == "error"), None)
    if failed is not None:
        return err(500, failed.get("message", "generation failed"), type_="server_error")
    if any(payload["finish_reason"] == "timeout" for _, payload in finals):
        return err(504, f"the request ran past --request-timeout ({rt.s.request_timeout:g} s)", type_="server_error",
                   code="timeout")
    choices = []
    for i, a in enumerate(answers):
        reason = a["final"][1]["finish_reason"]
        lp = _logprobs(endpoint, a["probs"]) if body.wanted_probs() >= 0 else None
        if endpoint == "chat":
            text, calls = "".join(a["content"]), a["calls"]
            msg = {"role": "assistant", "content": text if text or not calls else None}
            if rt.prompt.think:
                msg["reasoning_content"] = "".join(a["reasoning"])
            if calls and legacy:
                msg["function_call"] = calls[0]["function"]
            elif calls:
                msg["tool_calls"] = calls
            choices.append({"index": i, "message": msg, "finish_reason": reason, "logprobs": lp})
        else:
            choices.append({"index": i, "text": echo + "".join(a["content"]), "finish_reason": reason, "logprobs": lp})
    return {"id": rid, "object": "chat.completion" if endpoint == "chat" else "text_completion", "created": created,
            "model": rt.model_id, "system_fingerprint": rt.fingerprint, "choices": choices,
            "usage": _usage(*[payload for _, payload in finals])}


async def _collect(first, events) -> dict:
    """One choice's events gathered: its reasoning and content pieces, logprobs, calls, and the final event."""
    a = {"reasoning": [], "content": [], "probs": [], "calls": [], "final": first}
    ev = first
    while True:
        if ev[0] == "delta":
            d = ev[1]
            a["reasoning"].append(d["reasoning"])
            a["content"].append(d["content"])
            a["probs"].extend(d.get("logprobs", ()))
            a["calls"].extend(d.get("tool_calls", ()))
        else:
            a["final"] = ev
            return a
        try:
            ev = await events.__anext__()
        except StopAsyncIteration:
            return a


async def _indexed(first, events):
    """One choice's events as (0, kind, payload)."""
    yield 0, *first
    async for kind, payload in events:
        yield 0, kind, payload


async def _merged(firsts: list, streams: list):
    """Several choices' events, as they come, each as (index, kind, payload); a client that leaves cancels all."""
    q: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, first, events) -> None:
        q.put_nowait((i, *first))
        async for kind, payload in events:
            q.put_nowait((i, kind, payload))

    tasks = [asyncio.create_task(pump(i, f, g)) for i, (f, g) in enumerate(zip(firsts, streams))]
    try:
        left = len(streams)
        while left:
            item = await q.get()
            if item[1] != "delta":
                left -= 1
            yield item
    finally:
        for t in tasks:
            t.cancel()
        for g in streams:
            await g.aclose()


def _logprobs(endpoint: str, entries: list[dict], offset: int = 0) -> dict:
    """OpenAI's logprobs object: chat's `content` list, or the legacy completions' parallel lists (text_offset
    counts characters of the completion's text from `offset`)."""
    if endpoint == "chat":
        return {"content": [{"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"],
                             "top_logprobs": [{k: t[k] for k in ("token", "logprob", "bytes")} for t in e["top"]]}
                            for e in entries], "refusal": None}
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top"]} for e in entries], "text_offset": offsets}


async def _sse(rt: Runtime, endpoint: str, rid: str, created: int, events, n: int, include_usage: bool,
               echo: str = "", legacy: bool = False):
    """The SSE stream of `events` ((choice index, kind, payload)): each choice's deltas and finish, usage (all
    choices together) when asked, then [DONE]; an error or a timeout ends the stream with an error event."""
    obj = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    # The envelope is the same for every chunk of a stream: encode it once, then only the choice per token.
    head = "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": rt.model_id,
                                  "system_fingerprint": rt.fingerprint},
                                 ensure_ascii=False)[:-1] + ', "choices": ['

    def chunk(choice: dict, usage: dict | None = None) -> str:
        if usage is not None:
            return f"{head}], \"usage\": {json.dumps(usage)}}}\n\n"
        return f"{head}{json.dumps(choice, ensure_ascii=False)}]}}\n\n"

    for i in range(n):
        if endpoint == "chat":
            yield chunk({"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        elif echo:
            yield chunk({"index": i, "text": echo, "finish_reason": None, "logprobs": None})
    offsets = [0] * n  # characters of each completion's text so far (the legacy logprobs' text_offset)
    n_calls = [0] * n  # tool calls streamed so far in each choice: each call's index
    finals = []
    async for i, kind, payload in events:
        if kind == "delta":
            probs = payload.get("logprobs")
            calls = payload.get("tool_calls")
            if not (payload["reasoning"] or payload["content"] or probs or calls):
                continue
            lp = _logprobs(endpoint, probs, offsets[i]) if probs else None
            if endpoint == "chat":
                delta = {}
                if payload["reasoning"]:
                    delta["reasoning_content"] = payload["reasoning"]
                if payload["content"] or not (delta or calls):
                    delta["content"] = payload["content"]
                if calls and legacy:
                    delta["function_call"] = calls[0]["function"]
                elif calls:  # each call whole in one delta (a client joins a call's deltas by its index)
                    delta["tool_calls"] = [{"index": n_calls[i] + k, **c} for k, c in enumerate(calls)]
                    n_calls[i] += len(calls)
                yield chunk({"index": i, "delta": delta, "finish_reason": None, **({"logprobs": lp} if lp else {})})
            else:
                yield chunk({"index": i, "text": payload["content"], "finish_reason": None, "logprobs": lp})
                offsets[i] += sum(len(e["token"]) for e in probs or ())
        elif kind == "error" or payload.get("finish_reason") == "timeout":
            message = payload.get("message") or f"the request ran past --request-timeout ({rt.s.request_timeout:g} s)"
            yield f"data: {json.dumps(error_body(message, 'server_error'))}\n\n"
            return
        else:
            reason = payload["finish_reason"]
            finals.append(payload)
            if endpoint == "chat":
                yield chunk({"index": i, "delta": {}, "finish_reason": reason})
            else:
                yield chunk({"index": i, "text": "", "finish_reason": reason, "logprobs": None})
    if include_usage:
        yield chunk({}, _usage(*finals))
    yield "data: [DONE]\n\n"
