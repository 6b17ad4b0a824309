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
from dataclasses import dataclass

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
        if _lines is not None:
            _lines.append(text.decode("utf-8", "replace"))
        elif level >= _echo_level:
            sys.stderr.write(text.decode("utf-8", "replace"))

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
