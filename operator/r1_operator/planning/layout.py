"""Where llama.cpp puts each layer for --n-gpu-layers over N GPUs, and what each device then holds (pure).

Figures are memoised by model identity: planning 1,000 nodes asks the same few
questions many times.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from fractions import Fraction

from r1_operator.planning.memory import DeviceMemory, RuntimeSettings, compute_buffer_bytes, kv_bytes_per_layer
from r1_operator.planning.model import ModelFacts


@dataclass(frozen=True)
class _Prefix:
    """Prefix sums of block bytes, so a layout costs O(GPUs) instead of O(layers)."""

    sums: tuple[int, ...]

    @classmethod
    def of(cls, m: ModelFacts) -> _Prefix:
        acc, out = 0, [0]
        for b in m.block_bytes:
            acc += b
            out.append(acc)
        return cls(tuple(out))

    def range(self, a: int, b: int) -> int:
        return self.sums[b] - self.sums[a]


_DERIVED: dict[tuple, object] = {}


def _prefix(m: ModelFacts) -> _Prefix:
    if len(_DERIVED) > 8192:
        _DERIVED.clear()
    key = ("prefix", id(m))
    hit = _DERIVED.get(key)
    if hit is None or hit[0] is not m:
        hit = _DERIVED[key] = (m, _Prefix.of(m))
    return hit[1]


def _per_layer(m: ModelFacts, s: RuntimeSettings) -> tuple[int, int]:
    """(KV bytes per block, compute buffer bytes), memoised by model identity (hashing ModelFacts is slow)."""
    key = ("layer", id(m), s)
    hit = _DERIVED.get(key)
    if hit is None or hit[0] is not m:
        k, v = kv_bytes_per_layer(m, s)
        hit = _DERIVED[key] = (m, (k + v, compute_buffer_bytes(m, s)))
    return hit[1]


def device_layout(m: ModelFacts, s: RuntimeSettings, arg: int, n_gpus: int) -> tuple[DeviceMemory, ...]:
    key = ("layout", id(m), s, arg, n_gpus)
    hit = _DERIVED.get(key)
    if hit is None or hit[0] is not m:
        hit = _DERIVED[key] = (m, _device_layout(m, s, arg, n_gpus))
    return hit[1]


def _gpu_runs(n: int, arg: int, n_gpus: int) -> list[tuple[int, int, bool]]:
    """(first block, blocks, holds the output head) per GPU, as llama.cpp assigns layers.

    Layers are 0..n, the output head being layer n; the last `arg` of them go to
    the GPUs in consecutive runs (device g takes j in [ceil(g*arg/G), ceil((g+1)*arg/G))).
    """
    start = n + 1 - arg
    runs = []
    for g in range(n_gpus):
        a = start + -(-g * arg // n_gpus)
        b = start + -(-(g + 1) * arg // n_gpus)
        runs.append((a, max(min(b, n) - a, 0), b == n + 1 and b > a))
    return runs


def _device_layout(m: ModelFacts, s: RuntimeSettings, arg: int, n_gpus: int) -> tuple[DeviceMemory, ...]:
    """Per-device memory for --n-gpu-layers=arg over n_gpus equal GPUs; the rest and token_embd stay on the CPU."""
    n = m.n_layers
    arg = min(max(arg, 0), n + 1) if n_gpus else 0
    pre = _prefix(m)
    kv_layer, compute = _per_layer(m, s)
    devices = []
    for g, (a, blocks, output) in enumerate(_gpu_runs(n, arg, n_gpus)):
        w = (pre.range(a, a + blocks) if blocks else 0) + (m.output_bytes if output else 0)
        devices.append(DeviceMemory(f"gpu{g}", w, kv_layer * blocks, compute if blocks or output else 0, blocks))
    cpu_blocks = min(n + 1 - arg, n)
    cpu_w = m.input_bytes + pre.range(0, cpu_blocks) + (m.output_bytes - m.tied_output_bytes if arg == 0 else 0)
    devices.append(DeviceMemory("cpu", cpu_w, kv_layer * cpu_blocks, compute, cpu_blocks))
    return tuple(devices)


def _need_table(m: ModelFacts, s: RuntimeSettings, n_gpus: int) -> list[int]:
    """need[arg]: the most any GPU holds at --n-gpu-layers=arg, made non-decreasing.

    It depends on the model, settings and GPU count, never on a node's memory, so
    it is built once and shared by every node with that many free GPUs.
    """
    key = ("need", id(m), s, n_gpus)
    hit = _DERIVED.get(key)
    if hit is None or hit[0] is not m:
        pre, (kv_layer, compute) = _prefix(m), _per_layer(m, s)
        need, worst = [], 0
        for arg in range(m.n_layers + 2):  # the same runs as _device_layout, summed as plain integers
            for a, blocks, output in _gpu_runs(m.n_layers, arg, n_gpus):
                if blocks or output:
                    total = pre.range(a, a + blocks) + (m.output_bytes if output else 0) + kv_layer * blocks + compute
                    worst = max(worst, total)
            need.append(worst)
        hit = _DERIVED[key] = (m, need)
    return hit[1]


def max_gpu_layers(m: ModelFacts, s: RuntimeSettings, n_gpus: int, usable_per_gpu: int) -> int:
    """Largest --n-gpu-layers such that it, and every smaller value, fits each GPU in usable_per_gpu bytes."""
    if n_gpus == 0 or usable_per_gpu <= 0:
        return 0
    return max(bisect.bisect_right(_need_table(m, s, n_gpus), usable_per_gpu) - 1, 0)


def formula_layers(vram_bytes: int, file_bytes: int, n_layers: int) -> int:
    """The blog's rule, n = floor(VRAM / filesize × n_layers) − 4, clamped to [0, n_layers], in exact arithmetic."""
    if file_bytes <= 0:
        raise ValueError("file size must be > 0")
    n = math.floor(Fraction(vram_bytes) * n_layers / Fraction(file_bytes)) - 4
    return min(max(n, 0), n_layers)
