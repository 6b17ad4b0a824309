"""r1-runtime serve through the official openai client, on SmolLM2 (PyPI) and a miniature R1 model."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import subprocess
import time

import httpx
import openai
import pytest
from r1_devtools.serving import R1_RUNTIME, free_port, running_server
from r1_devtools.waiting import wait_for

from r1_runtime.server.generation import CANARY_PROMPT

pytestmark = pytest.mark.llama

PROMPT = [{"role": "user", "content": "Name three colours."}]


def greedy(**extra):
    # no prefix cache: these tests compare greedy answers across requests, and a reused prefix holds cells computed
    # by another CPU kernel, whose rounding can change SmolLM2's greedy answer (tests/serve/test_prefix_cache.py)
    return {"temperature": 0, "extra_body": {"ignore_eos": True, "cache_prompt": False, **extra}}


def test_models_chat_and_completions(smol_server):
    c = smol_server.openai()
    assert [m.id for m in c.models.list().data] == ["r1-test"]
    r = c.chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=12, **greedy())
    assert r.object == "chat.completion"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert r.choices[0].message.content.strip()

    # streaming gives the same greedy text, chunk by chunk, with usage at the end
    chunks = list(c.chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}, **greedy()))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12

    comp = c.completions.create(model="r1-test", prompt="The capital of France is", max_tokens=6, **greedy())
    assert comp.object == "text_completion" and comp.usage.completion_tokens == 6
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="r1-test", prompt="The capital of France is", max_tokens=6, stream=True, **greedy()) if ch.choices)
    assert streamed == comp.choices[0].text

    # echo: the prompt's text, then the same completion
    echoed = c.completions.create(model="r1-test", prompt="The capital of France is", max_tokens=6, echo=True,
                                  **greedy())
    assert echoed.choices[0].text == "The capital of France is" + comp.choices[0].text
    assert "".join(ch.choices[0].text for ch in c.completions.create(
        model="r1-test", prompt="The capital of France is", max_tokens=6, stream=True, echo=True, **greedy())
        if ch.choices) == echoed.choices[0].text
    r = httpx.post(smol_server.v1 + "/completions", json={"prompt": "hi", "echo": True, "logprobs": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo"


def test_n_choices_are_decoded_side_by_side_each_with_its_own_seed(smol_server):
    """n > 1: each choice is its own job in its own slot, sampling with seed + its index; usage counts the prompt
    once and every choice's tokens; streamed, each chunk names its choice; more than --parallel is a 400."""
    c = smol_server.openai()
    kw = dict(model="r1-test", messages=PROMPT, max_tokens=16, temperature=1.0, seed=11,
              extra_body={"ignore_eos": True})
    r = c.chat.completions.create(n=3, **kw)
    assert [ch.index for ch in r.choices] == [0, 1, 2] and all(ch.finish_reason == "length" for ch in r.choices)
    texts = [ch.message.content for ch in r.choices]
    assert len(set(texts)) >= 2, texts  # three seeds: not one answer three times
    assert r.usage.completion_tokens == 3 * 16
    assert r.usage.prompt_tokens == c.chat.completions.create(**kw).usage.prompt_tokens
    assert r.system_fingerprint and r.system_fingerprint.startswith("fp_")

    parts: dict[int, str] = {}
    finished = {}
    chunks = list(c.chat.completions.create(n=2, stream=True, stream_options={"include_usage": True}, **kw))
    for ch in chunks:
        assert ch.system_fingerprint == r.system_fingerprint
        for choice in ch.choices:
            parts[choice.index] = parts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert finished == {0: "length", 1: "length"} and all(parts.values()) and parts[0] != parts[1]
    assert chunks[-1].usage.completion_tokens == 2 * 16

    comp = c.completions.create(model="r1-test", prompt="Once upon a time", n=2, max_tokens=8, temperature=1.0,
                                seed=3, extra_body={"ignore_eos": True})
    assert [ch.index for ch in comp.choices] == [0, 1] and comp.usage.completion_tokens == 16
    r = httpx.post(smol_server.v1 + "/chat/completions", json={"messages": PROMPT, "n": 5, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n" and "--parallel" in r.json()["error"]["message"]

    # a client that leaves an n=2 stream frees both slots
    before = smol_server.metrics()['r1_requests_total{endpoint="chat",outcome="cancelled"}']
    leaving = c.chat.completions.create(n=2, stream=True, **{**kw, "max_tokens": 3000})
    next(iter(leaving))
    wait_for(lambda: smol_server.metrics()["llamacpp:requests_processing"] == 2, 30, "both choices decoding")
    leaving.close()
    wait_for(lambda: smol_server.metrics()["llamacpp:requests_processing"] == 0, 30, "both slots freed")
    assert smol_server.metrics()['r1_requests_total{endpoint="chat",outcome="cancelled"}'] == before + 2


def test_sampling_defaults_and_overrides(smol_server):
    c = smol_server.openai()
    kw = {"model": "r1-test", "messages": PROMPT, "max_tokens": 16}

    def sample(seed: int, **over) -> str:
        extra = {"ignore_eos": True, "cache_prompt": False, **over.pop("extra_body", {})}  # as greedy() says
        return c.chat.completions.create(seed=seed, extra_body=extra, **kw, **over).choices[0].message.content

    default = sample(5)
    assert sample(5) == default  # same seed, same sample
    # the defaults are the blog's (temperature 0.6, min_p 0.05, top_p 1, top_k 0): naming them changes nothing
    assert sample(5, temperature=0.6, top_p=1.0, extra_body={"min_p": 0.05, "top_k": 0}) == default
    # a request's override is used: a hotter sample differs, and temperature 0 is greedy whatever the seed
    assert sample(5, temperature=1.5, extra_body={"min_p": 0.0}) != default
    assert sample(1, temperature=0) == sample(2, temperature=0) != default


def test_eight_concurrent_streams_all_complete_and_match_sequential(smol_server):
    c = smol_server.openai()
    prompts = [[{"role": "user", "content": f"Count from {i} to {i + 10}."}] for i in range(8)]
    solo = [c.chat.completions.create(model="r1-test", messages=p, max_tokens=24, **greedy()).choices[0].message.content
            for p in prompts[:2]]

    def stream(p):
        chunks = list(c.chat.completions.create(model="r1-test", messages=p, max_tokens=24, stream=True,
                                                stream_options={"include_usage": True}, **greedy()))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        return text, finish, chunks[-1].usage.completion_tokens

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(stream, prompts))
    for text, finish, n in results:
        assert finish == ["length"] and n == 24 and text
    # batched decoding (4 slots, 4 queued) gives each sequence the tokens it gets alone
    assert [r[0] for r in results[:2]] == solo


def test_stop_strings_and_max_tokens_cap(smollm2):
    with running_server(smollm2, "--max-tokens-cap", "8") as s:
        c = s.openai()
        r = c.chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=500, **greedy())
        assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"
        full = r.choices[0].message.content
        cut = full.split()[2]
        r2 = c.chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=8, stop=[cut], **greedy())
        assert r2.choices[0].finish_reason == "stop"
        assert cut not in r2.choices[0].message.content and full.startswith(r2.choices[0].message.content)


