"""SIGTERM drain, and /metrics scraped by a real Prometheus with counters matching what clients saw."""

from __future__ import annotations

import concurrent.futures as cf
import signal
import time

import httpx
import openai
import pytest
from r1_devtools.serving import free_port, running_server
from r1_devtools.waiting import wait_for
from r1_devtools.prom import running_prometheus

pytestmark = pytest.mark.llama

PROMPT = [{"role": "user", "content": "Tell me about rivers."}]


def _stream(client, n, started):
    chunks = []
    for ch in client.chat.completions.create(model="r1-test", messages=PROMPT, max_tokens=n, stream=True, temperature=0,
                                             stream_options={"include_usage": True}, extra_body={"ignore_eos": True}):
        chunks.append(ch)
        started.append(1)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return finish, chunks[-1].usage.completion_tokens


def test_sigterm_finishes_in_flight_streams_then_exits(smollm2):
    with running_server(smollm2, "--parallel", "2", "--shutdown-grace", "60") as s:
        c = s.openai(timeout=60)
        started: list[int] = []
        with cf.ThreadPoolExecutor(2) as pool:
            futs = [pool.submit(_stream, c, 150, started) for _ in range(2)]
            wait_for(lambda: len(started) >= 4, 30, "both streams under way")
            s.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: _refused(s.url), 10, "the listener closed")
            results = [f.result(timeout=60) for f in futs]
        assert results == [(["length"], 150), (["length"], 150)]  # nothing cut short
        assert s.proc.wait(timeout=30) == 0
        log = s.log.read_text()
        assert "draining 2 running" in log and "stopped" in log


def test_sigterm_grace_period_bounds_the_drain(smollm2):
    with running_server(smollm2, "--shutdown-grace", "1") as s:
        c = s.openai(timeout=60)
        started: list[int] = []
        with cf.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(_stream, c, 100_000, started)
            wait_for(lambda: len(started) >= 2, 30, "stream under way")
            t0 = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            assert s.proc.wait(timeout=30) == 0
            assert time.monotonic() - t0 < 10
            # the stream is cut after the grace period: the connection closes before the SSE stream's end
            with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
                fut.result(timeout=30)


def _refused(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=1)
        return False
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False


def test_prometheus_scrape_matches_client_usage(smollm2):
    with running_server(smollm2, "--parallel", "4") as s:
        port = s.url.rsplit(":", 1)[1]
        with running_prometheus([f"127.0.0.1:{port}"], free_port()) as prom:
            base_pred = prom.value("llamacpp:tokens_predicted_total")
            base_prompt = prom.value("llamacpp:prompt_tokens_total")
            base_cached = prom.value("r1_prompt_cached_tokens_total")
            c = s.openai()
            seen = {"prompt": 0, "completion": 0, "cached": 0}

            def one(i):
                r = c.chat.completions.create(model="r1-test", messages=[{"role": "user", "content": f"Say {i}."}],
                                              max_tokens=10 + i)
                return r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.prompt_tokens_details.cached_tokens

            with cf.ThreadPoolExecutor(6) as pool:
                for p, n, cached in pool.map(one, range(6)):
                    seen["prompt"] += p
                    seen["completion"] += n
                    seen["cached"] += cached
            assert seen["cached"] > 0  # six chats sharing a template's opening: the later ones reuse a slot's prefix
            want_pred = base_pred + seen["completion"]
            want_prompt = base_prompt + seen["prompt"] - seen["cached"]  # llama-server's: the tokens evaluated
            wait_for(lambda: prom.value("llamacpp:tokens_predicted_total") == want_pred, 30,
                     f"Prometheus to scrape tokens_predicted_total == {want_pred}")
            assert prom.value("llamacpp:prompt_tokens_total") == want_prompt
            assert prom.value("r1_prompt_cached_tokens_total") == base_cached + seen["cached"]
            assert prom.value('sum(r1_requests_total{outcome=~"success|length"})') >= 6
            assert prom.value("histogram_quantile(0.5, sum by (le) (r1_time_to_first_token_seconds_bucket))") > 0
            assert prom.value("llamacpp:n_decode_total") > 0
