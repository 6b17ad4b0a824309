"""A bounded closed-loop load of streaming chat requests, and Prometheus targets that follow a Deployment's pods.

Both serve the autoscaling test (tests/real/test_real_autoscale.py) and its benchmark (benchmarks/autoscale.py):
`Load` keeps `concurrency` streaming requests in flight through one URL, each on a new client (kube-proxy
balances connections), and counts every request that failed; `PodTargets` rewrites a Prometheus file_sd file
with the runtime pods' metrics ports and the labels the chart's PodMonitor gives them.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    tokens_at: list[tuple[float, int]] = field(default_factory=list)  # (monotonic end, tokens) of each success


class Load:
    """`concurrency` threads, each sending one streaming request after another until stop() or `limit_s`."""

    def __init__(self, url: str, model: str, concurrency: int, max_tokens: int = 64, limit_s: float = 600.0):
        self.url, self.model, self.max_tokens, self.limit_s = url, model, max_tokens, limit_s
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._active = concurrency
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(concurrency)]
        self.started = 0.0

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> Tally:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)
        return self.tally

    def set_concurrency(self, n: int) -> None:
        """Fewer streams from now on: the threads beyond `n` finish their request and stop."""
        self._active = n

    def _run(self, i: int) -> None:
        from openai import OpenAI

        deadline = self.started + self.limit_s
        while not self._stop.is_set() and i < self._active and time.monotonic() < deadline:
            client = OpenAI(base_url=f"{self.url}/v1", api_key="unused", timeout=120, max_retries=0)
            try:
                tokens = 0
                stream = client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": "Count to a thousand."}],
                    max_tokens=self.max_tokens, temperature=0, stream=True, stream_options={"include_usage": True})
                finish = None
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
                    if chunk.usage:
                        tokens = chunk.usage.completion_tokens
                if finish not in ("length", "stop") or tokens <= 0:
                    raise RuntimeError(f"stream ended with finish_reason={finish!r}, {tokens} tokens")
                with self._lock:
                    now = time.monotonic()
                    self.tally.ok += 1
                    self.tally.tokens_at.append((now, tokens))
            except Exception as exc:  # noqa: BLE001 - every failure is counted and kept, whatever it is
                with self._lock:
                    self.tally.failed += 1
                    self.tally.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            finally:
                client.close()

    def tokens_per_s(self, start: float, end: float) -> float:
        with self._lock:
            got = sum(n for t, n in self.tally.tokens_at if start <= t < end)
        return got / (end - start) if end > start else 0.0


class PodTargets:
    """Keeps a Prometheus file_sd file listing the metrics port of every running pod matching `selector`."""

    def __init__(self, kube, namespace: str, selector: str, port: int, path: Path, service: str):
        self.kube, self.ns, self.selector, self.port, self.path, self.service = \
            kube, namespace, selector, port, path, service
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.refresh()

    def refresh(self) -> list[dict]:
        pods = self.kube.json("get", "pods", "-n", self.ns, "-l", self.selector)["items"]
        targets = [{"targets": [f"{p['status']['podIP']}:{self.port}"],
                    "labels": {"namespace": self.ns, "pod": p["metadata"]["name"], "service": self.service}}
                   for p in pods if p.get("status", {}).get("podIP") and p["status"].get("phase") == "Running"]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        tmp.replace(self.path)  # Prometheus never reads a half-written file
        return targets

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a failed listing is retried next second
                pass

    def __enter__(self) -> PodTargets:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