@pytest.mark.parametrize("body, field", [
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 5}, "n"),  # more than --parallel 4
    ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"abc": 1}}, "logit_bias"),
])
def test_invalid_requests_get_openai_errors_naming_the_field(smol_server, body, field):
    r = httpx.post(smol_server.v1 + "/chat/completions", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["message"].startswith(field)


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("path, extra, field", [
    ("/completions", {"response_format": {"type": "json_object"}}, "response_format"),  # chat's field only
    ("/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),  # chat's field only
    ("/completions", {"best_of": 3}, "best_of"),
    ("/chat/completions", {"temprature": 0.2}, "temprature"),  # a misspelt field is not a silent default
    ("/chat/completions", {"echo": True}, "echo"),  # the legacy completions' field
    ("/completions", {"suffix": " end"}, "suffix"),
    ("/completions", {"n_probs": 3}, "n_probs"),  # llama-server's name for logprobs: the OpenAI field works
])
def test_a_field_the_server_would_ignore_is_refused_naming_it(smol_server, path, extra, field):
    body = {"model": "r1-test", "max_tokens": 2, **({"prompt": "hi"} if path == "/completions" else {"messages": HI})}
    r = httpx.post(smol_server.v1 + path, json={**body, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"], err["type"]) == (field, "unsupported_parameter", "invalid_request_error")
    assert err["message"].startswith(f"{field}: ")


@pytest.mark.parametrize("extra, field", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"functions": [{"name": "f"}], "function_call": "auto"}, "functions"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                   {"role": "tool", "tool_call_id": "c1", "content": "42"}]}, "messages[1].tool_calls"),
])
def test_tools_to_smollm2_are_refused_saying_its_template_has_no_tool_support(smol_server, extra, field):
    """SmolLM2's template never renders tools (nor an assistant's tool_calls): no answer could call one."""
    r = httpx.post(smol_server.v1 + "/chat/completions", json={"messages": HI, "max_tokens": 2, **extra})
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["param"] == field and e["message"].startswith(f"{field}: this model's chat template has no tool support")


