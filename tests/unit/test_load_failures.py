"""llama.cpp's load log read by the runtime: what it allocated, and which allocation failed.

The excerpts have the shape of llama.cpp's own format strings (ggml-backend, ggml-alloc, ggml-cuda,
llama-model, llama-kv-cache, llama-context); the CPU KV case is a line-for-line capture of this
runtime failing under RLIMIT_AS (tests/serve/test_load_report.py makes it happen for real).
"""

from __future__ import annotations

import pytest

from r1_runtime.llamalog import classify_load_failure, parse_load_report

CASES = {
    "cuda-weights": ("""llama_model_load_from_file_impl: using device CUDA0 (NVIDIA H200) - 139000 MiB free
load_tensors: offloading 40 repeating layers to GPU
ggml_backend_cuda_buffer_type_alloc_buffer: allocating 141234.50 MiB on device 0: cudaMalloc failed: out of memory
alloc_tensor_range: failed to allocate CUDA0 buffer of size 148094042112
llama_model_load: error loading model: unable to allocate CUDA0 buffer
llama_model_load_from_file_impl: failed to load model
""", ("model weights", "CUDA0", int(141234.50 * (1 << 20)), "gpu0")),
    "cuda-kv-second-gpu": ("""load_tensors: offloaded 62/62 layers to GPU
ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9216.00 MiB on device 1: cudaMalloc failed: out of memory
alloc_tensor_range: failed to allocate CUDA1 buffer of size 9663676416
llama_kv_cache: failed to allocate buffer for kv cache
llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache
""", ("KV cache", "CUDA1", 9216 << 20, "gpu1")),
    "cuda-compute": ("""llama_kv_cache:      CUDA0 KV buffer size =  1952.00 MiB
ggml_backend_cuda_buffer_type_alloc_buffer: allocating 3320.06 MiB on device 0: cudaMalloc failed: out of memory
ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 3481339904
graph_reserve: failed to allocate compute buffers
llama_init_from_model: failed to initialize the context: failed to allocate compute pp buffers
""", ("compute buffer", "CUDA0", int(3320.06 * (1 << 20)), "gpu0")),
    # an allocator failure without llama.cpp's summary: the device and bytes, and no kind to compare with the plan
    "cuda-malloc-alone": ("""ggml_backend_cuda_buffer_type_alloc_buffer: allocating 100.00 MiB on device 1: cudaMalloc failed: out of memory
""", ("a buffer", "CUDA1", 100 * (1 << 20), "gpu1")),
    "gallocr-alone": ("""ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 3481339904
""", ("compute buffer", "CUDA0", 3481339904, "gpu0")),
    "cpu-kv": ("""llama_context: n_ctx_seq (163840) > n_ctx_train (8192) -- possible training context overflow
ggml_aligned_malloc: insufficient memory (attempted to allocate 3600.00 MB)
ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 3774873600
alloc_tensor_range: failed to allocate CPU buffer of size 3774873600
llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache
""", ("KV cache", "CPU", 3774873600, "cpu")),
    "cpu-weights-no-mmap": ("""ggml_aligned_malloc: insufficient memory (attempted to allocate 130000.00 MB)
ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 136314880000
llama_model_load: error loading model: unable to allocate CPU buffer
""", ("model weights", "CPU", 136314880000, "cpu")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_failed_allocation_is_named_with_its_device_and_bytes(name):
    log, (what, device, size, plan_device) = CASES[name]
    f = classify_load_failure(log)
    assert (f.what, f.device, f.bytes, f.plan_device()) == (what, device, size, plan_device)
    assert f.kind in ("weights", "kv_cache", "compute") if what != "a buffer" else f.kind == ""


@pytest.mark.parametrize("log", [
    "llama_model_load: error loading model: tensor 'blk.0.attn_q.weight' data is not within the file bounds\n",
    "gguf_init_from_file_impl: failed to read magic\nllama_model_load: error loading model: invalid magic\n",
    "",
])
def test_a_failure_that_is_not_memory_is_not_called_one(log):
    assert classify_load_failure(log) is None


def test_the_load_report_reads_layers_and_buffers_per_device():
    r = parse_load_report("""load_tensors: offloading 20 repeating layers to GPU
load_tensors: offloaded 21/62 layers to GPU
load_tensors:        CUDA0 model buffer size = 70000.00 MiB
load_tensors:   CPU_Mapped model buffer size = 60000.50 MiB
llama_kv_cache:      CUDA0 KV buffer size =   320.00 MiB
llama_kv_cache:        CPU KV buffer size =   656.00 MiB
llama_context:      CUDA0 compute buffer size =  2000.00 MiB
llama_context:  CUDA_Host compute buffer size =    88.01 MiB
""")
    assert (r.offloaded, r.layers) == (21, 62)
    assert r.by_device["CUDA0"] == {"weights": 70000 << 20, "kv_cache": 320 << 20, "compute": 2000 << 20}
    assert r.by_device["CPU_Mapped"]["weights"] == int(60000.50 * (1 << 20))
    assert r.as_dict()["offloadedLayers"] == 21


def test_a_cpu_build_reports_its_layers_from_their_assignments():
    log = "".join(f"load_tensors: layer {i:3d} assigned to device CPU, is_swa = 0\n" for i in range(31))
    log += "load_tensors:   CPU_Mapped model buffer size =    92.10 MiB\n"
    r = parse_load_report(log)
    assert (r.offloaded, r.layers) == (0, 31) and r.by_device == {"CPU_Mapped": {"weights": round(92.10 * (1 << 20))}}


def test_the_operator_names_a_load_out_of_memory_in_the_status():
    import json

    from r1_operator.k8s.observe import _load_out_of_memory

    msg = {"reason": "OutOfMemory", "what": "KV cache", "device": "CUDA0", "planDevice": "gpu0",
           "requestedBytes": 9216 << 20, "plannedBytes": 8192 << 20, "line": "..."}
    pod = {"metadata": {"name": "r1-abc", "annotations": {"r1.inference.dev/plan-hash": "abc123"},
                        "labels": {"r1.inference.dev/placement": "1"}}}
    cs = {"name": "runtime", "restartCount": 2,
          "lastState": {"terminated": {"exitCode": 5, "reason": "Error", "message": json.dumps(msg)}}}
    said, detail = _load_out_of_memory(pod, cs)
    assert "the KV cache on CUDA0 could not be allocated (9216.0 MiB asked, the plan predicted 8192.0 MiB there" in said
    assert "2 restarts" in said and "spec.inference.ctxSize" in said
    # what the correction is made from: the message, and which plan and placement the pod ran
    assert detail == {**msg, "pod": "r1-abc", "planHash": "abc123", "placement": 1}
    assert _load_out_of_memory(pod, {"name": "runtime", "lastState": {"terminated": {"exitCode": 1}}}) == ("", None)


def test_the_device_free_memory_llama_cpp_logged_is_kept():
    f = classify_load_failure(CASES["cuda-weights"][0])
    assert f.free == 139000 << 20
    assert classify_load_failure(CASES["cuda-kv-second-gpu"][0]).free is None  # not logged: not guessed


@pytest.mark.parametrize("free,kind", [
    (10 << 20, "model weights"),  # the weights alone do not fit
    (110 << 20, "KV cache"),  # the weights fit, the KV cache does not
    (125 << 20, "compute buffer"),  # only the compute buffer is left over
])
def test_the_gpu_mock_fails_like_llama_cpp_and_is_classified_as_a_real_failure(free, kind):
    """r1_runtime.devgpu, a mock of a GPU for dev clusters: the log it writes goes through the real classifier."""
    from r1_runtime.devgpu import simulated_failure_log

    planned = {"cpu": {"weights": 5 << 20}, "gpu0": {"weights": 100 << 20, "kv_cache": 20 << 20, "compute": 10 << 20}}
    f = classify_load_failure(simulated_failure_log(planned, free, n_gpu_layers=10))
    assert (f.what, f.device, f.plan_device(), f.free) == (kind, "CUDA0", "gpu0", free)
    assert f.bytes == planned["gpu0"][{"model weights": "weights", "KV cache": "kv_cache",
                                       "compute buffer": "compute"}[kind]]
    assert simulated_failure_log(planned, 130 << 20, n_gpu_layers=10) is None  # it fits
    assert simulated_failure_log(planned, 10 << 20, n_gpu_layers=0) is None  # nothing on the GPU


def test_the_operator_names_a_missing_gpu_and_says_what_to_do_without_correcting_the_plan():
    import json

    from r1_operator.builders.status import RuntimeObservation
    from r1_operator.k8s.observe import _gpu_unavailable, _load_out_of_memory

    msg = {"reason": "GPUUnavailable", "wanted": 2, "found": 0, "nGpuLayers": 62, "devices": [],
           "cause": "this llama.cpp build has no GPU backend (a CPU-only runtime image): use the CUDA build (the "
                    "chart's runtime.gpuImage)"}
    pod = {"metadata": {"name": "r1-abc"}, "spec": {"nodeName": "gke-a3"}}
    cs = {"name": "runtime", "restartCount": 1,
          "lastState": {"terminated": {"exitCode": 6, "reason": "Error", "message": json.dumps(msg)}}}
    said = _gpu_unavailable(pod, cs)
    assert said.startswith("pod r1-abc on gke-a3: the runtime found 0 of the 2 GPU(s)") and "runtime.gpuImage" in said
    assert _load_out_of_memory(pod, cs) == ("", None)  # so no plan correction is made from it
    assert _gpu_unavailable(pod, {"lastState": {"terminated": {"exitCode": 5}}}) == ""
    assert RuntimeObservation().load_oom is None
