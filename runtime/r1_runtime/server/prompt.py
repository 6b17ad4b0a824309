"""Prompts: the model's chat template compiled once, rendered with its BOS/EOS text, tokenized with one BOS."""

from __future__ import annotations

from dataclasses import dataclass


def _raise(message: str):
    raise ValueError(message)


def _tojson(value, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    """Chat templates' `tojson`, as Hugging Face's tokenizers and llama.cpp render it: plain JSON (jinja's own
    escapes <, > and & for HTML, which would show the model tool definitions it was never trained on)."""
    import json

    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def renders_tools(env, template: str) -> bool:
    """The chat template reads a `tools` variable: it can show the model tool definitions."""
    from jinja2 import meta

    return "tools" in meta.find_undeclared_variables(env.parse(template))


@dataclass
class Prompter:
    engine: object  # the loaded Engine
    chat_template: str | None = None
    compiled_template: object = None  # jinja2 Template
    bos_text: str = ""
    eos_text: str = ""
    think: bool = False  # the model writes <think> reasoning (R1's template, or --reasoning-format deepseek)
    renders_tools: bool = False  # the chat template reads a `tools` variable (tool definitions)

    @classmethod
    def from_engine(cls, e, reasoning_format: str) -> Prompter:
        p = cls(e, chat_template=e.meta("tokenizer.chat_template"))
        p.bos_text = e.token_text(e.bos) if e.bos >= 0 else ""
        eos = int(e.meta("tokenizer.ggml.eos_token_id") or -1)
        p.eos_text = e.token_text(eos) if eos >= 0 else ""
        if p.chat_template:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            env.filters["tojson"] = _tojson
            p.compiled_template = env.from_string(p.chat_template)
            p.renders_tools = renders_tools(env, p.chat_template)
        tpl = p.chat_template or ""
        p.think = reasoning_format == "deepseek" or (reasoning_format == "auto" and ("<think>" in tpl or "<｜Assistant｜>" in tpl))
        return p

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        return self.tokenize_prompt(self.render_text(messages, tools))

    def render_text(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The template's prompt; `tools` (OpenAI's tool definitions) only to a template that renders them."""
        tpl = self.compiled_template
        if tpl is not None:
            return tpl.render(messages=messages, add_generation_prompt=True, tools=tools or None,
                              bos_token=self.bos_text, eos_token=self.eos_text)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def tokenize_prompt(self, text: str) -> list[int]:
        """Tokenize with exactly one BOS when the model wants one: the template's, or llama.cpp's, never both."""
        e = self.engine
        has_bos_text = bool(self.bos_text) and text.startswith(self.bos_text)
        tokens = e.tokenize(text, add_special=e.add_bos and not has_bos_text, parse_special=True)
        while e.bos >= 0 and len(tokens) >= 2 and tokens[0] == e.bos and tokens[1] == e.bos:
            tokens.pop(0)
        if not tokens and e.bos >= 0:  # an empty prompt: generate from the start of a text, as from nothing
            tokens = [e.bos]
        return tokens

    def ends_in_think(self, tokens: list[int]) -> bool:
        tail = "".join(self.engine.token_text(t) for t in tokens[-4:])
        return tail.rstrip().endswith("<think>")
