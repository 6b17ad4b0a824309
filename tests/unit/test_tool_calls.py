"""Tool calling's pure parts: the request's tool fields checked, the template's call syntax, and the answer parsed
into calls as it streams (r1_runtime.server.tools). The served path is tests/serve/test_tool_calling.py."""

from __future__ import annotations

import json

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from r1_devtools.models import HERMES_TOOLS_TEMPLATE

from r1_runtime.server.prompt import renders_tools
from r1_runtime.server.tools import CallStream, ToolError, ToolRequest, parse, syntax_of, template_messages, \
    tool_request

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def req(**fields) -> ToolRequest | None:
    return tool_request(fields, HERMES_TOOLS_TEMPLATE, True)


def test_templates_are_told_apart_by_whether_they_render_tools_and_how_they_call():
    env = ImmutableSandboxedEnvironment()
    assert not renders_tools(env, "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert renders_tools(env, HERMES_TOOLS_TEMPLATE) and syntax_of(HERMES_TOOLS_TEMPLATE) == "hermes"
    other = "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"
    assert renders_tools(env, other) and syntax_of(other) is None
    with pytest.raises(ToolError, match="no tool support") as e:
        tool_request({"tools": [WEATHER]}, "{{ messages }}", False)
    assert e.value.param == "tools"
    with pytest.raises(ToolError, match="not in a call syntax this server parses"):
        tool_request({"tools": [WEATHER]}, other, True)


def test_the_tool_fields_become_one_request():
    assert req() is None and req(tool_choice="none") is None
    r = req(tools=[WEATHER, TIME])
    assert (r.choice, r.parallel, r.names, r.legacy) == ("auto", True, ["get_weather", "get_time"], False)
    assert r.tools[1]["function"]["parameters"] == {"type": "object", "properties": {}}  # none given: no arguments
    assert req(tools=[WEATHER], tool_choice="required").forced
    named = req(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}},
                parallel_tool_calls=False)
    assert (named.choice, named.parallel, named.forced) == ("get_time", False, True)
    assert not req(tools=[WEATHER], tool_choice="none").active
    legacy = req(functions=[WEATHER["function"]], function_call={"name": "get_weather"})
    assert (legacy.choice, legacy.legacy, legacy.parallel) == ("get_weather", True, False)


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "functions"),
    ({"functions": [WEATHER["function"]], "function_call": {"name": "nope"}}, "function_call.name"),
    ({"functions": [WEATHER["function"]], "parallel_tool_calls": True}, "parallel_tool_calls"),
])
def test_a_tool_field_that_cannot_be_honoured_is_refused_naming_it(fields, param):
    with pytest.raises(ToolError) as e:
        req(**fields)
    assert e.value.param == param and str(e.value).startswith(f"{param}: ")


TEXT = ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')


def test_calls_are_parsed_out_of_the_answer_the_same_whole_or_streamed_a_character_at_a_time():
    r = req(tools=[WEATHER, TIME])
    content, calls = parse(TEXT, r)
    assert content == "Let me look."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    stream = CallStream(r.names)
    pieces = [stream.feed(ch) for ch in TEXT] + [(stream.flush(), [])]
    assert "".join(p[0] for p in pieces) == content
    assert [c["function"] for p in pieces for c in p[1]] == [c["function"] for c in calls]
    # the first call is out as soon as its block closes, before the second is written
    closed = TEXT.index("</tool_call>") + len("</tool_call>")
    assert sum(len(p[1]) for p in pieces[:closed]) == 1


@pytest.mark.parametrize("text, content, n", [
    ("No tool needed: it is sunny.", "No tool needed: it is sunny.", 0),
    ("a <tool is not a call", "a <tool is not a call", 0),  # a held '<tool' tail comes out once it is not one
    ("<tool_call>\n{not json}\n</tool_call>", "<tool_call>\n{not json}\n</tool_call>", 0),  # as written
    ('<tool_call>{"name": "launch", "arguments": {}}</tool_call>', '<tool_call>{"name": "launch", "arguments": {}}'
     '</tool_call>', 0),  # not a tool of the request
    ('<tool_call>{"name": "get_time", "arguments": "{}"}</tool_call>', None, 1),  # arguments as a JSON string
    ('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n\n', None, 1),
    ("<tool_call>\n{\"name\": \"get_time\"", "<tool_call>\n{\"name\": \"get_time\"", 0),  # cut off: content
])
def test_what_is_not_a_whole_call_of_a_named_tool_stays_content(text, content, n):
    got, calls = parse(text, req(tools=[WEATHER, TIME]))
    assert (got, len(calls)) == (content, n)


def test_without_parallel_calls_a_second_call_is_not_made():
    content, calls = parse(TEXT, req(tools=[WEATHER, TIME], parallel_tool_calls=False))
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert content.startswith("Let me look.") and '"get_time"' in content


def test_the_template_sees_tool_definitions_as_plain_json_and_earlier_calls_as_objects():
    from r1_runtime.server.prompt import _tojson

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    messages = template_messages([
        {"role": "user", "content": "Weather in Paris <today>?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}])
    text = env.from_string(HERMES_TOOLS_TEMPLATE).render(messages=messages, tools=[WEATHER],
                                                         add_generation_prompt=True)
    assert json.dumps(WEATHER) in text and "\\u003c" not in text  # jinja's own tojson escapes < for HTML
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\nsunny\n</tool_response>" in text and text.endswith("<|im_start|>assistant\n")
