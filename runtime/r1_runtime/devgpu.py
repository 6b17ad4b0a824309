"""MOCKS OF WHAT DEV CLUSTERS LACK, for dev clusters only: a GPU, and a real model's host memory.

A real model's host memory: dev clusters serve small test models, far below what the plan of a DeepSeek-R1
variant predicts, so a runtime there never reaches its memory limit. `--dev-simulated-host-bytes N` holds N
bytes, every page written, from before the load, as a load whose real use the plan under-predicted would: the
container's memory cgroup then OOMKills it for real at its limit (`host_ballast`).

A GPU (their GPUs are simulated: no CUDA device exists there):

`--dev-simulated-gpu-free-bytes N` makes a load fail as llama.cpp's fails when a GPU has N bytes free and the plan
(`--planned-memory`) puts more than that on it: the CUDA allocator's log lines, in llama.cpp's order (weights,
then KV cache, then compute buffer), are classified by the same code as a real failure, and the runtime exits
OUT_OF_MEMORY with the same termination message. The operator then corrects its plan as it would for a real
out-of-memory. The flag is 0 (off) unless an operator with R1_DEV_SIMULATED_GPUS renders it.
"""

from __future__ import annotations

MiB = 1 << 20
_ORDER = ("weights", "kv_cache", "compute")


def simulated_failure_log(planned: dict, free_bytes: int, n_gpu_layers: int) -> str | None:
    """llama.cpp's log of a load whose plan does not fit a GPU with `free_bytes` free, or None when it fits."""
    if free_bytes <= 0 or n_gpu_layers <= 0:
        return None
    for device, kinds in sorted(planned.items()):
        if not device.startswith("gpu"):
            continue
        index = int(device[3:] or 0)
        lines = [f"llama_model_load_from_file_impl: using device CUDA{index} (simulated GPU) - "
                 f"{free_bytes // MiB} MiB free\n"]
        used = 0
        for kind in _ORDER:
            size = int((kinds or {}).get(kind) or 0)
            if used + size <= free_bytes:
                used += size
                continue
            lines.append(f"ggml_backend_cuda_buffer_type_alloc_buffer: allocating {size / MiB:.2f} MiB on device "
                         f"{index}: cudaMalloc failed: out of memory\n")
            lines.append(f"alloc_tensor_range: failed to allocate CUDA{index} buffer of size {size}\n")
            lines.append({"weights": "llama_model_load: error loading model: unable to allocate CUDA"
                                     f"{index} buffer\n",
                          "kv_cache": "llama_init_from_model: failed to allocate buffer for kv cache\n",
                          "compute": "ggml_gallocr_reserve_n: failed to allocate CUDA"
                                     f"{index} buffer of size {size}\n"}[kind])
            return "".join(lines)
    return None


def host_ballast(n: int) -> bytes:
    """n bytes with every page written (resident, not a lazily mapped zero page); kept by the caller for the
    process's life."""
    return b"\xa5" * n
