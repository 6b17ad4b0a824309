"""Miniature DeepSeek-R1-shaped GGUF models for tests and benchmarks.

The files use the real ``deepseek2`` architecture: leading dense blocks, then
MoE blocks with routed and shared experts and sigmoid gating, and either the
legacy attention layout of Unsloth's R1 files (``attn_kv_b``) or the newer MLA
layout (``attn_k_b``/``attn_v_b``). The tokenizer is a byte-level gpt2 BPE
holding the R1 special tokens and the R1 chat template, so llama.cpp loads,
templates and generates from what is written here. Output is deterministic
for a given seed: the same options always give the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import gguf
import numpy as np

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# The chat template of DeepSeek-R1 (system text after BOS, an EOS closing each
# assistant turn, earlier reasoning stripped from history, and a generation
# prompt that opens a think block). The BOS comes from the template only.
R1_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}{% endif %}{% endfor %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)

# A few English merges so that tokenization is not purely byte-wise.
_MERGES = [
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("a", "n"),
    ("Ġ", "a"), ("o", "n"), ("r", "e"), ("Ġ", "s"), ("e", "n"), ("Ġ", "w"),
    ("o", "r"), ("Ġ", "c"), ("a", "t"), ("i", "s"), ("Ġ", "i"), ("e", "d"),
]

WEIGHT_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


@dataclass(frozen=True)
class ModelShape:
    """Hyper-parameters of a miniature deepseek2 model (names follow the GGUF keys)."""

    n_embd: int = 256
    n_layer: int = 4
    n_dense: int = 1
    n_head: int = 4
    q_lora_rank: int = 64
    kv_lora_rank: int = 64
    qk_nope: int = 32
    qk_rope: int = 32  # key_length 64: q4_0 K cache with flash attention needs a multiple of 32
    v_head: int = 32
    n_ff: int = 512
    n_ff_exp: int = 128
    n_expert: int = 4
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ctx_train: int = 4096
    layout: str = "legacy"  # "legacy" (attn_kv_b, as in Unsloth's R1 files) or "mla"
    weight_type: str = "f16"

    def validate(self) -> None:
        if self.layout not in ("legacy", "mla"):
            raise ValueError(f"layout must be 'legacy' or 'mla', not {self.layout!r}")
        if self.weight_type not in WEIGHT_TYPES:
            raise ValueError(f"weight type must be one of {sorted(WEIGHT_TYPES)}, not {self.weight_type!r}")
        if not 0 <= self.n_dense <= self.n_layer or self.n_layer < 1:
            raise ValueError(f"need 1 <= n_layer and 0 <= n_dense <= n_layer (got {self.n_layer}, {self.n_dense})")
        if not 1 <= self.n_expert_used <= self.n_expert:
            raise ValueError(f"need 1 <= n_expert_used <= n_expert (got {self.n_expert_used}, {self.n_expert})")
        if self.weight_type == "q8_0" and self.n_embd % 32:
            raise ValueError("q8_0 weights need n_embd to be a multiple of 32")


PRESETS: dict[str, ModelShape] = {
    # ~3 MB at f16: the quickest model that still has every R1 feature.
    "tiny": ModelShape(),
    # ~30 MB at f16: more blocks (3 dense like R1) and wider experts, for planner checks.
    "small": ModelShape(n_embd=512, n_layer=8, n_dense=3, n_head=8, q_lora_rank=128, kv_lora_rank=128,
                        qk_nope=32, qk_rope=32, v_head=64, n_ff=1024, n_ff_exp=256, n_expert=8, n_expert_used=2),
}


@dataclass
class Vocab:
    tokens: list[str] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    merges: list[str] = field(default_factory=list)

    def add(self, text: str, kind: gguf.TokenType) -> int:
        self.tokens.append(text)
        self.types.append(int(kind))
        return len(self.tokens) - 1


def _bytes_to_unicode() -> list[str]:
    """The gpt2 byte-to-character table: printable bytes map to themselves."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, int] = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + extra
            extra += 1
    return [chr(table[b]) for b in range(256)]


