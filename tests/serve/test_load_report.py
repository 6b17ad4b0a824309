"""The runtime says what llama.cpp allocated, and a load that cannot allocate exits with its own code and message."""

from __future__ import annotations

import json
import resource
import subprocess

import httpx
from r1_devtools.serving import R1_RUNTIME, running_server

from r1_operator.api.contract import Exit
from r1_operator.modelinfo.describe import describe_local
from r1_operator.planning.memory import RuntimeSettings, kv_cache_bytes


def test_ready_metrics_and_log_report_the_buffers_llama_cpp_allocated(smollm2):
    with running_server(smollm2, "--ctx-size", "4096") as s:
        ready = httpx.get(s.url + "/ready").json()
        load = ready["load"]
        assert load["offloadedLayers"] == 0 and load["layers"] == 31  # 30 blocks and the output layer, on the CPU
        cpu = load["devices"]["CPU"]  # weights are "CPU_Mapped" (the mmap'd file), the rest "CPU"
        # the planner's KV figure for these settings is what llama.cpp allocated (the log has 0.01 MiB)
        facts = describe_local(smollm2)
        assert abs(cpu["kv_cache"] - kv_cache_bytes(facts, RuntimeSettings(ctx_size=4096))) <= 0.01 * (1 << 20)
        assert cpu["compute"] > 0 and sum(d.get("weights", 0) for d in load["devices"].values()) > 50 << 20
        m = s.metrics()
        assert m['r1_llamacpp_buffer_bytes{device="CPU",kind="kv_cache"}'] == cpu["kv_cache"]
        assert m["r1_llamacpp_offloaded_layers"] == 0
        assert "r1-runtime serve: llama.cpp offloaded 0/31 layers to GPU; CPU_Mapped: weights 92.1 MiB; CPU: kv_cache" \
            in s.log.read_text()


def test_a_kv_cache_that_cannot_be_allocated_exits_out_of_memory_naming_it(smollm2, tmp_path):
    """A real failed allocation: the address space is capped (RLIMIT_AS) below the KV cache a 163,840-token
    f16 context needs (3.6 GiB), so llama.cpp's CPU allocator fails as it does when RAM runs out."""
    term = tmp_path / "termination-log"
    term.write_text("")
    planned = {"cpu": {"weights": 100 << 20, "kv_cache": 3_600_000_000, "compute": 50 << 20}}

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (3_000_000_000, 3_000_000_000))

    r = subprocess.run([R1_RUNTIME, "serve", "--model", str(smollm2), "--port", "1", "--threads", "2",
                        "--ctx-size", "163840", "--cache-type-k", "f16", "--termination-log", str(term),
                        "--planned-memory", json.dumps(planned)],
                       preexec_fn=cap, capture_output=True, text=True, timeout=120)
    assert r.returncode == Exit.OUT_OF_MEMORY, r.stdout + r.stderr
    msg = json.loads(term.read_text())
    assert msg["reason"] == "OutOfMemory" and msg["what"] == "KV cache" and msg["device"] == "CPU"
    assert msg["requestedBytes"] == 3774873600 and msg["plannedBytes"] == 3_600_000_000
    assert "the KV cache on CPU could not be allocated" in r.stdout
    assert "the plan predicted 3433.2 MiB of KV cache on cpu" in r.stdout


def test_a_plan_with_gpus_that_llama_cpp_cannot_see_exits_gpu_unavailable_before_loading(smollm2, tmp_path):
    """This machine's llama.cpp is a CPU-only build with no GPU: exactly what a pod gets from the CPU image, or
    without the NVIDIA container runtime. The runtime must say so and exit before loading, not serve every layer
    on the CPU (nor fail later as an out-of-memory the operator would 'correct')."""
    term = tmp_path / "termination-log"
    term.write_text("")
    r = subprocess.run([R1_RUNTIME, "serve", "--model", str(smollm2), "--port", "1", "--threads", "2",
                        "--n-gpu-layers", "31", "--gpu-devices", "2", "--termination-log", str(term)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == Exit.GPU_UNAVAILABLE, r.stdout + r.stderr
    msg = json.loads(term.read_text())
    assert (msg["reason"], msg["wanted"], msg["found"], msg["nGpuLayers"]) == ("GPUUnavailable", 2, 0, 31)
    assert "no GPU backend (a CPU-only runtime image)" in msg["cause"] and "runtime.gpuImage" in msg["cause"]
    assert "not loading" in r.stdout and "llama.cpp offloaded" not in r.stdout
    # nothing offloaded, or the dev clusters' simulated GPUs: no check, and it serves
    for args in (["--gpu-devices", "2"], ["--n-gpu-layers", "31", "--gpu-devices", "2", "--dev-simulated-gpus"]):
        with running_server(smollm2, *args) as s:
            assert httpx.get(s.url + "/ready").status_code == 200
