"""Fetch progress: a JSON file on the volume, a line every few seconds (a bar on a TTY), machine-readable tails."""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from pathlib import Path

from r1_operator.api.contract import PROGRESS_FILE, PROGRESS_KEYS, PROGRESS_MARK
from r1_runtime.cache.files import write_json_atomic


class Progress:
    """Phase, bytes and rate: a JSON file on the volume, a line every `interval` s, a bar on a TTY."""

    def __init__(self, dest: Path, total: int, interval: float = 5.0, stream=sys.stderr):
        self.path = dest / PROGRESS_FILE
        self.total = total
        self.done = 0
        self.phase = "starting"
        self.file = ""
        self.interval = interval
        self.stream = stream
        self.started = time.monotonic()
        self._window: collections.deque[tuple[float, int]] = collections.deque([(self.started, 0)])
        self._last_line = 0.0
        self._last_write = 0.0
        self._printed_phase = ""
        self._lock = threading.RLock()  # the fetch's connections report from their threads
        self._conns: dict[int, tuple[str, collections.deque]] = {}  # connection -> (file, its rate window)
        self._limited: dict | None = None  # the hub's current rate-limit wait
        self._bar = None
        if hasattr(stream, "isatty") and stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, file=stream)

    def rate(self) -> float:
        return _rate(self._window, self.done)

    def connection(self, conn: int, file: str | None) -> None:
        """Connection `conn` now fetches `file` (None: it is idle)."""
        with self._lock:
            if file is None:
                self._conns.pop(conn, None)
            else:
                self._conns[conn] = (file, collections.deque([(time.monotonic(), 0)]))

    def rate_limited(self, wait: float, source: str, by: str) -> None:
        """The hub (or its storage) asked the fetch to wait `wait` s (0: the wait is over); shown in the progress
        file, the lines and the operator's status."""
        with self._lock:
            self._limited = {"waitSeconds": round(wait), "source": source, "by": by,
                             "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + wait))} \
                if wait > 0 else None
            self.emit(force=True)

    def connections(self) -> list[dict]:
        with self._lock:
            return [{"connection": c, "file": f, "bytesPerSecond": round(_rate(w, w[-1][1]))}
                    for c, (f, w) in sorted(self._conns.items())]

    def snapshot(self, **extra) -> dict:
        rate = self.rate()
        left = self.total - self.done
        return {
            "phase": self.phase,
            "file": self.file,
            "bytesDone": self.done,
            "bytesTotal": self.total,
            "percent": round(100.0 * self.done / self.total, 1) if self.total else 100.0,
            "bytesPerSecond": round(rate),
            "etaSeconds": round(left / rate) if rate > 0 and left > 0 else None,
            "elapsedSeconds": round(time.monotonic() - self.started, 1),
            "updatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "connections": self.connections(),
            **({"rateLimited": self._limited} if self._limited else {}),
            **extra,
        }

    def set_phase(self, phase: str, file: str = "", done: int | None = None, total: int | None = None) -> None:
        with self._lock:
            self._set_phase(phase, file, done, total)

    def _set_phase(self, phase: str, file: str, done: int | None, total: int | None) -> None:
        self.phase, self.file = phase, file
        if total is not None:
            self.total = total
            if self._bar is not None:
                self._bar.reset(total=total)
        if done is not None:
            self.done = done
            self._window = collections.deque([(time.monotonic(), done)])
            if self._bar is not None:
                self._bar.n = done
                self._bar.refresh()
        self.emit(force=True)

    def add(self, n: int, conn: int | None = None) -> None:
        """n more bytes done (by connection `conn`, when one fetched them)."""
        with self._lock:
            self.done += n
            now = time.monotonic()
            self._window.append((now, self.done))
            if conn is not None and conn in self._conns:
                w = self._conns[conn][1]
                w.append((now, w[-1][1] + n))
            if self._bar is not None:
                self._bar.update(n)
            if now - self._last_write >= 1.0 or (self._bar is None and now - self._last_line >= self.interval):
                self.emit()  # the snapshot is built only when it is written or printed

    def emit(self, force: bool = False, **extra) -> dict:
        with self._lock:
            return self._emit(force, **extra)

    def _emit(self, force: bool = False, **extra) -> dict:
        now = time.monotonic()
        snap = self.snapshot(**extra)
        if force or now - self._last_write >= 1.0:
            write_json_atomic(self.path, snap, durable=False)
            self._last_write = now
        if self._bar is None and (now - self._last_line >= self.interval or (force and self.phase != self._printed_phase)
                                  or (force and "rateLimited" in snap)):
            rate = snap["bytesPerSecond"] / (1 << 20)
            conns = snap["connections"]
            each = (f" over {len(conns)} connections (" + " ".join(f"{c['bytesPerSecond'] / (1 << 20):.1f}"
                                                             for c in conns) + " MiB/s)") if conns else ""
            # The JSON tail is for machines: the operator reads it from the pod's log for the CACHE column.
            machine = json.dumps({k: snap[k] for k in (*PROGRESS_KEYS, "rateLimited") if k in snap})
            print(f"r1-runtime fetch: {snap['phase']} {snap['file']} {gib(self.done)}/{gib(self.total)} "
                  f"({snap['percent']}%) {rate:.1f} MiB/s{each} {PROGRESS_MARK}{machine}", file=self.stream,
                  flush=True)
            self._last_line = now
            self._printed_phase = self.phase
        return snap

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def _rate(window: collections.deque, now_bytes: int) -> float:
    """Bytes per second over the last 10 s of (time, bytes) samples."""
    now = time.monotonic()
    while len(window) > 1 and now - window[0][0] > 10.0:
        window.popleft()
    t0, b0 = window[0]
    return (now_bytes - b0) / (now - t0) if now > t0 else 0.0