def test_fields_that_ask_for_nothing_are_accepted(smol_server):
    c = smol_server.openai()
    r = c.chat.completions.create(model="r1-test", messages=HI, max_tokens=2, presence_penalty=0, frequency_penalty=0,
                                  logprobs=False, response_format={"type": "text"}, user="someone")
    assert r.choices[0].finish_reason in ("length", "stop")


def test_penalties_change_a_repetitive_greedy_answer_and_their_range_is_checked(smol_server):
    """OpenAI's presence and frequency penalties and the repetition penalty (vLLM's and llama-server's names) through
    llama.cpp's penalties sampler: greedy decoding of a prompt
    that invites repetition repeats tokens; at 2.0 the answer changes and repeats fewer."""
    c = smol_server.openai()
    ask = [{"role": "user", "content": "Repeat the word 'apple' twenty times, separated by spaces."}]

    def answer(**kw) -> str:
        return c.chat.completions.create(model="r1-test", messages=ask, max_tokens=48, temperature=0, seed=1,
                                         **kw).choices[0].message.content

    plain = answer()
    assert answer() == plain  # greedy: the same each time
    for kw in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}, {"extra_body": {"repetition_penalty": 1.8}},
               {"extra_body": {"repeat_penalty": 1.8}}):
        penalised = answer(**kw)
        assert penalised != plain, kw
        words = lambda t: t.lower().split()  # noqa: E731
        assert len(set(words(penalised))) / max(len(words(penalised)), 1) > \
            len(set(words(plain))) / max(len(words(plain)), 1), (kw, plain, penalised)
    assert answer(presence_penalty=0, frequency_penalty=0) == plain  # zero asks for nothing
    assert answer(extra_body={"repetition_penalty": 1.0}) == plain  # 1 is none
    for field, bad in (("presence_penalty", 2.5), ("frequency_penalty", 2.5), ("repetition_penalty", 0),
                       ("repeat_penalty", 11)):
        r = httpx.post(smol_server.v1 + "/chat/completions",
                       json={"model": "r1-test", "messages": ask, "max_tokens": 2, field: bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (field, r.text)
    r = httpx.post(smol_server.v1 + "/chat/completions", json={"model": "r1-test", "messages": ask, "max_tokens": 2,
                                                               "repetition_penalty": 1.2, "repeat_penalty": 1.5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "repeat_penalty", r.text


def test_an_unknown_model_is_404_model_not_found(smol_server):
    r = httpx.post(smol_server.v1 + "/chat/completions", json={"model": "gpt-4o", "messages": HI, "max_tokens": 2})
    assert r.status_code == 404
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("model_not_found", "model")
    assert "'r1-test'" in r.json()["error"]["message"]  # says what it serves


def test_developer_is_the_system_role_and_non_text_parts_are_refused(smol_server):
    t = httpx.post(smol_server.url + "/apply-template", json={"messages": [
        {"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "hi"}]}).json()["prompt"]
    s = httpx.post(smol_server.url + "/apply-template", json={"messages": [
        {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hi"}]}).json()["prompt"]
    assert t == s and "Answer in French." in t
    parts = [{"type": "text", "text": "Answer "}, {"type": "text", "text": "in French."}]
    joined = httpx.post(smol_server.url + "/apply-template", json={"messages": [
        {"role": "system", "content": parts}, {"role": "user", "content": "hi"}]}).json()["prompt"]
    assert joined == s
    r = httpx.post(smol_server.v1 + "/chat/completions", json={"model": "r1-test", "max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[1]"
    assert "image_url part" in r.json()["error"]["message"]


def test_prompt_longer_than_the_context_is_400(smol_server):
    c = smol_server.openai()
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="r1-test", messages=[{"role": "user", "content": "word " * 3000}], max_tokens=4)
    body = exc.value.body
    assert body["code"] == "context_length_exceeded"
    assert "the prompt has" in body["message"] and "at most 1023" in body["message"]


def test_queue_overflow_429_and_disconnect_frees_the_slot(smollm2):
    with running_server(smollm2, "--parallel", "1", "--max-queue", "1") as s:
        long = {"model": "r1-test", "messages": PROMPT, "max_tokens": 3000, "stream": True, **greedy()}
        c = s.openai(timeout=60)
        first = c.chat.completions.create(**long)
        next(iter(first))  # the slot is busy
        pool = cf.ThreadPoolExecutor(1)
        queued = pool.submit(lambda: c.chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=4, **greedy()))
        wait_for(lambda: s.metrics()["llamacpp:requests_deferred"] == 1, 30, "one request queued")
        with pytest.raises(openai.RateLimitError) as exc:
            c.chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=4)
        assert exc.value.body["code"] == "queue_full"
        assert int(exc.value.response.headers["retry-after"]) >= 1
        first.close()  # the client goes away mid-stream: its slot goes to the queued request
        assert queued.result(timeout=30).usage.completion_tokens == 4
        m = s.metrics()
        assert m['r1_requests_total{endpoint="chat",outcome="cancelled"}'] == 1
        assert m['r1_requests_total{endpoint="chat",outcome="rejected"}'] == 1
        assert m["llamacpp:requests_processing"] == 0


def test_n_choices_past_the_queue_are_429_at_once_and_leave_no_job_behind(smollm2):
    """With one of two slots busy and no queue, n=2 has room for one choice: a 429, and the choice that found a
    slot is cancelled rather than generated for nobody."""
    with running_server(smollm2, "--parallel", "2", "--max-queue", "0", "--ctx-size", "4096") as s:
        c = s.openai(timeout=60)
        busy = c.chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=3000, stream=True, **greedy())
        next(iter(busy))
        with pytest.raises(openai.RateLimitError):
            c.chat.completions.create(model="r1-test", messages=PROMPT, n=2, max_tokens=3000, **greedy())
        wait_for(lambda: s.metrics()["llamacpp:requests_processing"] == 1, 30, "only the first stream decoding")
        busy.close()
        wait_for(lambda: s.metrics()["llamacpp:requests_processing"] == 0, 30, "every slot free")


def test_a_streaming_client_that_leaves_while_queued_gets_nothing_generated(smollm2):
    """A stream's response starts with its first token, so while queued its handler waits: a client that goes away
    then must still be noticed, or its tokens are generated for nobody when a slot frees."""
    with running_server(smollm2, "--parallel", "1") as s:
        base = s.metrics()["llamacpp:tokens_predicted_total"]
        c = s.openai(timeout=60)
        first = c.chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=200, stream=True, **greedy())
        chunks = iter(first)
        next(chunks)  # the slot is busy
        host, port = s.url.removeprefix("http://").split(":")
        body = json.dumps({"model": "r1-test", "messages": PROMPT, "max_tokens": 300, "stream": True,
                           "ignore_eos": True}).encode()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            wait_for(lambda: s.metrics()["llamacpp:requests_deferred"] == 1, 30, "the second stream queued")
        # its client is gone; the first stream runs on to its end
        got = sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content is not None) + 1
        wait_for(lambda: s.metrics()['r1_requests_total{endpoint="chat",outcome="cancelled"}'] == 1, 30,
                 "the queued stream counted as cancelled")
        wait_for(lambda: s.metrics()["llamacpp:requests_processing"] == 0, 30, "the engine idle")
        m = s.metrics()
        assert m["llamacpp:requests_deferred"] == 0
        assert m["llamacpp:tokens_predicted_total"] - base == 200, got  # the first stream's tokens, none beyond


def test_api_key_protects_the_api_but_not_probes(smollm2):
    with running_server(smollm2, env={"R1_API_KEY": "sekret-key-1"}) as s:
        with pytest.raises(openai.AuthenticationError):
            s.openai(api_key="wrong").models.list()
        assert s.openai(api_key="sekret-key-1").models.list().data
        for headers in ({}, {"Authorization": "Bearer sekret-key"}, {"Authorization": "sekret-key-1"}):
            r = httpx.post(s.v1 + "/chat/completions", json={"messages": PROMPT}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (headers, r.text)
        stream = s.openai(api_key="sekret-key-1").chat.completions.create(
            model="r1-test", messages=PROMPT, max_tokens=8, stream=True, **greedy())
        assert sum(1 for c in stream if c.choices and c.choices[0].delta.content) == 8
        for path in ("/health", "/ready", "/metrics"):
            assert httpx.get(s.url + path).status_code == 200
        assert "sekret-key-1" not in s.log.read_text()


def test_metrics_port_serves_the_same_counters_and_no_api(smollm2):
    """--metrics-port: the exposition alone on its own port (the NetworkPolicy opens it to the monitoring namespace
    only), the same registry as /metrics on the API port, and no API behind it."""
    from r1_operator.dev.processes import free_port

    mport = free_port()
    with running_server(smollm2, "--metrics-port", str(mport), env={"R1_API_KEY": "sekret-key-2"}) as s:
        s.openai(api_key="sekret-key-2").chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=4, **greedy())
        alone = httpx.get(f"http://127.0.0.1:{mport}/metrics").text
        on_api = httpx.get(s.url + "/metrics").text

        def samples(text: str, prefix: str) -> list[str]:
            return sorted(line for line in text.splitlines() if line.startswith(prefix))

        for prefix in ("r1_requests_total{", "llamacpp:tokens_predicted_total "):
            assert samples(alone, prefix) and samples(alone, prefix) == samples(on_api, prefix), prefix
        assert sum(float(line.rsplit(" ", 1)[1]) for line in samples(alone, "r1_requests_total{")) == 1
        assert float(samples(alone, "llamacpp:tokens_predicted_total ")[0].rsplit(" ", 1)[1]) >= 4
        for path in ("/v1/models", "/health"):
            assert httpx.get(f"http://127.0.0.1:{mport}{path}").status_code == 404
        # what a Prometheus asks for (OpenMetrics first): the same names as on the API port, colons and all
        om = httpx.get(f"http://127.0.0.1:{mport}/metrics", headers={"Accept": "application/openmetrics-text"})
        assert om.headers["content-type"].startswith("text/plain; version=0.0.4") and "llamacpp:" in om.text
    same = subprocess.run([R1_RUNTIME, "serve", "--model", str(smollm2), "--port", "8080", "--metrics-port", "8080"],
                          capture_output=True, text=True, timeout=60)
    assert same.returncode != 0 and "--metrics-port 8080 is --port" in same.stderr


def test_bad_input_gets_a_clear_4xx_or_a_normal_answer_never_a_500_or_a_hang(smol_server):
    u, t = smol_server.url, 20  # every request is bounded: a hang fails the test
    for stream in (False, True):  # an empty prompt starts from BOS (it used to spin the engine loop forever)
        r = httpx.post(u + "/v1/completions", json={"prompt": "", "max_tokens": 3, "stream": stream}, timeout=t)
        assert r.status_code == 200 and ("[DONE]" in r.text if stream else r.json()["usage"]["completion_tokens"] >= 1)
    surrogate = {"/v1/completions": '{"prompt": "a\\ud800b"}', "/tokenize": '{"content": "a\\ud800b"}',
                 "/apply-template": '{"messages": [{"role": "user", "content": "a\\ud800"}]}',
                 "/v1/chat/completions": '{"messages": [{"role": "user", "content": "a\\ud800"}]}'}
    for path, body in surrogate.items():
        r = httpx.post(u + path, content=body, headers={"Content-Type": "application/json"}, timeout=t)
        assert r.status_code == 400 and "lone surrogate" in r.json()["error"]["message"], (path, r.text)
    r = httpx.post(u + "/v1/completions", content=b'{"prompt": "a\xff\xfe", "max_tokens": 2}',
                   headers={"Content-Type": "application/json"}, timeout=t)
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]["message"]
    r = httpx.post(u + "/v1/completions", json={"prompt": "a\u0000b", "max_tokens": 2}, timeout=t)
    assert r.status_code == 200
    for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405)):
        r = httpx.request(method, u + path, timeout=t)
        assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}
    # the README's curl example: -d without a Content-Type header (curl sends form-urlencoded)
    r = httpx.post(u + "/v1/chat/completions", content='{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2}',
                   headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=t)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    model_id = smol_server.openai().models.list().data[0].id
    assert smol_server.openai().models.retrieve(model_id).id == model_id
    r = httpx.get(u + "/v1/models/no-such-model", timeout=t)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    out = smol_server.openai().chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=2, top_p=0)
    assert out.usage.completion_tokens >= 1  # top_p 0 is accepted, as by OpenAI
    assert httpx.get(u + "/health", timeout=t).status_code == 200


def test_the_queue_bound_holds_when_many_clients_arrive_at_once(smollm2):
    """16 clients at once, 4 slots and --max-queue 4: 4 run, 4 wait, and 8 get 429 with Retry-After (before, every
    request arriving before the engine's next step saw free slots and was queued)."""
    with running_server(smollm2, "--parallel", "4", "--max-queue", "4", "--ctx-size", "4096") as s:
        def one(_):
            return httpx.post(s.v1 + "/chat/completions", json={"messages": PROMPT, "max_tokens": 200,
                                                               "temperature": 0}, timeout=120)
        with cf.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(16)))
    ok = [r for r in answers if r.status_code == 200]
    busy = [r for r in answers if r.status_code == 429]
    assert len(ok) + len(busy) == 16 and len(ok) <= 8 and len(busy) >= 8, [r.status_code for r in answers]
    assert all(r.headers.get("Retry-After") and r.json()["error"]["code"] == "queue_full" for r in busy)


def test_size_limits_come_before_any_work_and_health_answers_while_a_big_chat_is_templated(smollm2):
    """--max-request-bytes and --max-messages answer 413 / 400 naming the setting; a chat of 16,000 messages (under
    both) is templated and tokenized beside the event loop, so /health keeps answering (it was blocked 14 s)."""
    with running_server(smollm2, "--max-request-bytes", str(4 << 20), "--max-messages", "20000",
                        "--ctx-size", "4096") as s:
        many = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(16000)]
        huge = [{"role": "user", "content": "x"}] * 150000  # 13.5 MB as JSON: refused by its size
        r = httpx.post(s.v1 + "/chat/completions", json={"messages": huge, "max_tokens": 1}, timeout=30)
        assert r.status_code == 413 and "--max-request-bytes" in r.json()["error"]["message"]
        r = httpx.post(s.v1 + "/chat/completions", content=iter([json.dumps({"messages": huge}).encode()]),
                       headers={"Content-Type": "application/json"}, timeout=30)  # chunked: no Content-Length
        assert r.status_code == 413
        latencies: list[float] = []
        with cf.ThreadPoolExecutor(1) as pool:
            big = pool.submit(httpx.post, s.v1 + "/chat/completions", json={"messages": many, "max_tokens": 1},
                              timeout=120)
            while not big.done():
                t = time.perf_counter()
                assert httpx.get(s.url + "/health", timeout=10).status_code == 200
                latencies.append(time.perf_counter() - t)
                time.sleep(0.02)
        assert big.result().status_code == 400  # 16,000 messages are far beyond the 4,096-token context
        assert "context" in big.result().json()["error"]["message"] or "tokens" in big.result().json()["error"]["message"]
        # blocked, /health waited for the whole templating (14 s); a loaded CI machine may still take a moment
        assert len(latencies) >= 5 and max(latencies) < 2.0, (len(latencies), max(latencies))
    with running_server(smollm2, "--max-messages", "10") as s:
        r = httpx.post(s.v1 + "/chat/completions", json={"messages": many[:11], "max_tokens": 1}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_messages"
        assert "--max-messages" in r.json()["error"]["message"]


def test_request_timeout_is_504(smollm2):
    with running_server(smollm2, "--request-timeout", "0.5") as s:
        with pytest.raises(openai.InternalServerError) as exc:
            s.openai().chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=3000, **greedy())
        assert exc.value.status_code == 504 and "request-timeout" in exc.value.body["message"]
        assert s.metrics()['r1_requests_total{endpoint="chat",outcome="timeout"}'] == 1


