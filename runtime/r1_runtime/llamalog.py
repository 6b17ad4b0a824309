"""Capture llama.cpp's log and read the buffer sizes it allocates when loading a model.

llama-cpp-python's default log callback decodes every line as UTF-8 and raises
on the partial multi-byte sequences llama.cpp emits; this callback decodes with
replacement, so logs are never lost.
"""

from __future__ import annotations

import ctypes
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace

MiB = 1 << 20
_lock = threading.Lock()
_lines: list[str] | None = None
_callback = None
_echo_level = 99  # llama.cpp levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation


def install(echo_level: int = 99) -> None:
    """Install the callback; outside a capture, lines at echo_level or above go to stderr."""
    global _echo_level
    _echo_level = echo_level
    _install()


def _install() -> None:
    global _callback
    if _callback is not None:
        return
    import sys

    import llama_cpp

    @llama_cpp.llama_log_callback
    def cb(level, text, user_data):  # noqa: ARG001 - ctypes signature
        line = text.decode("utf-8", "replace")
        if _lines is not None:
            _lines.append(line)
        if level >= _echo_level:  # warnings and errors reach stderr, captured or not
            sys.stderr.write(line)

    _callback = cb  # keep a reference: ctypes would free it
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


@contextmanager
def captured_log():
    """Collect llama.cpp's log lines while the block runs (one capture at a time)."""
    global _lines
    with _lock:
        _install()
        _lines = []
        try:
            yield _lines
        finally:
            _lines = None


@dataclass(frozen=True)
class Buffers:
    """Bytes llama.cpp reported, per kind (summed over devices)."""

    weights: int
    kv_cache: int
    compute: int
    by_device: dict[str, dict[str, int]]


def _mib(x: str) -> int:
    return int(round(float(x) * MiB))


def parse_buffers(log: str) -> Buffers:
    by_device: dict[str, dict[str, int]] = {}

    def add(dev: str, kind: str, n: int) -> None:
        by_device.setdefault(dev, {}).setdefault(kind, 0)
        by_device[dev][kind] += n

    for dev, mib in re.findall(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB", log):
        add(dev, "weights", _mib(mib))
    for dev, mib in re.findall(r"llama_kv_cache:\s+(\S+) KV buffer size =\s+([\d.]+) MiB", log):
        add(dev, "kv_cache", _mib(mib))
    for dev, mib in re.findall(r"(\S+) compute buffer size =\s+([\d.]+) MiB", log):
        by_device.setdefault(dev, {})["compute"] = _mib(mib)  # the last reservation is the one kept
    total = lambda k: sum(d.get(k, 0) for d in by_device.values())  # noqa: E731
    if not by_device:
        raise ValueError("no buffer sizes found in the llama.cpp log")
    return Buffers(total("weights"), total("kv_cache"), total("compute"), by_device)


# ---------------------------------------------------------------- what a load got, and why one failed

@dataclass(frozen=True)
class LoadReport:
    """What llama.cpp reported after loading: layers offloaded and bytes per device and kind."""

    offloaded: int | None  # "offloaded N/M layers to GPU" (None: the line was not logged)
    layers: int | None
    by_device: dict[str, dict[str, int]]  # e.g. {"CPU": {"weights": .., "kv_cache": .., "compute": ..}, "CUDA0": {..}}

    def as_dict(self) -> dict:
        return {"offloadedLayers": self.offloaded, "layers": self.layers, "devices": self.by_device}


def parse_load_report(log: str) -> LoadReport:
    try:
        by_device = parse_buffers(log).by_device
    except ValueError:
        by_device = {}
    if m := re.search(r"offloaded (\d+)/(\d+) layers to GPU", log):
        return LoadReport(int(m.group(1)), int(m.group(2)), by_device)
    # a build without GPU backends logs no summary, but each layer's device (the output layer is the last)
    assigned = re.findall(r"layer\s+\d+ assigned to device (\S+?),", log)
    if assigned:
        return LoadReport(sum(d != "CPU" for d in assigned), len(assigned), by_device)
    return LoadReport(None, None, by_device)


@dataclass(frozen=True)
class LoadFailure:
    """An allocation llama.cpp could not make while loading."""

    kind: str  # weights | kv_cache | compute, as the plan's memory names them ("" when the log does not say)
    device: str  # as llama.cpp names it: CPU, CUDA0, ...
    bytes: int | None  # what it asked for, when the log says
    line: str  # the log line that said so
    free: int | None = None  # the device's free bytes when llama.cpp chose it ("using device CUDA0 (...) - N MiB free")

    @property
    def what(self) -> str:
        """The kind in words: model weights, KV cache, compute buffer (or a buffer)."""
        return _WHAT.get(self.kind, "a buffer")

    def plan_device(self) -> str:
        """The plan's name for the device: cpu, gpu0, gpu1, ..."""
        m = re.fullmatch(r"(?:CUDA|ROCm|Vulkan|SYCL|Metal)(\d*)", self.device)
        return f"gpu{m.group(1) or 0}" if m else "cpu"


_WHAT = {"weights": "model weights", "kv_cache": "KV cache", "compute": "compute buffer"}
# What failed: the line llama.cpp logs after the allocator gave up, and the kind it means.
_STAGES = (
    (re.compile(r"unable to allocate (\S+) buffer"), "weights"),
    (re.compile(r"failed to allocate buffer for kv cache"), "kv_cache"),
    (re.compile(r"failed to allocate compute (?:pp |tg )?buffers|ggml_gallocr_reserve_n: failed to allocate|"
                r"failed to allocate output buffer"), "compute"),
)
# The allocator's own line: device and bytes.
_ALLOCS = (
    re.compile(r"allocating ([\d.]+) MiB on device (\d+): cudaMalloc failed: out of memory"),  # CUDA, MiB, device no
    re.compile(r"failed to allocate (\S+) buffer of size (\d+)"),  # gallocr/alloc_tensor_range: buffer name, bytes
    re.compile(r"ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size (\d+)"),  # CPU
)


def classify_load_failure(log: str) -> LoadFailure | None:
    """The first allocation a load could not make (what, device, bytes), from llama.cpp's log; None if the log
    shows no allocation failure (a corrupt file, a bad setting)."""
    lines = log.splitlines()
    free = {m.group(1): int(m.group(2)) * MiB for m in _FREE.finditer(log)}
    found = _classify(lines)
    return replace(found, free=free.get(found.device)) if found is not None else None


# llama.cpp names each device it loads onto with its free memory
_FREE = re.compile(r"using device (\S+) \(.*?\) - (\d+) MiB free")


def _classify(lines: list[str]) -> LoadFailure | None:
    device, size, seen = None, None, None
    for i, line in enumerate(lines):
        if device is None:
            if m := _ALLOCS[0].search(line):
                size, device, seen = int(float(m.group(1)) * MiB), f"CUDA{m.group(2)}", line
            elif m := _ALLOCS[1].search(line):
                device, size, seen = m.group(1), int(m.group(2)), line
            elif m := _ALLOCS[2].search(line):
                device, size, seen = "CPU", int(m.group(1)), line
        for pattern, kind in _STAGES:
            if m := pattern.search(line):
                if kind == "weights" and m.group(1) and device is None:
                    device = m.group(1)
                if kind == "compute" and device is None and (g := re.search(r"allocate (\S+) buffer of size (\d+)",
                                                                             line)):
                    device, size = g.group(1), int(g.group(2))
                return LoadFailure(kind, device or "CPU", size, (seen or line).strip())
    if device is not None:  # an allocator failure without llama.cpp's summary line: name the device anyway
        return LoadFailure("", device, size, seen.strip())
    return None
