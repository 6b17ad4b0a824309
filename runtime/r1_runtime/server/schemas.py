"""The OpenAI-compatible request bodies and error envelope."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list | None = None


class CommonRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = Field(None, ge=0, le=1)  # 0, as OpenAI allows: only the most likely token
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=128)  # choices, each decoded in its own slot (at most --parallel)
    logit_bias: dict[str, float] | None = None
    # OpenAI's penalties on the tokens generated so far: presence once per token seen, frequency per occurrence
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    # divides a repeated token's positive logit (multiplies a negative one): vLLM's name, and llama-server's
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    repeat_penalty: float | None = Field(None, gt=0, le=10)
    ignore_eos: bool = False
    stream_options: dict | None = None
    stop_on_loop: bool | None = None
    cache_prompt: bool = True  # llama-server's: reuse the longest cached prefix of a slot; false evaluates it all

    def wanted_probs(self) -> int:
        """How many alternatives each generated token's logprob comes with: -1 for no logprobs at all."""
        return -1


class ChatRequest(CommonRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict | None = None  # structured.grammar_for reads it
    # tool calling, for a chat template that renders tools (tools.tool_request checks them)
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None  # the older form of tools
    function_call: str | dict | None = None  # the older form of tool_choice
    parallel_tool_calls: bool | None = None

    def tool_fields(self) -> dict:
        return {k: getattr(self, k) for k in TOOL_FIELDS}

    def wanted_probs(self) -> int:
        return (self.top_logprobs or 0) if self.logprobs else -1


class CompletionRequest(CommonRequest):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)  # the legacy API's: the chosen token's and this many others
    echo: bool = False  # the prompt's text before the completion's

    def wanted_probs(self) -> int:
        return -1 if self.logprobs is None else self.logprobs


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: str = ""
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = Field(False, description="each token as {id, piece}: its text, or its bytes when they are "
                              "not UTF-8 by themselves (llama-server's shape)")
    as_prompt: bool = Field(False, description="tokenize exactly as a completion prompt (one BOS when the model uses one)")


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[int] = Field(default_factory=list)


class TemplateRequest(BaseModel):
    messages: list[Message] = Field(min_length=1)
    tools: list | None = None  # shown to a template that renders tools, as a chat request's are


# OpenAI request fields this runtime does not implement yet: a request that asks for one is refused with a 400 that
# names the field, never answered as if it had not asked. A value that asks for nothing (null, false, 0, [], "none",
# {"type": "text"}) is accepted.
UNSUPPORTED = ("response_format",  # on completions: chat has it
               "echo", "suffix",  # echo: on chat (completions has it) "best_of", "n_probs", "grammar", "json_schema", "audio", "modalities", "prediction",
               "reasoning_effort", "web_search_options")
# Fields accepted without effect, as OpenAI's own are for one self-hosted model: who asked, and what to keep.
INERT = ("user", "metadata", "store", "service_tier")


def _asks_nothing(value) -> bool:
    return value in (None, False, 0, "", "none", [], {}) or value == {"type": "text"}


TOOL_FIELDS = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls")


def refused_field(body: BaseModel) -> tuple[str, str] | None:
    """(field, message) for the first field of the request this runtime would otherwise ignore, or None."""
    for name, value in (body.model_extra or {}).items():
        if name in INERT:
            continue
        if name in UNSUPPORTED:
            if _asks_nothing(value):
                continue
            return name, f"{name}: not supported by this server (r1-runtime serve); send the request without it"
        return name, f"{name}: not a field of this endpoint; check its spelling, or send the request without it"
    return None


MESSAGE_TOOL_FIELDS = ("tool_calls", "tool_call_id", "name")  # what a tool-calling conversation's messages carry


def chat_messages(messages: list[Message], template_tools: bool = False) -> tuple[list[dict], tuple[str, str] | None]:
    """The messages as the chat template takes them, and (field, message) for the first one it cannot take:
    `developer` (OpenAI's newer name) is the system role; text parts are joined; any other part is refused. An
    assistant's tool_calls, a tool result's tool_call_id and a name go to the template when it renders tools;
    to one that does not, tool_calls are refused (the template would drop them)."""
    out = []
    for i, m in enumerate(messages):
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    return [], (f"messages[{i}].content[{j}]", f"messages[{i}].content[{j}]: a {kind or 'non-object'} "
                                "part; this model takes text parts only")
        msg = {"role": "system" if m.role == "developer" else m.role, "content": message_text(m.content)}
        extra = m.model_extra or {}
        calls = extra.get("tool_calls")
        if calls:
            if not template_tools:
                return [], (f"messages[{i}].tool_calls", f"messages[{i}].tool_calls: this model's chat template has "
                            "no tool support, so it would drop them; send the conversation without tool calls")
            if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                                      and isinstance(c["function"].get("name"), str) for c in calls):
                return [], (f"messages[{i}].tool_calls", f"messages[{i}].tool_calls: a list of {{\"id\", \"type\": "
                            "\"function\", \"function\": {\"name\", \"arguments\"}}")
        msg.update({k: extra[k] for k in MESSAGE_TOOL_FIELDS if extra.get(k) is not None})
        out.append(msg)
    return out, None


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def err(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
        code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


def message_text(content) -> str:
    """A message's content as text (string content, or the text parts of a list)."""
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))
