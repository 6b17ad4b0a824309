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

from r1_operator.planning import ggml
from r1_operator.planning.model import ModelFacts

MiB = 1 << 20
GiB = 1 << 30
KV_PAD = 256  # llama.cpp pads the KV cache size to this many cells


@dataclass(frozen=True)
class RuntimeSettings:
    """The llama.cpp context settings that change memory use."""

    ctx_size: int = 8192
    n_ubatch: int = 512
    cache_type_k: str = "q4_0"
    cache_type_v: str = "f16"
    flash_attn: bool = False
    parallel: int = 1

    def validate(self, m: ModelFacts | None = None) -> None:
        if not 256 <= self.ctx_size <= 1 << 21:
            raise ValueError(f"ctx size must be between 256 and 2097152, got {self.ctx_size}")
        if not 1 <= self.n_ubatch <= 1 << 16:
            raise ValueError(f"ubatch size must be between 1 and 65536, got {self.n_ubatch}")
        for field_, value in (("cache type K", self.cache_type_k), ("cache type V", self.cache_type_v)):
            if value not in ggml.CACHE_TYPES:
                raise ValueError(f"{field_} must be one of {', '.join(ggml.CACHE_TYPES)}, got {value!r}")
        if self.cache_type_v not in ("f16", "f32", "bf16") and not self.flash_attn:
            raise ValueError(f"a quantized V cache ({self.cache_type_v}) requires flash attention")
        if m is not None and m.mla and self.cache_type_k != self.cache_type_v:
            raise ValueError(f"{m.name} uses MLA: K and V cache types must match (got {self.cache_type_k}/{self.cache_type_v})")
        if not 1 <= self.parallel <= 256:
            raise ValueError(f"parallel must be between 1 and 256, got {self.parallel}")


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
        f32 * (3 * m.n_ff + 6 * m.n_embd),  # dense FFN
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