def test_openapi_schema_lists_the_endpoints(smol_server):
    paths = httpx.get(smol_server.url + "/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/ready", "/metrics"} <= set(paths)


def test_loop_guard_counts_and_stops_loops(smol_server):
    """SmolLM2 under greedy decoding repeats one sentence over and over: the blog's failure mode, for real."""
    c = smol_server.openai()
    loops = [{"role": "user", "content": CANARY_PROMPT}]
    before = smol_server.metrics()
    r = c.chat.completions.create(model="r1-test", messages=loops, max_tokens=400, temperature=0)
    assert r.choices[0].finish_reason == "length"
    mid = smol_server.metrics()
    assert mid['r1_degenerate_generations_total{action="counted"}'] == before[
        'r1_degenerate_generations_total{action="counted"}'] + 1
    r = c.chat.completions.create(model="r1-test", messages=loops, max_tokens=400, temperature=0, extra_body={"stop_on_loop": True})
    assert r.choices[0].finish_reason == "repetition"
    assert r.usage.completion_tokens < 400
    after = smol_server.metrics()
    assert after['r1_degenerate_generations_total{action="stopped"}'] == mid[
        'r1_degenerate_generations_total{action="stopped"}'] + 1
    assert after['r1_requests_total{endpoint="chat",outcome="degenerate"}'] >= 1


