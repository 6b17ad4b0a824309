"""Variant catalog: the built-in description of unsloth/DeepSeek-R1-GGUF, and any other model from its headers.

The built-in entries describe R1 the way its GGUF headers do (hyper-parameters
and a tensor table with per-tensor types), so planning runs without fetching
131-212 GB or even the headers. The type of each tensor is inferred from
Unsloth's published load logs and reproduces the published sizes within 2%
(tests/unit/test_planning_formula_catalog.py). Given real headers (`describe_local`,
`describe_remote`), the planner uses those instead: nothing here overrides a header.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from r1_operator.api import contract
from r1_operator.api import ggml
from r1_operator.planning.model import ModelFacts, TensorInfo, facts_from_gguf

GiB = 1 << 30
R1_REPO = "unsloth/DeepSeek-R1-GGUF"

# deepseek2 hyper-parameters of DeepSeek-R1, as its GGUF headers state them.
R1_KV: dict[str, object] = {
    "general.architecture": "deepseek2",
    "general.name": "DeepSeek R1",
    "deepseek2.block_count": 61,
    "deepseek2.context_length": 163840,
    "deepseek2.embedding_length": 7168,
    "deepseek2.feed_forward_length": 18432,
    "deepseek2.attention.head_count": 128,
    "deepseek2.attention.head_count_kv": 128,
    "deepseek2.attention.key_length": 192,
    "deepseek2.attention.value_length": 128,
    "deepseek2.attention.q_lora_rank": 1536,
    "deepseek2.attention.kv_lora_rank": 512,
    "deepseek2.rope.dimension_count": 64,
    "deepseek2.leading_dense_block_count": 3,
    "deepseek2.expert_count": 256,
    "deepseek2.expert_used_count": 8,
    "deepseek2.expert_shared_count": 1,
    "deepseek2.expert_feed_forward_length": 2048,
    "deepseek2.vocab_size": 129280,
}


def _r1_tensors(expert_type: Callable[[str, int], str]) -> list[TensorInfo]:
    kv = R1_KV
    n_embd, n_ff, n_exp = kv["deepseek2.embedding_length"], kv["deepseek2.feed_forward_length"], kv["deepseek2.expert_count"]
    n_ff_exp, n_head, vocab = kv["deepseek2.expert_feed_forward_length"], kv["deepseek2.attention.head_count"], kv["deepseek2.vocab_size"]
    q_lora, kv_lora, rope = kv["deepseek2.attention.q_lora_rank"], kv["deepseek2.attention.kv_lora_rank"], kv["deepseek2.rope.dimension_count"]
    k_len, v_len = kv["deepseek2.attention.key_length"], kv["deepseek2.attention.value_length"]
    n_dense = kv["deepseek2.leading_dense_block_count"]
    t = ggml.type_id
    out = [TensorInfo.make("token_embd.weight", t("q4_k"), (n_embd, vocab))]
    for i in range(kv["deepseek2.block_count"]):
        p = f"blk.{i}."
        out += [
            TensorInfo.make(p + "attn_norm.weight", t("f32"), (n_embd,)),
            TensorInfo.make(p + "attn_q_a_norm.weight", t("f32"), (q_lora,)),
            TensorInfo.make(p + "attn_kv_a_norm.weight", t("f32"), (kv_lora,)),
            TensorInfo.make(p + "attn_q_a.weight", t("q4_k"), (n_embd, q_lora)),
            TensorInfo.make(p + "attn_q_b.weight", t("q4_k"), (q_lora, n_head * k_len)),
            TensorInfo.make(p + "attn_kv_a_mqa.weight", t("q4_k"), (n_embd, kv_lora + rope)),
            TensorInfo.make(p + "attn_kv_b.weight", t("q4_k"), (kv_lora, n_head * (k_len - rope + v_len))),
            TensorInfo.make(p + "attn_output.weight", t("q4_k"), (n_head * v_len, n_embd)),
            TensorInfo.make(p + "ffn_norm.weight", t("f32"), (n_embd,)),
        ]
        if i < n_dense:
            out += [
                TensorInfo.make(p + "ffn_gate.weight", t("q6_k"), (n_embd, n_ff)),
                TensorInfo.make(p + "ffn_down.weight", t("q6_k"), (n_ff, n_embd)),
                TensorInfo.make(p + "ffn_up.weight", t("q6_k"), (n_embd, n_ff)),
            ]
        else:
            out += [
                TensorInfo.make(p + "ffn_gate_inp.weight", t("f32"), (n_embd, n_exp)),
                TensorInfo.make(p + "exp_probs_b.bias", t("f32"), (n_exp,)),
                TensorInfo.make(p + "ffn_gate_exps.weight", t(expert_type("gate", i)), (n_embd, n_ff_exp, n_exp)),
                TensorInfo.make(p + "ffn_down_exps.weight", t(expert_type("down", i)), (n_ff_exp, n_embd, n_exp)),
                TensorInfo.make(p + "ffn_up_exps.weight", t(expert_type("up", i)), (n_embd, n_ff_exp, n_exp)),
                TensorInfo.make(p + "ffn_gate_shexp.weight", t("q6_k"), (n_embd, n_ff_exp)),
                TensorInfo.make(p + "ffn_down_shexp.weight", t("q6_k"), (n_ff_exp, n_embd)),
                TensorInfo.make(p + "ffn_up_shexp.weight", t("q6_k"), (n_embd, n_ff_exp)),
            ]
    out += [
        TensorInfo.make("output_norm.weight", t("f32"), (n_embd,)),
        TensorInfo.make("output.weight", t("q6_k"), (n_embd, vocab)),
    ]
    return out


@dataclass(frozen=True)
class Variant:
    """One file set of a model. rank orders quality: higher is better."""

    name: str
    label: str
    size_bytes: int  # published size of the file set; the blog's formula divides by this
    shards: int
    rank: int
    describe: Callable[[], ModelFacts] = field(compare=False, repr=False)

    @cached_property
    def facts(self) -> ModelFacts:
        return self.describe()

    @property
    def allow_pattern(self) -> str:
        return f"*{self.name}*"

    def cache_peak_bytes(self, keep_shards: bool = False) -> int:
        """The cache volume's peak while fetching and merging this variant (the operator always merges)."""
        return contract.cache_peak_bytes(self.size_bytes, self.size_bytes if self.shards > 1 else 0, merge=True,
                                         keep_shards=keep_shards)


