"""The llama-server endpoints that tools rely on, in llama-server's shapes: /tokenize (with pieces), /detokenize,
/props (read-only), /slots (read-only, with --slots), and /models beside /v1/models. SmolLM2, a real model."""

from __future__ import annotations

import threading

import httpx
import pytest
from r1_devtools.serving import running_server
from r1_devtools.waiting import wait_for

TEXT = "Llamas 🦙 graze at 4,000 m."


@pytest.fixture(scope="module")
def slots_server(smollm2):
    with running_server(smollm2, "--parallel", "2", "--ctx-size", "8192", "--slots", "--temperature", "0.3",
                        "--max-tokens-cap", "3000") as s:
        yield s


def test_tokenize_with_pieces_and_detokenize_round_trip(slots_server):
    url = slots_server.url
    ids = httpx.post(url + "/tokenize", json={"content": TEXT}).json()["tokens"]
    pieces = httpx.post(url + "/tokenize", json={"content": TEXT, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == ids
    # a piece is its text, or its bytes when they are not UTF-8 alone (the llama's four bytes span tokens)
    assert any(isinstance(p["piece"], list) for p in pieces), pieces
    raw = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert raw.decode() == TEXT
    assert httpx.post(url + "/detokenize", json={"tokens": ids}).json() == {"content": TEXT}
    r = httpx.post(url + "/detokenize", json={"tokens": [ids[0], 10 ** 7]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens[1]"
    r = httpx.post(url + "/tokenize", json={"content": TEXT, "with_piece": True})  # a misspelling is not ignored
    assert r.status_code == 400 and r.json()["error"]["param"] == "with_piece"


def test_props_are_the_servers_own_settings_and_read_only(slots_server):
    props = httpx.get(slots_server.url + "/props").json()
    assert props["total_slots"] == 2 and props["default_generation_settings"]["n_ctx"] == 4096
    params = props["default_generation_settings"]["params"]
    assert params["temperature"] == 0.3 and params["max_tokens"] == 3000
    assert props["model_alias"] == "r1-test" and props["model_path"].endswith(".gguf")
    assert "<|im_start|>" in props["chat_template"] and props["eos_token"] == "<|im_end|>"
    assert props["endpoint_slots"] is True and props["chat_template_caps"] == {"supports_tools": False}
    r = httpx.post(slots_server.url + "/props", json={"n_ctx": 1})
    assert r.status_code == 501 and r.json()["error"]["type"] == "not_supported_error"
    assert httpx.get(slots_server.url + "/models").json() == httpx.get(slots_server.v1 + "/models").json()


def test_slots_show_each_slots_work_without_its_text(slots_server):
    url = slots_server.url
    idle = httpx.get(url + "/slots").json()
    assert [s["id"] for s in idle] == [0, 1] and not any(s["is_processing"] for s in idle)
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 2500,
            "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", slots_server.v1 + "/chat/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        next(lines)
        busy = wait_for(lambda: [s for s in httpx.get(url + "/slots").json() if s["is_processing"]
                                 and s["next_token"][0]["n_decoded"] > 5] or None, 30, "a slot decoding")
        (s,) = busy
        assert s["params"]["max_tokens"] == 2500 and s["params"]["temperature"] == 0
        assert s["next_token"][0]["n_remain"] == 2500 - s["next_token"][0]["n_decoded"]
        assert s["n_prompt_tokens"] > 5 and "prompt" not in s and "generated" not in s
        assert httpx.get(url + "/slots?fail_on_no_slot=1").status_code == 200  # the other slot is free
        second = threading.Thread(target=lambda: httpx.post(slots_server.v1 + "/chat/completions",
                                                            json={**body, "stream": False, "max_tokens": 400},
                                                            timeout=120))
        second.start()
        wait_for(lambda: all(s["is_processing"] for s in httpx.get(url + "/slots").json()), 30, "both slots busy")
        r2 = httpx.get(url + "/slots?fail_on_no_slot=1")
        assert r2.status_code == 503 and r2.json()["error"]["code"] == "no_slot_available"
    second.join(120)


def test_slots_are_opt_in(smol_server):
    r = httpx.get(smol_server.url + "/slots")
    assert r.status_code == 501 and "--slots" in r.json()["error"]["message"]
    assert httpx.get(smol_server.url + "/props").json()["endpoint_slots"] is False


def test_pieces_asked_for_while_a_generation_runs_do_not_change_its_text(slots_server):
    """The engine thread and /tokenize's pieces both turn tokens into text through llama.cpp, which runs without
    the GIL: each thread has its own buffer, so neither reads the other's piece."""
    body = {"messages": [{"role": "user", "content": "Describe a lighthouse."}], "max_tokens": 300,
            "temperature": 0, "ignore_eos": True, "cache_prompt": False}
    alone = httpx.post(slots_server.v1 + "/chat/completions", json=body, timeout=120).json()
    stop = threading.Event()
    other = "Zebras 🦓 quietly ◊ cross ✓ rivers " * 200

    def hammer():
        while not stop.is_set():
            httpx.post(slots_server.url + "/tokenize", json={"content": other, "with_pieces": True}, timeout=30)

    workers = [threading.Thread(target=hammer) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        busy = httpx.post(slots_server.v1 + "/chat/completions", json=body, timeout=120).json()
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert busy["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]
