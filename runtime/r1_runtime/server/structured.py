"""response_format: OpenAI's structured output as a GBNF grammar for llama.cpp's grammar sampler.

`{"type": "text"}` asks for nothing; `json_object` is llama-cpp-python's JSON grammar; `json_schema` is its
JSON-schema converter's grammar for `json_schema.schema`. Anything else, or a schema the converter cannot
express, is a ValueError naming the field, which the API answers with a 400.
"""

from __future__ import annotations

import json

from llama_cpp import llama_grammar


def grammar_for(response_format: dict | None) -> str | None:
    if not response_format:
        return None
    if not isinstance(response_format, dict):
        raise ValueError("response_format: an object with a type: text, json_object or json_schema")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return llama_grammar.JSON_GBNF
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ValueError("response_format.json_schema.schema: give the JSON schema the answer must meet")
        try:
            return llama_grammar.json_schema_to_gbnf(json.dumps(schema))
        except (ValueError, AssertionError, KeyError, TypeError, RecursionError) as exc:
            raise ValueError(f"response_format.json_schema.schema: this schema cannot be turned into a grammar "
                             f"({exc}); simplify it (local $refs, no remote ones)") from None
    raise ValueError(f"response_format.type: {kind!r} is not one of text, json_object, json_schema")
