"""Prefix caching across requests (llama-server's cache_prompt), through the official openai client on SmolLM2.

A freed slot keeps its KV cells; the next request whose prompt shares a prefix with them takes that slot and
evaluates only the rest. What would break: cached_tokens stays 0 (nothing reused), the answer changes when the
prefix is reused (cells at the wrong positions, or a tail not removed), or two interleaved conversations evict
each other's caches (the wrong slot chosen).
"""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest
from r1_devtools.serving import running_server

from r1_runtime.server.engine import PROMPT_SIMILARITY, _Slot, common_prefix, pick_slot

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def two_slots(smollm2):
    """Two slots; --n-batch 1 below --parallel 2 also checks that a step holds a token of every generating slot."""
    with running_server(smollm2, "--parallel", "2", "--n-batch", "1", "--ctx-size", "4096") as s:
        yield s


@pytest.fixture(scope="module")
def one_token_a_call(smollm2):
    """One slot, one token per llama_decode call. A reused prefix holds generated tokens, whose KV cells were
    computed one token a call; a prompt evaluated many tokens a call takes another CPU kernel whose rounding
    differs, and greedy SmolLM2 then answers differently (llama-server's own cache does the same). With one token
    a call both ways, the answer with the cache must equal the answer without it, token for token."""
    with running_server(smollm2, "--parallel", "1", "--n-batch", "1", "--ctx-size", "4096") as s:
        yield s


def prompt_tokens(server, messages) -> list[int]:
    text = httpx.post(server.url + "/apply-template", json={"messages": messages}).json()["prompt"]
    return httpx.post(server.url + "/tokenize", json={"content": text, "as_prompt": True}).json()["tokens"]


def chat(server, messages, **extra):
    return server.openai().chat.completions.create(model="r1-test", messages=messages, max_tokens=24,
                                                   temperature=0, extra_body=extra or None)


def test_the_second_turn_reuses_the_first_and_answers_the_same_as_without_the_cache(one_token_a_call):
    s = one_token_a_call
    turn1 = [{"role": "system", "content": "You are terse. " * 40},
             {"role": "user", "content": "Name three rivers of Europe."}]
    first = chat(s, turn1)
    assert first.usage.prompt_tokens_details.cached_tokens < len(prompt_tokens(s, turn1))
    turn2 = turn1 + [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "And three mountains?"}]
    p1, p2 = prompt_tokens(s, turn1), prompt_tokens(s, turn2)
    shared = common_prefix(p1, p2)
    assert shared > 200  # the long system prompt and the first question

    cached = chat(s, turn2)
    assert cached.usage.prompt_tokens == len(p2)
    assert shared <= cached.usage.prompt_tokens_details.cached_tokens < len(p2)
    fresh = chat(s, turn2, cache_prompt=False)
    assert fresh.usage.prompt_tokens_details.cached_tokens == 0
    assert cached.choices[0].message.content == fresh.choices[0].message.content  # same greedy answer

    again = chat(s, turn2)  # the whole prompt is cached now but its last token: evaluated again for its logits
    assert again.usage.prompt_tokens_details.cached_tokens == len(p2) - 1
    assert again.choices[0].message.content == fresh.choices[0].message.content


def test_two_interleaved_conversations_each_keep_their_slot(two_slots):
    s = two_slots
    convs = [[{"role": "system", "content": f"You answer about {topic}. " * 30},
              {"role": "user", "content": f"One fact about {topic}?"}] for topic in ("cats", "ships")]
    for conv in convs:
        conv.append({"role": "assistant", "content": chat(s, conv).choices[0].message.content})
    for turn in range(2):  # A, B, then B, A: B's second follow-up finds its slot although A's is the older one
        for conv in (convs if turn == 0 else convs[::-1]):
            conv.append({"role": "user", "content": f"Another one ({turn})?"})
            r = chat(s, conv)
            assert r.usage.prompt_tokens_details.cached_tokens > 0.8 * r.usage.prompt_tokens, (turn, r.usage)
            conv.append({"role": "assistant", "content": r.choices[0].message.content})


def test_two_slots_generate_at_once_with_a_batch_smaller_than_the_slots(two_slots):
    with cf.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda i: chat(two_slots, [{"role": "user", "content": f"Count to {i + 5}."}]),
                                range(2)))
    assert all(a.choices[0].finish_reason in ("stop", "length") and a.usage.completion_tokens > 0 for a in answers)


def test_streaming_usage_reports_cached_tokens(two_slots):
    s = two_slots
    msgs = [{"role": "user", "content": "Spell the word 'cache' backwards. " * 20}]
    chat(s, msgs)
    stream = s.openai().chat.completions.create(model="r1-test", messages=msgs, max_tokens=8, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
    usage = [c.usage for c in stream if c.usage][-1]
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1


def test_slot_choice_longest_shared_prefix_else_least_recently_used():
    a, b, c = _Slot(0, kv=[1, 2, 3, 4, 5], used_at=3.0), _Slot(1, kv=[1, 2, 9], used_at=1.0), _Slot(2, used_at=2.0)
    assert pick_slot([a, b, c], [1, 2, 3, 4, 7]) is a  # four shared tokens
    assert pick_slot([b, c], [1, 2, 3, 4, 7]) is b  # two of five: above PROMPT_SIMILARITY
    long = [1] + [8] * int(1 / PROMPT_SIMILARITY) * 2
    assert pick_slot([a, b, c], long) is b  # one token shared is too little: the least recently used slot
    assert pick_slot([a, c], []) is c
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3 and common_prefix([], [1]) == 0
