"""`r1ctl dev up/down` through the real CLI: custom node shapes, idempotent up, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1_operator.dev.cluster import COMPONENTS

pytestmark = pytest.mark.cluster

BIN = Path(sys.executable).parent


def _r1ctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "r1ctl"), *args], capture_output=True, text=True, timeout=180, check=check)


def test_dev_up_with_custom_shapes_then_down_leaves_no_process(tmp_path):
    name = f"shapes-{os.getpid()}"
    shapes = tmp_path / "nodes.yaml"
    shapes.write_text(
        "nodes:\n"
        "  - {name: big-gpu, gpus: 8, gpuMemoryMiB: 143771, gpuProduct: NVIDIA-H200, memory: 2Ti}\n"
        "  - {name: tainted, gpus: 1, gpuMemoryMiB: 24576, memory: 64Gi,"
        " taints: [{key: dedicated, value: llm, effect: NoSchedule}]}\n"
    )
    up = _r1ctl("dev", "up", "--name", name, "--nodes", str(shapes), "--real-nodes", "0")
    try:
        kubeconfig = up.stdout.strip()
        assert Path(kubeconfig).is_file(), up.stderr
        out = subprocess.run(
            [str(BIN / "kubectl"), "--kubeconfig", kubeconfig, "get", "nodes", "-o", "json"],
            capture_output=True, text=True, check=True, timeout=60,
        )
        nodes = {n["metadata"]["name"]: n for n in json.loads(out.stdout)["items"]}
        assert set(nodes) == {"big-gpu", "tainted"}
        assert nodes["big-gpu"]["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert nodes["big-gpu"]["metadata"]["labels"]["nvidia.com/gpu.memory"] == "143771"
        assert nodes["tainted"]["spec"]["taints"][0]["key"] == "dedicated"
        # A second `up` reuses the running cluster instead of starting another.
        assert _r1ctl("dev", "up", "--name", name, "--real-nodes", "0").stdout.strip() == kubeconfig
        status = json.loads(_r1ctl("dev", "status", "--name", name).stdout)
        pids = [p["pid"] for p in status["processes"].values()]
        assert len(pids) == len(COMPONENTS) and all(p["alive"] for p in status["processes"].values())
    finally:
        _r1ctl("dev", "down", "--name", name)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), pid
    assert not Path(kubeconfig).exists()
    assert _r1ctl("dev", "status", "--name", name, check=False).returncode == 1


def test_dev_up_rejects_a_bad_shape_file_before_starting_anything(tmp_path):
    shapes = tmp_path / "nodes.yaml"
    shapes.write_text("nodes:\n  - {name: g, gpus: 1}\n")
    res = _r1ctl("dev", "up", "--name", f"bad-{os.getpid()}", "--nodes", str(shapes), check=False)
    assert res.returncode == 2
    assert "gpuMemoryMiB is required" in res.stderr


def test_dev_up_starts_again_on_new_ports_when_a_port_is_taken(monkeypatch):
    """Another listener takes the etcd port between choosing it and etcd binding it: etcd exits with
    'address already in use', and `up` starts again on fresh ports instead of failing the whole test session."""
    import socket

    from r1_operator.dev import cluster as dev
    from r1_operator.dev import processes

    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    calls = []

    def ports(n):
        calls.append(n)
        got = processes.free_ports(n)
        return [taken, *got[1:]] if len(calls) == 1 else got

    monkeypatch.setattr(dev, "free_ports", ports)
    name = f"ports-{os.getpid()}"
    try:
        state = dev.up(name, nodes=[], real_nodes=0)
        assert len(calls) == 2
        assert state.ports["etcd"] != taken
        assert dev.status(name)["running"]
    finally:
        dev.down(name)
        squatter.close()


def test_a_component_that_dies_at_start_is_reported_with_its_log(monkeypatch):
    """A failure other than a taken port is not retried, and the error carries the end of the component's log."""
    from r1_operator.dev import cluster as dev
    from r1_operator.dev import processes

    calls = []

    def ports(n):
        calls.append(n)
        return processes.free_ports(n)

    monkeypatch.setattr(dev, "free_ports", ports)
    real_start = dev._start

    def start(state, *args, **kwargs):
        # An etcd that cannot start: its data directory is a file.
        Path(state.etcd_dir).rmdir()
        Path(state.etcd_dir).write_text("not a directory")
        return real_start(state, *args, **kwargs)

    monkeypatch.setattr(dev, "_start", start)
    name = f"dies-{os.getpid()}"
    try:
        with pytest.raises(dev.ClusterError, match=r"etcd exited while waiting for etcd; the end of .*etcd\.log:\n.+"):
            dev.up(name, nodes=[], real_nodes=0)
        assert len(calls) == 1
    finally:
        dev.down(name)
