"""Tool calling through the official `openai` client, on a real model whose chat template renders tools.

The model is SmolLM2-135M (a real GGUF from PyPI) with a ChatML template that shows tool definitions and teaches
Hermes-style <tool_call> JSON, as Qwen's templates do (r1_devtools.models.HERMES_TOOLS_TEMPLATE); the file is a
copy of SmolLM2's with only that header key changed. A 135M model chooses to call a tool by chance, so the checks
that a call is made use the choices that force one (`required`, a named function), where llama.cpp's grammar
sampler makes the answer a call; each checks the output, not only the status.
"""

from __future__ import annotations

import json

import httpx
import pytest
from r1_devtools.models import HERMES_TOOLS_TEMPLATE, smollm2_path, with_chat_template
from r1_devtools.serving import running_server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}}, "required": ["zone"],
                   "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
GREEDY = {"temperature": 0, "max_tokens": 80}


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory):
    model = with_chat_template(smollm2_path(), HERMES_TOOLS_TEMPLATE, tmp_path_factory.mktemp("tools-model"))
    with running_server(model, "--parallel", "2", "--ctx-size", "4096") as s:
        yield s


def meets(call, tool: dict) -> dict:
    """The call's arguments, checked against the tool's parameters schema (the parts these tools use: required
    string properties, an enum, a length bound, no others)."""
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == tool["function"]["name"]
    args = json.loads(call.function.arguments)
    schema = tool["function"]["parameters"]
    assert set(args) == set(schema["required"]), args
    for key, value in args.items():
        prop = schema["properties"][key]
        assert isinstance(value, str) and len(value) <= prop.get("maxLength", 1 << 10) and value in prop.get("enum", [value]), args
    return args


@pytest.mark.parametrize("stream", [False, True])
def test_required_makes_the_answer_a_call_whose_arguments_meet_the_tools_schema(tools_server, stream):
    c = tools_server.openai()
    # one call: with parallel calls this 135M model goes on calling until max_tokens
    kw = dict(model="r1-test", messages=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
              **GREEDY)
    if not stream:
        r = c.chat.completions.create(**kw)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
        calls = choice.message.tool_calls
    else:
        calls_by_index: dict[int, dict] = {}
        finish, content = None, ""
        for chunk in c.chat.completions.create(stream=True, **kw):
            d = chunk.choices[0].delta
            content += d.content or ""
            for tc in d.tool_calls or ():
                slot = calls_by_index.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += tc.id or ""
                slot["name"] += tc.function.name or ""
                slot["arguments"] += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls" and content == ""
        from openai.types.chat import ChatCompletionMessageToolCall

        calls = [ChatCompletionMessageToolCall.model_validate(
            {"id": v["id"], "type": "function", "function": {"name": v["name"], "arguments": v["arguments"]}})
            for _, v in sorted(calls_by_index.items())]
    assert len(calls) == 1, calls
    for call in calls:
        args = meets(call, WEATHER)
        assert args["unit"] in ("celsius", "fahrenheit") and isinstance(args["city"], str)