# ---- the miniature R1: template, BOS, reasoning_content, loops -------------------------------

def test_r1_reasoning_content_is_split_from_content(r1_server):
    c = r1_server.openai()
    r = c.chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=20, **greedy())
    msg = r.choices[0].message
    # R1's template ends the prompt with "<think>\n": everything until </think> is reasoning
    assert msg.reasoning_content and msg.content == ""
    chunks = list(c.chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=20, stream=True, **greedy()))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == msg.reasoning_content
    assert "".join(d.content or "" for d in deltas) == ""


def test_r1_closing_think_tag_moves_output_to_content(r1_server):
    """Bias the </think> token so the model emits it: text after it is content, before it reasoning."""
    tok = httpx.post(r1_server.url + "/tokenize", json={"content": "</think>", "parse_special": True}).json()["tokens"]
    assert len(tok) == 1
    c = r1_server.openai()
    r = c.chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=6, temperature=0,
                                  logit_bias={str(tok[0]): 100}, extra_body={"ignore_eos": True})
    msg = r.choices[0].message
    assert msg.reasoning_content == ""  # the first token closed the block
    assert msg.content == "</think>" * 5  # later tags are plain content


def test_r1_prompt_has_exactly_one_bos(r1_server):
    applied = httpx.post(r1_server.url + "/apply-template", json={"messages": PROMPT}).json()
    assert applied["prompt"].startswith("<｜begin▁of▁sentence｜><｜User｜>Name three colours.<｜Assistant｜><think>\n")
    tokens = httpx.post(r1_server.url + "/tokenize", json={"content": applied["prompt"], "as_prompt": True}).json()["tokens"]
    bos = tokens[0]
    assert tokens.count(bos) == 1
    r = r1_server.openai().chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=1, **greedy())
    assert r.usage.prompt_tokens == len(tokens)
    # a raw completion prompt that already starts with the BOS text gets no second BOS
    comp = r1_server.openai().completions.create(model="r1-test", prompt=applied["prompt"], max_tokens=1, **greedy())
    assert comp.usage.prompt_tokens == len(tokens)