def build_vocab() -> Vocab:
    """bos 0 and eos 1 as in R1; byte tokens; merges; R1 chat tokens at the end."""
    v = Vocab()
    v.add(BOS, gguf.TokenType.CONTROL)
    v.add(EOS, gguf.TokenType.CONTROL)
    v.add(PAD, gguf.TokenType.CONTROL)
    for ch in _bytes_to_unicode():
        v.add(ch, gguf.TokenType.NORMAL)
    for left, right in _MERGES:
        v.merges.append(f"{left} {right}")
        v.add(left + right, gguf.TokenType.NORMAL)
    for special in (USER, ASSISTANT, THINK_OPEN, THINK_CLOSE):
        v.add(special, gguf.TokenType.USER_DEFINED)
    return v


def _tensor_specs(s: ModelShape, n_vocab: int) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, numpy shape, is_matrix) in llama.cpp's order. numpy shapes are GGUF ne reversed."""
    k_head = s.qk_nope + s.qk_rope
    specs: list[tuple[str, tuple[int, ...], bool]] = [("token_embd.weight", (n_vocab, s.n_embd), True)]
    for i in range(s.n_layer):
        p = f"blk.{i}."
        specs += [
            (p + "attn_norm.weight", (s.n_embd,), False),
            (p + "attn_q_a_norm.weight", (s.q_lora_rank,), False),
            (p + "attn_kv_a_norm.weight", (s.kv_lora_rank,), False),
            (p + "attn_q_a.weight", (s.q_lora_rank, s.n_embd), True),
            (p + "attn_q_b.weight", (s.n_head * k_head, s.q_lora_rank), True),
            (p + "attn_kv_a_mqa.weight", (s.kv_lora_rank + s.qk_rope, s.n_embd), True),
        ]
        if s.layout == "legacy":
            specs.append((p + "attn_kv_b.weight", (s.n_head * (s.qk_nope + s.v_head), s.kv_lora_rank), True))
        else:
            specs += [
                (p + "attn_k_b.weight", (s.n_head, s.kv_lora_rank, s.qk_nope), True),
                (p + "attn_v_b.weight", (s.n_head, s.v_head, s.kv_lora_rank), True),
            ]
        specs += [
            (p + "attn_output.weight", (s.n_embd, s.n_head * s.v_head), True),
            (p + "ffn_norm.weight", (s.n_embd,), False),
        ]
        if i < s.n_dense:
            specs += [
                (p + "ffn_gate.weight", (s.n_ff, s.n_embd), True),
                (p + "ffn_down.weight", (s.n_embd, s.n_ff), True),
                (p + "ffn_up.weight", (s.n_ff, s.n_embd), True),
            ]
        else:
            sh = s.n_ff_exp * s.n_expert_shared
            specs += [
                (p + "ffn_gate_inp.weight", (s.n_expert, s.n_embd), False),
                (p + "exp_probs_b.bias", (s.n_expert,), False),
                (p + "ffn_gate_exps.weight", (s.n_expert, s.n_ff_exp, s.n_embd), True),
                (p + "ffn_down_exps.weight", (s.n_expert, s.n_embd, s.n_ff_exp), True),
                (p + "ffn_up_exps.weight", (s.n_expert, s.n_ff_exp, s.n_embd), True),
                (p + "ffn_gate_shexp.weight", (sh, s.n_embd), True),
                (p + "ffn_down_shexp.weight", (s.n_embd, sh), True),
                (p + "ffn_up_shexp.weight", (sh, s.n_embd), True),
            ]
    specs += [("output_norm.weight", (s.n_embd,), False), ("output.weight", (n_vocab, s.n_embd), True)]
    return specs


def _tensor_data(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if name.endswith("norm.weight"):
        return np.ones(shape, dtype=np.float32)
    if name.endswith("exp_probs_b.bias"):
        return np.zeros(shape, dtype=np.float32)
    fan_in = shape[-1]
    return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)


def _encode(data: np.ndarray, weight_type: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    qtype = WEIGHT_TYPES[weight_type]
    if qtype == gguf.GGMLQuantizationType.F32:
        return data, None
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, qtype), qtype