@pytest.mark.parametrize("tool", [WEATHER, TIME], ids=["get_weather", "get_time"])
def test_a_named_tool_choice_calls_that_tool_once_without_parallel_calls(tools_server, tool):
    success = 'r1_requests_total{endpoint="chat",outcome="success"}'
    before = tools_server.metrics()
    r = tools_server.openai().chat.completions.create(
        model="r1-test", messages=ASK, tools=[WEATHER, TIME], parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": tool["function"]["name"]}}, **GREEDY)
    (call,) = r.choices[0].message.tool_calls
    meets(call, tool)
    assert r.choices[0].finish_reason == "tool_calls"
    after = tools_server.metrics()  # an answer that calls a tool is a success, not an error
    assert after[success] == before[success] + 1
    assert after['r1_requests_total{endpoint="chat",outcome="error"}'] == \
        before['r1_requests_total{endpoint="chat",outcome="error"}']


def test_tools_are_shown_to_the_model_unless_the_choice_is_none(tools_server):
    """The template renders the definitions into the prompt (more prompt tokens, and /apply-template shows them);
    with tool_choice none they are not shown and nothing is parsed."""
    c = tools_server.openai()
    plain = c.chat.completions.create(model="r1-test", messages=ASK, max_tokens=1, temperature=0)
    shown = c.chat.completions.create(model="r1-test", messages=ASK, tools=[WEATHER], max_tokens=1, temperature=0)
    hidden = c.chat.completions.create(model="r1-test", messages=ASK, tools=[WEATHER], tool_choice="none",
                                       max_tokens=1, temperature=0)
    assert shown.usage.prompt_tokens > plain.usage.prompt_tokens + 50
    assert hidden.usage.prompt_tokens == plain.usage.prompt_tokens and not hidden.choices[0].message.tool_calls
    prompt = httpx.post(tools_server.url + "/apply-template", json={"messages": ASK, "tools": [WEATHER]}).json()["prompt"]
    assert json.dumps(WEATHER) in prompt and "<tool_call>" in prompt


def test_auto_leaves_the_choice_to_the_model_and_markup_that_is_no_call_stays_content(tools_server):
    """auto forces nothing: asked about the weather, greedy SmolLM2 answers in prose. Asked about the call
    syntax itself, it writes an empty <tool_call></tool_call>: not a call, so it is content as written, and the
    server goes on (llama.cpp's lazy grammar, triggered by that text, threw a C++ exception and ended the
    process)."""
    c = tools_server.openai()
    prose = c.chat.completions.create(model="r1-test", messages=ASK, tools=[WEATHER, TIME], **GREEDY).choices[0]
    assert prose.finish_reason == "stop" and prose.message.content and not prose.message.tool_calls, prose
    markup = c.chat.completions.create(model="r1-test", tools=[WEATHER, TIME], parallel_tool_calls=False, messages=[
        {"role": "user", "content": "Return a json object with function name and arguments within "
                                    "<tool_call></tool_call> XML tags for: weather in Paris"}], **GREEDY).choices[0]
    assert "<tool_call></tool_call>" in markup.message.content and not markup.message.tool_calls, markup
    assert httpx.get(tools_server.url + "/health", timeout=5).status_code == 200


def test_a_conversation_with_a_call_and_its_result_is_rendered_for_the_model_and_answered(tools_server):
    c = tools_server.openai()
    first = c.chat.completions.create(model="r1-test", messages=ASK, tools=[WEATHER], tool_choice="required",
                                      parallel_tool_calls=False, **GREEDY)
    call = first.choices[0].message.tool_calls[0]
    conversation = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                    {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"}]
    prompt = httpx.post(tools_server.url + "/apply-template",
                        json={"messages": conversation, "tools": [WEATHER]}).json()["prompt"]
    args = json.loads(call.function.arguments)
    # the call as the template writes it (arguments an object, not a quoted string), then the result
    assert '<tool_call>\n{"name": "get_weather", "arguments": ' + json.dumps(args) + "}\n</tool_call>" in prompt
    assert "<tool_response>\n18 degrees and sunny\n</tool_response>" in prompt
    r = c.chat.completions.create(model="r1-test", messages=conversation, tools=[WEATHER], tool_choice="none",
                                  **GREEDY)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls
    # the answer's prompt was that conversation, call and result included (tool_choice none: no definitions shown)
    shown = httpx.post(tools_server.url + "/apply-template", json={"messages": conversation}).json()["prompt"]
    assert "18 degrees and sunny" in shown
    tokens = httpx.post(tools_server.url + "/tokenize", json={"content": shown, "as_prompt": True}).json()["tokens"]
    assert r.usage.prompt_tokens == len(tokens)


def test_the_older_functions_and_function_call_get_a_function_call(tools_server):
    body = {"model": "r1-test", "messages": ASK, "functions": [WEATHER["function"]],
            "function_call": {"name": "get_weather"}, **GREEDY}
    r = httpx.post(tools_server.v1 + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "function_call" and "tool_calls" not in choice["message"]
    fc = choice["message"]["function_call"]
    assert fc["name"] == "get_weather" and json.loads(fc["arguments"])["unit"] in ("celsius", "fahrenheit")


@pytest.mark.parametrize("extra, param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     "tool_choice.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
])
def test_tool_fields_that_cannot_be_honoured_get_a_400_naming_them(tools_server, extra, param):
    r = httpx.post(tools_server.v1 + "/chat/completions", json={"messages": ASK, "max_tokens": 2, **extra})
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert (e["param"], e["code"]) == (param, "invalid_tools") and e["message"].startswith(f"{param}: ")