def test_r1_info_metric_and_load_seconds(r1_server):
    m = r1_server.metrics()
    info = [k for k in m if k.startswith("r1_runtime_info{")]
    assert len(info) == 1
    labels = dict(kv.split("=", 1) for kv in info[0][len("r1_runtime_info{"):-1].split(","))
    assert json.loads(labels["variant"]) == "UD-IQ1_S" and json.loads(labels["ctx"]) == "2048"
    assert json.loads(labels["parallel"]) == "2" and json.loads(labels["n_gpu_layers"]) == "0"
    assert m["r1_model_load_seconds"] > 0 and m["r1_ready"] == 1


def test_canary_that_loops_keeps_the_runtime_unready(smollm2):
    """The same model passes with the blog's sampling (next test) and loops with greedy decoding."""
    with running_server(smollm2, "--canary", "--temperature", "0", ready=False) as s:
        wait_for(lambda: httpx.get(s.url + "/ready").json()["status"] != "loading"
                 and httpx.get(s.url + "/ready").json()["status"] != "warming", 60, "canary finished")
        r = httpx.get(s.url + "/ready")
        assert r.status_code == 503 and "canary generation loops" in r.json()["reason"]
        assert httpx.get(s.url + "/health").status_code == 200
        m = s.metrics()
        assert m['r1_degenerate_generations_total{action="canary"}'] == 1 and m["r1_ready"] == 0
        err = httpx.post(s.v1 + "/chat/completions", json={"messages": PROMPT}).json()["error"]
        assert err["code"] == "model_not_ready"