def _partition(sizes: list[int], n_shards: int) -> list[int]:
    """Cut points that split consecutive tensors into n_shards groups of similar bytes."""
    if n_shards > len(sizes):
        raise ValueError(f"cannot split {len(sizes)} tensors into {n_shards} shards")
    total = sum(sizes)
    cuts: list[int] = []
    acc = 0
    for i, size in enumerate(sizes):
        acc += size
        remaining_tensors = len(sizes) - (i + 1)
        remaining_cuts = n_shards - 1 - len(cuts)
        if remaining_cuts == 0:
            break
        # Cut once this shard reaches its share, or when every later tensor is needed for one shard each.
        if acc >= total * (len(cuts) + 1) / n_shards or remaining_tensors == remaining_cuts:
            cuts.append(i + 1)
    return cuts


def shard_names(path: Path, n_shards: int) -> list[Path]:
    """The file names written for a model: one file, or ``STEM-0000i-of-0000n.gguf``."""
    if n_shards <= 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i:05d}-of-{n_shards:05d}.gguf") for i in range(1, n_shards + 1)]


def write_test_model(
    path: str | os.PathLike[str],
    shape: ModelShape | None = None,
    *,
    n_shards: int = 1,
    seed: int = 0,
    name: str = "r1-mini",
) -> list[Path]:
    """Write a miniature deepseek2 model; return the written files (shard 1 first).

    ``path`` names the unsplit file (``…/NAME.gguf``); a split set is written
    beside it with the real files' naming. Files are written under a temporary
    name and renamed, so an interrupted run leaves nothing that looks complete.
    """
    s = shape or ModelShape()
    s.validate()
    out = Path(path)
    if out.suffix != ".gguf":
        raise ValueError(f"{out}: the output name must end in .gguf")
    if n_shards < 1:
        raise ValueError(f"shards must be >= 1, got {n_shards}")
    out.parent.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab()
    rng = np.random.default_rng(seed)

    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.gguf")
    w = gguf.GGUFWriter(tmp, "deepseek2")
    w.add_name(name)
    w.add_file_type(int(FILE_TYPES[s.weight_type]))
    w.add_context_length(s.n_ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    # MLA caches one compressed latent per token: a single KV head.
    w.add_head_count_kv(s.n_head if s.layout == "legacy" else 1)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_expert_count(s.n_expert)
    w.add_expert_used_count(s.n_expert_used)
    w.add_leading_dense_block_count(s.n_dense)
    w.add_vocab_size(len(vocab.tokens))
    w.add_q_lora_rank(s.q_lora_rank)
    w.add_kv_lora_rank(s.kv_lora_rank)
    if s.layout == "legacy":
        w.add_key_length(s.qk_nope + s.qk_rope)
        w.add_value_length(s.v_head)
    else:
        w.add_key_length(s.kv_lora_rank + s.qk_rope)
        w.add_value_length(s.kv_lora_rank)
        w.add_key_length_mla(s.qk_nope + s.qk_rope)
        w.add_value_length_mla(s.v_head)
    w.add_rope_dimension_count(s.qk_rope)
    w.add_expert_feed_forward_length(s.n_ff_exp)
    w.add_expert_shared_count(s.n_expert_shared)
    w.add_expert_weights_scale(2.5)
    w.add_expert_weights_norm(True)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("deepseek-v3")
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_pad_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(R1_CHAT_TEMPLATE)

    for tname, tshape, is_matrix in _tensor_specs(s, len(vocab.tokens)):
        data = _tensor_data(tname, tshape, rng)
        if is_matrix:
            encoded, raw = _encode(data, s.weight_type)
            if raw is None:
                w.add_tensor(tname, encoded)
            else:
                w.add_tensor(tname, encoded, raw_dtype=raw)  # byte shape; gguf-py derives the element shape
        else:
            w.add_tensor(tname, data)

    if n_shards > 1:
        items = list(w.tensors[0].items())
        cuts = _partition([info.nbytes for _, info in items], n_shards)
        bounds = [0, *cuts, len(items)]
        w.tensors = [dict(items[a:b]) for a, b in zip(bounds, bounds[1:])]
    finals = shard_names(out, n_shards)
    temps = shard_names(tmp, n_shards)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        for t in temps:
            with open(t, "rb+") as f:
                os.fsync(f.fileno())
        for t, f in zip(temps, finals):
            os.replace(t, f)
    finally:
        for t in temps:
            t.unlink(missing_ok=True)
    return finals


def shape_from_options(preset: str = "tiny", **overrides: object) -> ModelShape:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[preset]
    known = asdict(base)
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise ValueError(f"unknown shape options: {unknown}")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
