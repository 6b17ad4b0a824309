"""logprobs through the official openai client on SmolLM2: chat (logprobs, top_logprobs) and completions
(logprobs: k), streaming and not.

What would break: logprobs null or empty while asked for; tokens that do not spell the answer; figures that are not
the model's (checked against llama-cpp-python's own evaluation of the same prompt in this process); alternatives
unsorted, or a greedy choice that is not the most likely token.
"""

from __future__ import annotations

import math

import httpx
import llama_cpp
import numpy as np
import pytest

from r1_operator.api.contract import CACHE_TYPES, SERVE_FLAGS

pytestmark = pytest.mark.llama

ASK = [{"role": "user", "content": "Name three colours."}]


def test_chat_logprobs_spell_the_answer_and_are_the_models_own(smol_server, smollm2):
    c = smol_server.openai()
    r = c.chat.completions.create(model="r1-test", messages=ASK, max_tokens=12, temperature=0, logprobs=True,
                                  top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    assert "".join(e.token for e in entries) == r.choices[0].message.content
    for e in entries:
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token
        assert len(e.top_logprobs) == 3
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True) and all(t <= 0 for t in tops)
        assert sum(math.exp(t) for t in tops) <= 1 + 1e-6
        assert (e.top_logprobs[0].token, e.top_logprobs[0].logprob) == (e.token, e.logprob)  # greedy: the argmax

    # the first token's figure from llama.cpp evaluating the same prompt here, independently of the server
    text = httpx.post(smol_server.url + "/apply-template", json={"messages": ASK}).json()["prompt"]
    tokens = httpx.post(smol_server.url + "/tokenize", json={"content": text, "as_prompt": True}).json()["tokens"]
    llm = llama_cpp.Llama(str(smollm2), n_ctx=512, logits_all=True, type_k=CACHE_TYPES[SERVE_FLAGS["cache_type_k"].default],
                          verbose=False)  # the K cache type the server runs with
    llm.eval(tokens)
    logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
    want = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    first = int(np.argmax(want))
    assert llm.detokenize([first]).decode() == entries[0].token
    assert entries[0].logprob == pytest.approx(want[first], abs=0.05)
    second = int(np.argsort(-want)[1])
    assert entries[0].top_logprobs[1].logprob == pytest.approx(want[second], abs=0.05)


def test_sampled_tokens_carry_their_own_logprob(smol_server):
    r = smol_server.openai().chat.completions.create(model="r1-test", messages=ASK, max_tokens=16, temperature=1.5,
                                                     seed=3, logprobs=True)
    entries = r.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == r.choices[0].message.content
    assert all(e.top_logprobs == [] and e.logprob <= 0 for e in entries)
    assert len({round(e.logprob, 4) for e in entries}) > 1  # figures per token, not one repeated value


def test_streamed_chat_logprobs_arrive_with_their_tokens(smol_server):
    stream = smol_server.openai().chat.completions.create(
        model="r1-test", messages=ASK, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2, stream=True,
        stream_options={"include_usage": True})
    text, entries, usage = "", [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            if chunk.choices[0].logprobs:
                entries += chunk.choices[0].logprobs.content
    assert len(entries) == usage.completion_tokens and "".join(e.token for e in entries) == text
    assert all(len(e.top_logprobs) == 2 for e in entries)


def test_completions_logprobs_in_the_legacy_shape(smol_server):
    c = smol_server.openai()
    r = c.completions.create(model="r1-test", prompt="The capital of France is", max_tokens=8, temperature=0,
                             logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.token_logprobs) == r.usage.completion_tokens
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for tok, p, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 2 and max(top.values()) == pytest.approx(p) and top.get(tok) == pytest.approx(p)
    chunks = list(c.completions.create(model="r1-test", prompt="The capital of France is", max_tokens=8,
                                       temperature=0, logprobs=2, stream=True))
    streamed = [t for ch in chunks if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    assert streamed == lp.tokens


def test_logprobs_bounds_and_top_logprobs_without_logprobs_are_refused(smol_server):
    base = {"model": "r1-test", "messages": ASK, "max_tokens": 2}
    for extra, field in (({"top_logprobs": 2}, "top_logprobs"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs")):
        r = httpx.post(smol_server.v1 + "/chat/completions", json={**base, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    r = httpx.post(smol_server.v1 + "/completions", json={"model": "r1-test", "prompt": "hi", "logprobs": 6})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs", r.text
    r = httpx.post(smol_server.v1 + "/chat/completions", json={**base, "logprobs": False})
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is None
