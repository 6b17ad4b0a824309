"""Tool calling (OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`, and the legacy `functions`,
`function_call`) for a model whose chat template renders tools.

The template shows the model the tool definitions (`tools` in its context); the model calls a tool by writing
the template's call syntax, which this module parses back into OpenAI's `tool_calls`. The syntax known here is
Hermes 2 Pro's, which Qwen 2.5 and 3, Hermes and many fine-tunes use:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A template that renders tools in another syntax is refused with a 400 that says so, never answered as if the
model could not call.

The choices:
- `tool_choice: "required"` or a named function: llama.cpp's grammar sampler makes the whole answer calls (one,
  unless parallel calls are allowed), each a `{"name", "arguments"}` object meeting that tool's `parameters`
  schema;
- `"auto"` (the default with tools): the model writes prose or calls, and its answer is parsed. A call that is
  not whole JSON naming one of the tools stays content, as written. (llama.cpp's lazy grammar, which would
  constrain a call once the model starts one, throws a C++ exception when the text from its trigger on does not
  fit, and that ends the process: no Python frame can catch it. So it is not used.)
- `"none"`: the tools are not rendered, and nothing is parsed.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from r1_runtime.server.textproc import held_suffix

OPEN, CLOSE = "<tool_call>", "</tool_call>"
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for a function name


class ToolError(ValueError):
    """A tool field that cannot be honoured: `param` names it, the message says what to do."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True)
class ToolRequest:
    tools: list[dict]  # OpenAI's shape, as templates take them: {"type": "function", "function": {...}}
    choice: str  # "auto", "required", "none", or the one function's name
    parallel: bool = True
    legacy: bool = False  # asked with `functions`: answered with one `function_call`, as OpenAI's older API

    @property
    def names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    @property
    def active(self) -> bool:
        """Tools are shown to the model and its answer is parsed for calls."""
        return self.choice != "none"

    @property
    def forced(self) -> bool:
        return self.choice not in ("auto", "none")


def syntax_of(template: str | None) -> str | None:
    """The call syntax a chat template teaches ("hermes"), or None when it is not one this module parses."""
    if template and OPEN in template:
        return "hermes"
    return None


def tool_request(fields: dict, template: str | None, renders_tools: bool) -> ToolRequest | None:
    """The request's tool fields checked and made one ToolRequest (None when it sends no tools).
    `fields`: tools, tool_choice, functions, function_call, parallel_tool_calls, typed as ChatRequest declares
    them (tools and functions lists, parallel_tool_calls a bool)."""
    tools, functions = fields.get("tools"), fields.get("functions")
    choice, legacy_choice = fields.get("tool_choice"), fields.get("function_call")
    parallel = fields.get("parallel_tool_calls")
    if tools and functions:
        raise ToolError("functions", "functions is the older form of tools; send one of the two")
    if choice is not None and legacy_choice is not None:
        raise ToolError("function_call", "function_call is the older form of tool_choice; send one of the two")
    where = "functions" if functions else "tools"
    if functions:
        tools = [{"type": "function", "function": f} for f in functions]
    if not tools:
        if choice not in (None, "none") or legacy_choice not in (None, "none"):
            param = "tool_choice" if choice is not None else "function_call"
            raise ToolError(param, "there are no tools to choose from; send tools with it")
        return None
    if not renders_tools:
        raise ToolError(where, "this model's chat template has no tool support (it never renders tools), so no "
                        "answer could call one; send the request without it")
    if syntax_of(template) is None:
        raise ToolError(where, "this model's chat template renders tools, but not in a call syntax this server "
                        "parses (it parses Hermes-style <tool_call> JSON, as Qwen's templates teach); send the "
                        "request without tools")
    checked = [_check_tool(t, f"{where}[{i}]", where == "functions") for i, t in enumerate(tools)]
    names = [t["function"]["name"] for t in checked]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ToolError(where, f"two tools are named {dup!r}; give each its own name")
    legacy = bool(functions)
    if legacy and parallel:
        raise ToolError("parallel_tool_calls", "functions makes at most one call; send tools for parallel calls")
    return ToolRequest(checked, _choice(choice, legacy_choice, names),
                       False if legacy else (True if parallel is None else parallel), legacy)


