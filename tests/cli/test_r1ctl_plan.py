"""`r1ctl plan` as users run it: hypothetical hardware, a GGUF file, a hub over HTTP, and the real dev cluster."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from r1_devtools.testmodel import write_test_model

BIN = Path(sys.executable).parent


def r1ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "r1ctl"), "plan", *args], capture_output=True, text=True, timeout=120)


def test_hypothetical_hardware_table_and_json():
    res = r1ctl("--gpu-count", "1", "--gpu-memory-gb", "80", "--ram-gb", "512")
    assert res.returncode == 0, res.stderr
    assert "UD-Q2_K_XL" in res.stdout and "20/62" in res.stdout and "--n-gpu-layers 20" in res.stdout
    from r1_operator.api import contract

    peak = contract.cache_peak_bytes(212 << 30, 212 << 30, merge=True)  # 212.0 GiB of shards + the merge's slack
    assert "reasons:" in res.stdout and f"  {peak / (1 << 30):.0f} GiB\n" in res.stdout
    res = r1ctl("--gpu-count", "1", "--gpu-memory-gb", "80", "--ram-gb", "512", "--offload", "formula", "-o", "json")
    plan = json.loads(res.stdout)
    # the blog's formula: floor(80 / 212 × 61) − 4 = 19 blocks, plus the output head
    assert (plan["variant"], plan["nGpuLayers"], plan["nLayers"], plan["gpuLayers"]) == ("UD-Q2_K_XL", 20, 61, "20/62")
    assert plan["offload"] == "formula" and plan["tensorSplit"] == [] and plan["memory"][-1]["device"] == "cpu"


def test_nothing_fits_exits_non_zero_with_numbers():
    res = r1ctl("--gpu-count", "0", "--ram-gb", "8")
    assert res.returncode == 1
    assert "nothing fits" in res.stdout and "GiB" in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpu-count", "1", "--gpu-memory-gb", "-80", "--ram-gb", "64"], "--gpu-memory-gb must be between"),
        (["--gpu-count", "1", "--gpu-memory-gb", "80", "--ram-gb", "99999999"], "--ram-gb must be between"),
        (["--gpu-count", "1", "--gpu-memory-gb", "80", "--ram-gb", "64", "--variant", "UD-IQ9"], "unknown variant 'UD-IQ9'"),
        (["--gpu-count", "1", "--gpu-memory-gb", "80"], "--ram-gb"),
        (["--gpu-count", "1", "--gpu-memory-gb", "80", "--ram-gb", "64", "--model-file", "/nonexistent/m.gguf"], "/nonexistent/m.gguf: no such file"),
        (["--gpu-count", "1", "--gpu-memory-gb", "80", "--ram-gb", "64", "--cache-type-v", "q4_0"], "needs --flash-attn"),
    ],
)
def test_bad_input_names_the_flag(args, message):
    res = r1ctl(*args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_unreadable_gguf_names_the_file(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf at all")
    res = r1ctl("--gpu-count", "0", "--ram-gb", "64", "--model-file", str(bad))
    assert res.returncode == 2 and "broken.gguf: not a GGUF file" in res.stderr


def test_model_file_is_described_from_its_own_header(tmp_path):
    first = write_test_model(tmp_path / "Mini.gguf", n_shards=2)[0]
    res = r1ctl("--gpu-count", "1", "--gpu-memory-gb", "8", "--ram-gb", "16", "--model-file", str(first), "-o", "json")
    plan = json.loads(res.stdout)
    assert res.returncode == 0, res.stderr
    assert plan["nLayers"] == 4 and plan["nGpuLayers"] == 5 and plan["mode"] == "gpu"


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support, counting the bytes it sends."""

    sent = 0

    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        path = Path(self.directory) / self.path.split("/resolve/main/", 1)[-1]
        data = path.read_bytes() if path.is_file() else None
        if data is None:
            self.send_error(404)
            return
        start, _, end = self.headers["Range"].removeprefix("bytes=").partition("-")
        chunk = data[int(start): int(end) + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{int(start) + len(chunk) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        self.wfile.write(chunk)
        type(self).sent += len(chunk)


def test_remote_model_is_described_with_range_requests(tmp_path):
    files = write_test_model(tmp_path / "Remote.gguf", n_shards=2)
    # Pad shard files so they are much larger than their headers: only header bytes may be fetched.
    for f in files:
        with open(f, "ab") as fh:
            fh.write(b"\0" * (8 << 20))
    handler = type("H", (_RangeHandler,), {"sent": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from r1_operator.modelinfo.describe import describe_remote

        facts = describe_remote("org/remote", [f.name for f in files], endpoint=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    assert facts.n_layers == 4 and facts.n_shards == 2
    assert facts.file_bytes == sum(f.stat().st_size for f in files)
    assert handler.sent < sum(f.stat().st_size for f in files) / 4  # headers, not whole files


@pytest.mark.cluster
def test_plan_against_the_dev_cluster(cluster):
    res = r1ctl("--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    per_node = {p["node"]: p for p in out["nodes"]}
    assert {"gpu-24g", "gpu-80g", "gpu-2x80g", "cpu-only"} <= set(per_node)
    assert per_node["gpu-2x80g"]["gpus"] == 2 and per_node["cpu-only"]["gpus"] == 0
    assert out["node"] == "gpu-2x80g" and out["tensorSplit"] == [1, 1]