def test_canary_on_a_sound_model_passes(smollm2):
    with running_server(smollm2, "--canary") as s:
        assert httpx.get(s.url + "/ready").status_code == 200
        assert s.metrics()['r1_degenerate_generations_total{action="canary"}'] == 0


def test_serves_shard_1_of_a_split_set(tmp_path):
    """--model may name shard 1 of a split set; llama.cpp finds the other shards next to it."""
    from r1_devtools.testmodel import write_test_model

    shards = write_test_model(tmp_path / "DeepSeek-R1-UD-IQ1_S.gguf", n_shards=3, seed=5)
    (whole,) = write_test_model(tmp_path / "whole" / "DeepSeek-R1-UD-IQ1_S.gguf", seed=5)
    answers = []
    for model in (shards[0], whole):
        with running_server(model) as s:
            r = s.openai().chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=12, **greedy())
            answers.append(r.choices[0].message.reasoning_content)
    assert answers[0] and answers[0] == answers[1]


def test_a_fault_of_the_server_is_a_500_in_openais_shape_and_logged(smollm2, tmp_path):
    """No request known here makes the server fail, so one is made to: the real server process, with the tool
    field check replaced by one that raises (the only stand-in in this file)."""
    import sys

    code = ("import sys\nimport r1_runtime.server.app as app\n"
            "def boom(*a, **k):\n    raise RuntimeError('a deliberate fault')\n"
            "app.tool_request = boom\nfrom r1_runtime.cli import main\nsys.argv = ['r1-runtime', *sys.argv[1:]]\n"
            "sys.exit(main())\n")
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--model", str(smollm2), "--host", "127.0.0.1",
                                 "--port", str(port), "--threads", "1", "--ctx-size", "512"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url + "/ready"), 60, "the server to be ready")
        r = httpx.post(url + "/v1/chat/completions", json={"messages": HI})
        assert r.status_code == 500
        assert r.json()["error"] == {"message": "internal error (RuntimeError); the server's log has the traceback",
                                     "type": "server_error", "param": None, "code": "internal_error"}
        assert httpx.get(url + "/health").status_code == 200
        wait_for(lambda: "RuntimeError: a deliberate fault" in log.read_text(), 10, "the traceback in the log")
    finally:
        proc.terminate()
        proc.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