def _check_tool(tool, where: str, legacy: bool) -> dict:
    """One tool definition checked (`legacy`: it came as an entry of `functions`, named so in errors)."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise ToolError(f"{where}.type", "each tool is {\"type\": \"function\", \"function\": {...}}")
    fn = tool.get("function")
    base = where if legacy else f"{where}.function"
    if not isinstance(fn, dict):
        raise ToolError(base, "give the function's name, and its description and parameters")
    name = fn.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ToolError(f"{base}.name", "a name of 1 to 64 letters, digits, underscores or dashes")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict):
        raise ToolError(f"{base}.parameters", "a JSON schema object")
    if "description" in fn and not isinstance(fn["description"], str):
        raise ToolError(f"{base}.description", "a string")
    out = {k: v for k, v in fn.items() if k in ("name", "description", "parameters", "strict")}
    out["parameters"] = params
    return {"type": "function", "function": out}


def _choice(choice, legacy, names: list[str]) -> str:
    if choice is None and legacy is not None:  # the legacy function_call: "none", "auto" or {"name": ...}
        choice = legacy if isinstance(legacy, str) else {"type": "function", "function": legacy}
        param = "function_call"
    else:
        param = "tool_choice"
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice in ("auto", "required", "none"):
            return choice
        raise ToolError(param, f"{choice!r} is not one of auto, required, none, or {{\"type\": \"function\", "
                        "\"function\": {\"name\": ...}}")
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise ToolError(param, "auto, required, none, or {\"type\": \"function\", \"function\": {\"name\": ...}}")
    if name not in names:
        where = "function_call.name" if param == "function_call" else "tool_choice.function.name"
        raise ToolError(where, f"{name!r} is not one of the tools ({', '.join(names)}); name one of them")
    return name


# ---- the grammar --------------------------------------------------------------------------------------------

def grammar(req: ToolRequest) -> str:
    """The GBNF of the calls a forced choice must make: a call of the named tool, or (required) of any."""
    from llama_cpp.llama_grammar import SchemaConverter

    wanted = req.tools if req.choice == "required" else [t for t in req.tools if t["function"]["name"] == req.choice]
    schema = {"anyOf": [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                          "arguments": t["function"]["parameters"]},
                         "required": ["name", "arguments"]} for t in wanted]}
    conv = SchemaConverter(prop_order={"name": 0, "arguments": 1}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        conv.visit(conv.resolve_refs(schema, "tools"), "tool-call")
    except (ValueError, AssertionError, KeyError, TypeError, RecursionError) as exc:
        raise ToolError("tools", f"a parameters schema cannot be turned into a grammar ({exc}); simplify it "
                        "(local $refs, no remote ones)") from None
    one = r'"<tool_call>\n" tool-call "\n</tool_call>"'
    root = f"root ::= {one} (\"\\n\" {one})*" if req.parallel else f"root ::= {one}"
    return root + "\n" + conv.format_grammar()


# ---- the answer ----------------------------------------------------------------------------------------------

def new_call(name: str, arguments) -> dict:
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _call_from(body: str, names: list[str]) -> dict | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return new_call(obj["name"], args) if isinstance(args, dict) else None


@dataclass
class CallStream:
    """Text in, (content, calls) out, as the model writes: content passes at once except a tail that could be the
    start of <tool_call>; a whole <tool_call>...</tool_call> block that parses as a call of a named tool becomes a
    call (one that does not is content, as written; so is a second call when parallel calls are off). Whitespace
    next to a call is not content: a run of it is held until text follows, and dropped when a call follows."""

    names: list[str]
    parallel: bool = True
    calls: list[dict] = field(default_factory=list)
    _buf: str = ""
    _space: str = ""  # whitespace held back
    _after_call: bool = False  # leading whitespace of what follows a call is dropped

    def feed(self, text: str) -> tuple[str, list[dict]]:
        self._buf += text
        out, made = [], []
        while True:
            start = self._buf.find(OPEN)
            if start < 0:
                keep = held_suffix(self._buf, OPEN)
                out.append(self._text(self._buf[:len(self._buf) - keep]))
                self._buf = self._buf[len(self._buf) - keep:]
                break
            end = self._buf.find(CLOSE, start)
            if end < 0:
                out.append(self._text(self._buf[:start]))
                self._buf = self._buf[start:]
                break
            out.append(self._text(self._buf[:start]))
            block = self._buf[start:end + len(CLOSE)]
            self._buf = self._buf[end + len(CLOSE):]
            call = _call_from(block[len(OPEN):-len(CLOSE)], self.names)
            if call is None or (self.calls and not self.parallel):
                out.append(self._text(block))
            else:
                self.calls.append(call)
                made.append(call)
                self._space, self._after_call = "", True
        return "".join(out), made

    def flush(self) -> str:
        """The content held back at the end (an unfinished block is content)."""
        rest, self._buf = self._buf, ""
        text = self._text(rest)
        if not self.calls:  # no call: the answer is all content, its trailing whitespace too
            text += self._space
        self._space = ""
        return text

    def _text(self, text: str) -> str:
        if self._after_call:
            text = text.lstrip()
            if not text:
                return ""
            self._after_call = False
        text = self._space + text
        body = text.rstrip()
        self._space = text[len(body):]
        return body


def parse(text: str, req: ToolRequest) -> tuple[str | None, list[dict]]:
    """A whole answer's content (None when it is only calls) and its calls."""
    s = CallStream(req.names, req.parallel)
    content = s.feed(text)[0] + s.flush()
    return (content if content.strip() or not s.calls else None), s.calls


def template_messages(messages: list[dict]) -> list[dict]:
    """OpenAI's assistant tool_calls as templates read them: each call's `arguments` JSON string as an object
    (a template writes `arguments | tojson`)."""
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls:
            fixed = []
            for c in calls:
                fn = dict(c.get("function") or {})
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except ValueError:
                        pass
                fixed.append({**c, "function": fn})
            m = {**m, "tool_calls": fixed}
        out.append(m)
    return out
