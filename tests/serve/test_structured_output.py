"""response_format through the official openai client on SmolLM2: json_object and json_schema become llama.cpp's
grammar sampler, streamed or not; what cannot be a grammar is a 400 naming the field.

What would break: the answer is free text (SmolLM2 answers the same prompt in prose without the grammar), the
parsed JSON misses a required key or has the wrong type, or a bad schema is accepted and ignored.
"""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.llama

ASK = [{"role": "user", "content": "Describe a fictional person: their name and their age."}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                           "age": {"type": "integer"},
                                           "pets": {"type": "array", "items": {"type": "string", "maxLength": 12},
                                                    "maxItems": 2}},
          "required": ["name", "age", "pets"], "additionalProperties": False}


def chat(server, **kw):
    return server.openai().chat.completions.create(model="r1-test", messages=ASK, max_tokens=160, temperature=0, **kw)


def is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def test_without_a_format_the_answer_is_prose(smol_server):
    assert not is_json(chat(smol_server).choices[0].message.content)


def test_json_schema_is_met_by_the_parsed_answer(smol_server):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    r = chat(smol_server, response_format=fmt)
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    got = json.loads(r.choices[0].message.content)
    assert set(got) == {"name", "age", "pets"}
    assert isinstance(got["name"], str) and 0 < len(got["name"]) <= 24 and isinstance(got["age"], int)
    assert isinstance(got["pets"], list) and len(got["pets"]) <= 2 and all(isinstance(p, str) for p in got["pets"])

    stream = smol_server.openai().chat.completions.create(model="r1-test", messages=ASK, max_tokens=160,
                                                          temperature=0, response_format=fmt, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert json.loads(streamed) == got


def test_json_object_is_a_json_object(smol_server):
    ask = [{"role": "user", "content": "Reply with a JSON object with the keys name and age of a fictional person."}]
    r = smol_server.openai().chat.completions.create(model="r1-test", messages=ask, max_tokens=200, temperature=0,
                                                     response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.parametrize("fmt, field", [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "https://example.com/s.json"}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strange"}}},
     "response_format.json_schema.schema"),
    ("json", "response_format"),
])
def test_a_format_that_cannot_be_a_grammar_is_refused_naming_the_field(smol_server, fmt, field):
    r = httpx.post(smol_server.v1 + "/chat/completions",
                   json={"model": "r1-test", "messages": ASK, "max_tokens": 2, "response_format": fmt})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field and r.json()["error"]["message"].startswith(field + ":")


def test_a_reasoning_model_refuses_a_grammar_and_says_why(r1_server):
    r = httpx.post(r1_server.v1 + "/chat/completions", json={"model": "r1-test", "messages": ASK, "max_tokens": 2,
                                                             "response_format": {"type": "json_object"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    assert "<think>" in r.json()["error"]["message"]