def _r1_variant(name: str, label: str, gib: int, shards: int, rank: int, experts: Callable[[str, int], str]) -> Variant:
    def describe() -> ModelFacts:
        tensors = _r1_tensors(experts)
        return facts_from_gguf(R1_KV, tensors, file_bytes=sum(t.nbytes for t in tensors), n_shards=shards,
                               name=f"DeepSeek-R1-{name}")

    return Variant(name, label, gib * GiB, shards, rank, describe)


def _first_moe(n: int) -> Callable[[int], bool]:
    dense = int(R1_KV["deepseek2.leading_dense_block_count"])  # type: ignore[arg-type]
    return lambda i: dense <= i < dense + n


_EARLY6, _EARLY3 = _first_moe(6), _first_moe(3)

R1_VARIANTS: tuple[Variant, ...] = (
    _r1_variant("UD-IQ1_S", "1.58-bit", 131, 3, 1,
                lambda kind, i: "iq2_xxs" if kind == "down" and _EARLY6(i) else "iq1_s"),
    _r1_variant("UD-IQ1_M", "1.73-bit", 158, 4, 2, lambda kind, i: "iq2_xs" if kind == "down" else "iq1_m"),
    _r1_variant("UD-IQ2_XXS", "2.22-bit", 183, 4, 3, lambda kind, i: "q2_k" if kind == "down" else "iq2_xxs"),
    _r1_variant("UD-Q2_K_XL", "2.51-bit", 212, 5, 4,
                lambda kind, i: "q3_k" if kind == "down" and _EARLY3(i) else "q2_k"),
)


@dataclass(frozen=True)
class Catalog:
    repo: str
    variants: tuple[Variant, ...]

    def get(self, name: str) -> Variant:
        for v in self.variants:
            if v.name.lower() == name.lower():
                return v
        raise ValueError(f"unknown variant {name!r} for {self.repo}; choose one of: {', '.join(v.name for v in self.variants)}")

    def ranked(self) -> list[Variant]:
        """Best first."""
        return sorted(self.variants, key=lambda v: -v.rank)


BUILTIN: dict[str, Catalog] = {R1_REPO: Catalog(R1_REPO, R1_VARIANTS)}


def catalog_for(repo: str) -> Catalog:
    try:
        return BUILTIN[repo]
    except KeyError:
        raise ValueError(f"no built-in catalog for {repo!r}; describe it with --model-file or --repo and --variant files") from None


def single_model_catalog(facts: ModelFacts, name: str = "model") -> Catalog:
    """A catalog of one variant for a model described from its own headers."""
    return Catalog(facts.name, (Variant(name, facts.name, facts.file_bytes, facts.n_shards, 1, lambda: facts),))
