"""Memory model of llama.cpp for a model and runtime settings, per device.

Weights come from the GGUF tensor table (blocks differ: R1's dense blocks are a
fraction of its MoE blocks). The KV cache is exact for the cache types. The
compute buffer is ggml's graph allocation for one ubatch: the attention scores
(n_kv × n_ubatch × n_head f32, unless flash attention), the KQ mask, and the
largest of the other per-token phases (attention, dense FFN, MoE FFN, output
logits). tests/models/test_memory_validation.py compares every figure with the
buffer sizes llama.cpp logs when it loads the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1_operator.api import contract
from r1_operator.api import ggml
from r1_operator.planning.model import ModelFacts

MiB = 1 << 20
GiB = 1 << 30
KV_PAD = 256  # llama.cpp pads the KV cache size to this many cells


@dataclass(frozen=True)
class RuntimeSettings:
    """The llama.cpp context settings that change memory use."""

    ctx_size: int = contract.SERVE_FLAGS["ctx_size"].default
    n_ubatch: int = 512
    cache_type_k: str = contract.SERVE_FLAGS["cache_type_k"].default
    cache_type_v: str = contract.SERVE_FLAGS["cache_type_v"].default
    flash_attn: bool = False
    parallel: int = contract.SERVE_FLAGS["parallel"].default

    def validate(self, m: ModelFacts | None = None) -> None:
        """The runtime's own bounds and rules (the contract), so a plan is never made for flags it rejects."""
        flags = contract.SERVE_FLAGS
        for dest, value in (("ctx_size", self.ctx_size), ("n_batch", self.n_ubatch), ("cache_type_k", self.cache_type_k),
                            ("cache_type_v", self.cache_type_v), ("parallel", self.parallel)):
            flags[dest].check(value)
        problems = contract.inference_problems(self.ctx_size, self.parallel, self.cache_type_v, self.flash_attn)
        if problems:
            raise ValueError("; ".join(problems))
        if m is not None and m.mla and self.cache_type_k != self.cache_type_v:
            raise ValueError(f"{m.name} uses MLA: K and V cache types must match (got {self.cache_type_k}/{self.cache_type_v})")


def kv_cells(s: RuntimeSettings) -> int:
    return -(-s.ctx_size // KV_PAD) * KV_PAD


def kv_bytes_per_layer(m: ModelFacts, s: RuntimeSettings) -> tuple[int, int]:
    """(K bytes, V bytes) of one block's cache for the whole context."""
    cells = kv_cells(s)
    k = ggml.row_bytes(s.cache_type_k, m.key_length * m.n_head_kv) * cells
    v = ggml.row_bytes(s.cache_type_v, m.value_length * m.n_head_kv) * cells if m.v_cached else 0
    return int(k), int(v)


def kv_cache_bytes(m: ModelFacts, s: RuntimeSettings, n_blocks: int | None = None) -> int:
    k, v = kv_bytes_per_layer(m, s)
    return (k + v) * (m.n_layers if n_blocks is None else n_blocks)


def compute_buffer_bytes(m: ModelFacts, s: RuntimeSettings) -> int:
    """One device's compute buffer for a worst-case ubatch (every token an output)."""
    n_tok = min(s.n_ubatch, kv_cells(s))
    n_kv = kv_cells(s)
    mask = n_kv * n_tok * (2 if s.flash_attn else 4)
    scores = 0 if s.flash_attn else n_kv * n_tok * m.n_head * 4
    # ggml reuses memory between phases: the peak is the largest phase, plus the mask held throughout.
    f32 = 4 * n_tok
    return mask + max(
        scores + f32 * (6 * m.n_embd + 2 * m.n_head * (m.key_length + m.value_length)),  # attention
        f32 * (3 * m.n_ff + 4 * m.n_embd),  # dense FFN (measured: 3·n_ff + 3.0 to 3.6 n_embd; docs/architecture.md)
        f32 * (4 * m.n_expert_used * m.n_ff_exp + 6 * m.n_embd + 2 * m.n_expert),  # routed + shared experts
        f32 * (m.n_vocab + 2 * m.n_embd),  # output logits
    )


@dataclass(frozen=True)
class DeviceMemory:
    device: str
    weights: int
    kv_cache: int
    compute: int
    layers: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute

    def as_dict(self) -> dict:
        return {"device": self.device, "layers": self.layers, "weights": self.weights, "kvCache": self.kv_cache,
                "compute": self.compute, "total": self.total}
