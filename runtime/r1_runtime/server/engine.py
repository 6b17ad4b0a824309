"""Continuous batching on llama.cpp through llama-cpp-python's low-level API.

One thread owns the llama context. Each of `parallel` slots is a sequence id in
the KV cache. Every step builds one ``llama_batch`` holding the next token of
every generating slot plus prompt chunks of newly admitted slots, calls
``llama_decode`` once, and samples each slot with its own sampler chain. A slot
is freed as soon as its request finishes or is cancelled, and the next queued
request takes it in the same step. Requests past the slots wait in a bounded
queue; past the queue, submit() raises QueueFull.

Prefix caching, as llama-server's ``cache_prompt``: a freed slot keeps its KV
cells and remembers the tokens they hold. A request takes the free slot whose
cached tokens share the longest prefix with its prompt (when that covers more
than PROMPT_SIMILARITY of the prompt; else the least recently used slot, so
the other slots' caches live on), the cells past the common prefix are removed,
and only the rest of the prompt is evaluated. The last prompt token is always
evaluated again: its logits give the first token.

As in llama-server, ``ctx_size`` is the whole KV cache and each slot gets
``ctx_size / parallel`` tokens.
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp as L
import numpy as np

from r1_operator.api.contract import CACHE_TYPES, SAMPLING_DEFAULTS, SERVE_FLAGS
from r1_runtime.llamalog import LoadFailure, captured_log, classify_load_failure, parse_load_report
from r1_runtime.server.textproc import LoopDetector


PROMPT_SIMILARITY = 0.1  # llama-server's --slot-prompt-similarity default


class QueueFull(Exception):
    pass


class PromptTooLong(ValueError):
    pass


@dataclass
class EngineSettings:
    model: str
    n_gpu_layers: int = SERVE_FLAGS["n_gpu_layers"].default
    tensor_split: list[float] | None = None
    ctx_size: int = SERVE_FLAGS["ctx_size"].default
    cache_type_k: str = SERVE_FLAGS["cache_type_k"].default
    cache_type_v: str = SERVE_FLAGS["cache_type_v"].default
    flash_attn: bool = False
    threads: int = 0  # 0: llama.cpp's default
    parallel: int = SERVE_FLAGS["parallel"].default
    n_batch: int = SERVE_FLAGS["n_batch"].default
    seed: int = SAMPLING_DEFAULTS["seed"]
    max_queue: int = SERVE_FLAGS["max_queue"].default
    use_mmap: bool = True


@dataclass
class Sampling:
    temperature: float = SAMPLING_DEFAULTS["temperature"]
    top_p: float = SAMPLING_DEFAULTS["top_p"]
    top_k: int = SAMPLING_DEFAULTS["top_k"]
    min_p: float = SAMPLING_DEFAULTS["min_p"]
    seed: int | None = None
    max_tokens: int = 512
    ignore_eos: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)
    presence_penalty: float = 0.0  # OpenAI's, over the tokens this request generated (llama.cpp's penalties sampler)
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0  # llama.cpp's repetition penalty over the same tokens; 1 is none
    n_probs: int = -1  # >= 0: each token's logprob with this many most likely alternatives (OpenAI's logprobs)
    grammar: str | None = None  # GBNF the output must match (response_format, through structured.grammar_for)


@dataclass
class Job:
    """One generation. `emit` is called from the engine thread with (kind, payload)."""

    prompt: list[int]
    sampling: Sampling
    emit: Callable[[str, dict], None]
    stop_on_loop: bool = False
    deadline: float | None = None  # time.monotonic() after which the job is stopped
    cache_prompt: bool = True  # reuse a slot's cached prefix (llama-server's field); False evaluates the whole prompt
    cancelled: threading.Event = field(default_factory=threading.Event)
    cached: int = 0  # prompt tokens whose KV cells came from the slot's cache, set when a slot takes the job

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class _Slot:
    seq: int
    job: Job | None = None
    sampler: object = None
    n_past: int = 0
    fed: int = 0  # prompt tokens already put in a batch
    last: int = -1  # last sampled token, fed in the next step
    n_gen: int = 0
    batch_idx: int = -1
    admitted: float = 0.0
    first: float = 0.0
    last_t: float = 0.0
    decoder: object = None
    loops: LoopDetector | None = None
    loop_reported: bool = False
    kv: list[int] = field(default_factory=list)  # the tokens the sequence's KV cells hold, position by position
    used_at: float = 0.0  # when its last job left


class LoadOutOfMemory(RuntimeError):
    """llama.cpp could not allocate a buffer while loading (`failure` says which, where and how much)."""

    def __init__(self, failure: LoadFailure, detail: str):
        self.failure = failure
        size = f" of {failure.bytes / (1 << 20):.1f} MiB" if failure.bytes else ""
        super().__init__(f"out of memory loading the model: the {failure.what} on {failure.device} could not be "
                         f"allocated (a request{size}: {failure.line!r}); {detail}")


class Engine:
    def __init__(self, s: EngineSettings, metrics=None, log: Callable[[str], None] = print):
        self.s = s
        self.metrics = metrics
        self.log = log
        self.model = self.ctx = self.vocab = None
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.slots = [_Slot(i) for i in range(s.parallel)]
        self.load_seconds = 0.0
        self.load_log = ""
        self.report = None
        self.after_step: Callable[[], None] = lambda: None  # called after each step's events are emitted
        # one piece buffer per thread: the engine thread detokenizes while request handlers (/tokenize's pieces, a
        # prompt's <think> check) do too, and ctypes lets go of the GIL inside llama_token_to_piece
        self._buffers = threading.local()

    # ---- loading -------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model and create the context, reading llama.cpp's log as it goes: `self.report` says what it
        allocated where; a failed allocation raises LoadOutOfMemory naming it."""
        with captured_log() as lines:
            try:
                self._load()
            except RuntimeError as exc:
                failure = classify_load_failure("".join(lines))
                if failure is not None:
                    raise LoadOutOfMemory(failure, str(exc)) from None
                raise
            finally:
                self.load_log = "".join(lines)
        self.report = parse_load_report(self.load_log)

    def _load(self) -> None:
        started = time.monotonic()
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = self.s.n_gpu_layers
        mp.load_mode = L.LLAMA_LOAD_MODE_MMAP if self.s.use_mmap else L.LLAMA_LOAD_MODE_NONE
        if self.s.tensor_split:
            arr = (ctypes.c_float * L.LLAMA_MAX_DEVICES)(*self.s.tensor_split[: L.LLAMA_MAX_DEVICES])
            self._tensor_split = arr  # keep alive
            mp.tensor_split = arr
        self.model = L.llama_model_load_from_file(self.s.model.encode(), mp)
        if not self.model:
            raise RuntimeError(f"{self.s.model}: llama.cpp could not load the model (see the log above); "
                               "check that the file is a complete GGUF")
        cp = L.llama_context_default_params()
        cp.n_ctx = self.s.ctx_size
        # a step holds one token of every generating slot, so a batch never holds fewer than `parallel`
        self.n_batch = cp.n_batch = max(self.s.n_batch, self.s.parallel)
        cp.n_ubatch = min(cp.n_batch, 512)
        cp.n_seq_max = self.s.parallel
        cp.kv_unified = False
        cp.type_k = CACHE_TYPES[self.s.cache_type_k]
        cp.type_v = CACHE_TYPES[self.s.cache_type_v]
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.s.flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if self.s.threads:
            cp.n_threads = cp.n_threads_batch = self.s.threads
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the context; lower --ctx-size or --parallel, or check "
                               "the cache types (a V-cache type other than f16 needs --flash-attn)")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.mem = L.llama_get_memory(self.ctx)
        self.n_ctx_slot = L.llama_n_ctx_seq(self.ctx)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        self.bos = L.llama_vocab_bos(self.vocab)
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self.load_seconds = time.monotonic() - started

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode()
        cap = len(data) + 8
        arr = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
        if n < 0:
            arr = (L.llama_token * -n)()
            n = L.llama_tokenize(self.vocab, data, len(data), arr, -n, add_special, parse_special)
        return list(arr[:n])

    def token_text(self, token: int, special: bool = True) -> str:
        return self.piece(token, special).decode("utf-8", "replace")

    def piece(self, token: int, special: bool = False) -> bytes:
        buf = getattr(self._buffers, "piece", None)
        if buf is None:
            buf = self._buffers.piece = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def grammar_sampler(self, grammar: str, field: str = "response_format"):
        """llama.cpp's grammar sampler for `grammar`; a ValueError naming `field` when llama.cpp cannot parse it.
        Never a lazy one (llama_sampler_init_grammar_lazy_patterns): when the text a trigger matched does not fit
        the grammar, llama.cpp throws a C++ exception that no Python frame can catch, and the process ends."""
        sampler = L.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not sampler:
            raise ValueError(f"{field}: llama.cpp could not parse the grammar made from it; simplify the schema")
        return sampler

    def check_grammar(self, grammar: str, field: str = "response_format") -> None:
        L.llama_sampler_free(self.grammar_sampler(grammar, field))

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, token))

    # ---- queue -----------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if not job.prompt:  # nothing to decode: no logits would ever come to sample from
            raise ValueError("prompt: it is empty after tokenizing and this model has no BOS token to start from; "
                             "give some text")
        if len(job.prompt) >= self.n_ctx_slot:
            raise PromptTooLong(f"the prompt has {len(job.prompt)} tokens but each sequence holds at most "
                                f"{self.n_ctx_slot - 1} (ctx-size {self.s.ctx_size} / parallel {self.s.parallel}); "
                                "shorten the prompt")
        with self._cv:
            # queued jobs first take the free slots (the engine thread admits them at its next step); beyond those,
            # max_queue may wait
            if len(self._queue) >= self.s.max_queue + sum(sl.job is None for sl in self.slots):
                raise QueueFull()
            self._queue.append(job)
            self._gauges()
            self._cv.notify()

    def queued(self) -> int:
        return len(self._queue)

    def busy(self) -> int:
        return sum(sl.job is not None for sl in self.slots)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llama-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread:
            self._thread.join(timeout=30)

    def close(self) -> None:
        self.stop()
        for sl in self.slots:
            if sl.sampler:
                L.llama_sampler_free(sl.sampler)
                sl.sampler = None
        if self.ctx:
            L.llama_batch_free(self.batch)
            L.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            L.llama_model_free(self.model)
            self.model = None

    # ---- the loop ------------------------------------------------------------------------
    def _gauges(self) -> None:
        if self.metrics is None:
            return
        self.metrics.deferred.set(len(self._queue))
        self.metrics.processing.set(self.busy())
        used = sum(len(sl.kv) for sl in self.slots)  # cached prefixes of free slots hold cells too
        self.metrics.kv_tokens.set(used)
        ratio = used / (self.n_ctx_slot * self.s.parallel)
        self.metrics.kv_usage.set(ratio)
        self.metrics.kv_usage_llamacpp.set(ratio)

    def _admit(self) -> None:
        free = [sl for sl in self.slots if sl.job is None]
        while free and self._queue:
            job = self._queue.popleft()
            if job.cancelled.is_set():
                job.emit("done", {"finish_reason": "cancelled", **self._usage(job, 0)})
                continue
            sl = pick_slot(free, job.prompt if job.cache_prompt else [])
            free.remove(sl)
            self._assign(sl, job)

    def _assign(self, sl: _Slot, job: Job) -> None:
        sp = job.sampling
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if sp.grammar:  # first: every later sampler chooses among the tokens the grammar allows
            L.llama_sampler_chain_add(chain, self.grammar_sampler(sp.grammar))
        if sp.logit_bias:
            arr = (L.llama_logit_bias * len(sp.logit_bias))(*[L.llama_logit_bias(t, b) for t, b in sp.logit_bias.items()])
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_logit_bias(self.n_vocab, len(sp.logit_bias), arr))
        if sp.presence_penalty or sp.frequency_penalty or sp.repeat_penalty != 1.0:
            # before any cut, greedy included: over each token this request generated
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_penalties(
                self.n_vocab, self.n_ctx_slot, sp.repeat_penalty, sp.frequency_penalty, sp.presence_penalty))
        if sp.temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        else:
            if sp.top_k > 0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(sp.top_k))
            if sp.top_p < 1.0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(sp.top_p, 1))
            if sp.min_p > 0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(sp.min_p, 1))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(sp.temperature))
            seed = self.s.seed if sp.seed is None else sp.seed
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        if sl.sampler:
            L.llama_sampler_free(sl.sampler)
        keep = max(0, min(common_prefix(sl.kv, job.prompt), len(job.prompt) - 1)) if job.cache_prompt else 0
        if keep < len(sl.kv) and not L.llama_memory_seq_rm(self.mem, sl.seq, keep, -1):
            L.llama_memory_seq_rm(self.mem, sl.seq, -1, -1)  # a cache that cannot drop a tail drops it all
            keep = 0
        del sl.kv[keep:]
        sl.job, sl.sampler = job, chain
        job.cached = keep
        sl.n_past = sl.fed = keep
        sl.n_gen = 0
        sl.last = -1
        sl.admitted = time.monotonic()
        sl.first = sl.last_t = 0.0
        sl.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        sl.loops = LoopDetector()
        sl.loop_reported = False

    def _run(self) -> None:
        while True:
            with self._cv:
                self._admit()
                while not self._stop and not any(sl.job for sl in self.slots) and not self._queue:
                    self._gauges()
                    self.after_step()  # hand over what admitting emitted (a cancelled queued job's end)
                    self._cv.wait(0.5)
                    self._admit()
                if self._stop:
                    for sl in self.slots:
                        if sl.job:
                            self._finish(sl, "cancelled")
                    self.after_step()
                    return
                self._gauges()
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - a failed decode fails its requests, not the server
                self.log(f"engine step failed: {exc!r}")
                for sl in self.slots:
                    if sl.job:
                        sl.job.emit("error", {"message": f"generation failed: {exc}"})
                        self._release(sl, "error")
            self.after_step()

    def _step(self) -> None:
        now = time.monotonic()
        b = self.batch
        n = 0
        for sl in self.slots:  # cancellations and timeouts first: free their slots now
            if sl.job and (sl.job.cancelled.is_set() or (sl.job.deadline and now > sl.job.deadline)):
                self._finish(sl, "cancelled" if sl.job.cancelled.is_set() else "timeout")
        gen = [sl for sl in self.slots if sl.job and sl.fed == len(sl.job.prompt) and sl.last >= 0]
        for sl in gen:
            b.token[n], b.pos[n], b.n_seq_id[n] = sl.last, sl.n_past, 1
            b.seq_id[n][0], b.logits[n] = sl.seq, True
            sl.batch_idx = n
            sl.kv.append(sl.last)
            n += 1
        budget = self.n_batch - n
        prompting = [sl for sl in self.slots if sl.job and sl.fed < len(sl.job.prompt)]
        for sl in prompting:
            if budget <= 0:
                sl.batch_idx = -1
                continue
            p = sl.job.prompt
            take = min(budget, len(p) - sl.fed)
            for i in range(sl.fed, sl.fed + take):
                b.token[n], b.pos[n], b.n_seq_id[n] = p[i], i, 1
                b.seq_id[n][0] = sl.seq
                b.logits[n] = i == len(p) - 1
                n += 1
            sl.kv.extend(p[sl.fed:sl.fed + take])
            sl.fed += take
            sl.n_past = sl.fed
            budget -= take
            sl.batch_idx = n - 1 if sl.fed == len(p) else -1
        if n == 0:
            return
        b.n_tokens = n
        rc = L.llama_decode(self.ctx, b)
        if self.metrics is not None:
            self.metrics.n_decode.inc()
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        t = time.monotonic()
        for sl in gen:
            sl.n_past += 1
            self._sample(sl, t)
        for sl in prompting:
            if sl.job and sl.batch_idx >= 0 and sl.fed == len(sl.job.prompt):
                self._sample(sl, t)

    def _sample(self, sl: _Slot, t: float) -> None:
        job = sl.job
        tok = L.llama_sampler_sample(sl.sampler, self.ctx, sl.batch_idx)
        if sl.n_gen == 0:
            sl.first = t
        elif self.metrics is not None:
            self.metrics.itl.observe(t - sl.last_t)
        sl.last_t = t
        if self.is_eog(tok) and not job.sampling.ignore_eos:
            self._finish(sl, "stop")
            return
        sl.n_gen += 1
        sl.last = tok
        text = sl.decoder.decode(self.piece(tok))
        looped = sl.loops.add(tok)
        event = {"text": text, "token": tok}
        if job.sampling.n_probs >= 0:
            event["logprob"] = self._logprob(sl.batch_idx, tok, job.sampling.n_probs)
        job.emit("token", event)
        if looped and not sl.loop_reported:
            sl.loop_reported = True
            if self.metrics is not None:
                self.metrics.degenerate.labels("stopped" if job.stop_on_loop else "counted").inc()
            if job.stop_on_loop:
                self._finish(sl, "repetition")
                return
        if sl.n_gen >= job.sampling.max_tokens or sl.n_past + 1 >= self.n_ctx_slot:
            self._finish(sl, "length")

    def _logprob(self, idx: int, tok: int, k: int) -> dict:
        """The model's log-probability of `tok` at batch row `idx` (the log-softmax of its raw logits, before any
        sampler: temperature, penalties and biases change the choice, not the model's distribution), and the k
        most likely tokens with theirs."""
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, idx), shape=(self.n_vocab,))
        m = float(logits.max())
        lse = m + float(np.log(np.exp(logits - m, dtype=np.float64).sum()))
        top = []
        if k:
            ids = np.argpartition(logits, -k)[-k:]
            ids = ids[np.argsort(-logits[ids], kind="stable")]
            top = [self._entry(int(t), float(logits[t]) - lse) for t in ids]
        return {**self._entry(tok, float(logits[tok]) - lse), "top": top}

    def _entry(self, tok: int, logprob: float) -> dict:
        raw = self.piece(tok)
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

    def _usage(self, job: Job, n_gen: int) -> dict:
        return {"prompt_tokens": len(job.prompt), "completion_tokens": n_gen, "cached_tokens": job.cached}

    def _finish(self, sl: _Slot, reason: str) -> None:
        job = sl.job
        tail = sl.decoder.decode(b"", final=True) if sl.decoder else ""
        if self.metrics is not None and sl.first:
            self.metrics.finished(len(job.prompt) - job.cached, sl.first - sl.admitted, sl.n_gen,
                                  max(sl.last_t - sl.first, 0.0), cached=job.cached)
        job.emit("done", {"finish_reason": reason, "tail": tail, **self._usage(job, sl.n_gen),
                          "degenerate": bool(sl.loops and sl.loops.detected)})
        self._release(sl, reason)

    def _release(self, sl: _Slot, reason: str) -> None:
        if reason == "error":  # a failed decode leaves cells of unknown content; otherwise they are kept for reuse
            L.llama_memory_seq_rm(self.mem, sl.seq, -1, -1)
            sl.kv.clear()
        sl.used_at = time.monotonic()
        sl.job = None
        sl.n_past = sl.fed = sl.n_gen = 0
        sl.last = -1
        self._gauges()


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens a and b share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def pick_slot(free: list[_Slot], prompt: list[int]) -> _Slot:
    """The free slot whose cache shares the longest prefix with `prompt`, when that covers more than
    PROMPT_SIMILARITY of it; otherwise the least recently used one (llama-server's choice)."""
    shared, best = max(((common_prefix(sl.kv, prompt), sl) for sl in free), key=lambda x: x[0])
    if prompt and shared > PROMPT_SIMILARITY * len(prompt):
        return best
    return min(free, key=lambda sl: sl.used_at)
