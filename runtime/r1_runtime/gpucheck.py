"""Does llama.cpp see the GPUs the plan gives this runtime? Checked before a load that offloads layers, so a pod
without them (a CPU-only build, no driver or device in the container, a missing runtime class) says why at once,
instead of loading every layer on the CPU or failing as an out-of-memory."""

from __future__ import annotations

import ctypes

GPU_TYPES = (1, 2)  # ggml_backend_dev_type: GGML_BACKEND_DEVICE_TYPE_GPU, _IGPU (ggml-backend.h)


def gpu_devices() -> list[str]:
    """The GPU devices llama.cpp's backends found, by name and description (CUDA0: NVIDIA H100 80GB HBM3, ...)."""
    import llama_cpp.llama_cpp as L

    lib = L._lib
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
        fn.restype, fn.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if lib.ggml_backend_dev_type(dev) in GPU_TYPES:
            out.append(f"{lib.ggml_backend_dev_name(dev).decode()}: {lib.ggml_backend_dev_description(dev).decode()}")
    return out


def missing_gpus(wanted: int, n_gpu_layers: int) -> dict | None:
    """None when llama.cpp sees at least `wanted` GPUs (or nothing is offloaded); else the termination message:
    reason GPUUnavailable, the numbers, and the cause in words."""
    if wanted <= 0 or n_gpu_layers <= 0:
        return None
    import llama_cpp

    found = gpu_devices()
    if len(found) >= wanted:
        return None
    if not llama_cpp.llama_supports_gpu_offload():
        cause = ("this llama.cpp build has no GPU backend (a CPU-only runtime image): use the CUDA build (the "
                 "chart's runtime.gpuImage)")
    elif not found:
        cause = ("llama.cpp's GPU backend found no device: the container has no GPU or driver (is the NVIDIA "
                 "container runtime the node's default? else set spec.scheduling.runtimeClassName or the chart's "
                 "runtime.runtimeClassName, e.g. nvidia)")
    else:
        cause = f"llama.cpp sees {len(found)} GPU(s) ({'; '.join(found)}), the plan gives this runtime {wanted}"
    return {"reason": "GPUUnavailable", "wanted": wanted, "found": len(found), "devices": found[:8],
            "nGpuLayers": n_gpu_layers, "cause": cause}
