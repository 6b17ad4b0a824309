"""What the planner knows about a model: facts from its GGUF header(s), no tensor data."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from r1_operator.api.gguf_header import TensorInfo

_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelFacts:
    """Everything the memory model needs, read from GGUF headers (or a catalog description of them)."""

    name: str
    arch: str
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    key_length: int  # per KV head, as cached (MLA: the compressed latent + rope)
    value_length: int
    n_vocab: int
    n_ctx_train: int
    n_expert: int
    n_expert_used: int
    n_ff: int
    n_ff_exp: int
    mla: bool
    v_cached: bool  # False for MLA, whose V is a view of the K cache
    block_bytes: tuple[int, ...]
    input_bytes: int  # token_embd: always on the CPU
    output_bytes: int  # output head + final norm: llama.cpp offloads it first
    tensor_bytes: int
    file_bytes: int
    n_shards: int = 1
    # Tied embeddings (no output.weight): the part of output_bytes that is token_embd again. llama.cpp loads
    # that copy only on a GPU that holds the output layer; on the CPU the head reads token_embd itself.
    tied_output_bytes: int = 0


def _kv_int(kv: dict[str, Any], key: str, default: int | None = None) -> int:
    v = kv.get(key, default)
    if v is None:
        raise ValueError(f"GGUF header lacks {key}")
    if isinstance(v, list):  # per-layer arrays (e.g. head_count_kv): the planner uses the maximum
        v = max(v)
    return int(v)


def facts_from_gguf(kv: dict[str, Any], tensors: list[TensorInfo], file_bytes: int, n_shards: int = 1,
                    name: str | None = None) -> ModelFacts:
    """Build ModelFacts from a header's key-values and the tensor table of all shards."""
    arch = str(kv.get("general.architecture", ""))
    if not arch:
        raise ValueError("GGUF header lacks general.architecture")
    a = arch + "."
    n_layers = _kv_int(kv, a + "block_count")
    n_embd = _kv_int(kv, a + "embedding_length")
    n_head = _kv_int(kv, a + "attention.head_count")
    n_head_kv = _kv_int(kv, a + "attention.head_count_kv", n_head)
    head_dim = n_embd // n_head if n_head else 0
    key_length = _kv_int(kv, a + "attention.key_length", head_dim)
    value_length = _kv_int(kv, a + "attention.value_length", head_dim)
    mla = a + "attention.key_length_mla" in kv
    tokens = kv.get("tokenizer.ggml.tokens")
    n_vocab = int(getattr(tokens, "length", None) or (len(tokens) if isinstance(tokens, list) else 0)) or _kv_int(kv, a + "vocab_size")

    block = [0] * n_layers
    input_bytes = output_bytes = 0
    has_output = False
    token_embd = 0
    for t in tensors:
        m = _BLOCK.match(t.name)
        if m:
            i = int(m.group(1))
            if i >= n_layers:
                raise ValueError(f"tensor {t.name} is beyond block_count {n_layers}")
            block[i] += t.nbytes
        elif t.name.startswith("token_embd."):
            input_bytes += t.nbytes
            token_embd = t.nbytes if t.name == "token_embd.weight" else token_embd
        else:
            output_bytes += t.nbytes
            has_output |= t.name == "output.weight"
    tied = 0 if has_output else token_embd
    output_bytes += tied  # on a GPU, llama.cpp duplicates token_embd there as the output head
    return ModelFacts(
        name=name or str(kv.get("general.name", "model")),
        arch=arch,
        n_layers=n_layers,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        key_length=key_length,
        value_length=value_length,
        n_vocab=n_vocab,
        n_ctx_train=_kv_int(kv, a + "context_length", 0),
        n_expert=_kv_int(kv, a + "expert_count", 0),
        n_expert_used=_kv_int(kv, a + "expert_used_count", 0),
        n_ff=_kv_int(kv, a + "feed_forward_length", 0),
        n_ff_exp=_kv_int(kv, a + "expert_feed_forward_length", 0),
        mla=mla,
        v_cached=not mla,
        block_bytes=tuple(block),
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        tensor_bytes=sum(t.nbytes for t in tensors),
        file_bytes=file_bytes,
        n_shards=n_shards,
        tied_output_bytes=tied,
    )
