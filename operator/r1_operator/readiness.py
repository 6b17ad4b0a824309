"""The operator's readiness: started (its startup handler ran) and reaching the API server, checked every few seconds.

`GET /readyz` on the readiness endpoint answers 200 with `{"ready": true, ...}` while the last API check succeeded
within STALE_S, and 503 with the reason otherwise: not started yet, or the last error reaching the API (the list of
R1Deployments the operator needs, so RBAC counts as much as the network). Liveness (kopf's /healthz) only says the
process answers.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

CHECK_INTERVAL_S = 5.0
STALE_S = 30.0


@dataclass
class Readiness:
    started: bool = False
    last_ok: float = 0.0  # monotonic time of the last successful API check
    last_error: str = "the operator has not started yet"
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ok(self) -> None:
        with self.lock:
            self.started, self.last_ok, self.last_error = True, time.monotonic(), ""

    def failed(self, error: str) -> None:
        with self.lock:
            self.last_error = error

    def report(self) -> tuple[bool, dict]:
        with self.lock:
            age = time.monotonic() - self.last_ok if self.last_ok else None
            ready = self.started and age is not None and age < STALE_S
            reason = "" if ready else (self.last_error or f"no successful API check for {age:.0f}s")
            return ready, {"ready": ready, "started": self.started,
                           "lastApiCheckSecondsAgo": round(age, 1) if age is not None else None,
                           **({"reason": reason} if reason else {})}


async def watch_api(check: Callable[[], None], state: Readiness, interval: float = CHECK_INTERVAL_S) -> None:
    """Run `check` (a blocking API call) every interval, recording the outcome; never raises."""
    while True:
        try:
            await asyncio.to_thread(check)
            state.ok()
        except Exception as exc:  # noqa: BLE001 - any failure to reach the API makes the operator not ready
            state.failed(f"cannot reach the API server: {type(exc).__name__}: {str(exc)[:200]}")
        await asyncio.sleep(interval)


def serve(endpoint: str, state: Readiness) -> ThreadingHTTPServer:
    """Serve GET <path> of endpoint (e.g. http://0.0.0.0:8081/readyz) from a daemon thread."""
    url = urlparse(endpoint)
    path = url.path or "/readyz"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?")[0] != path:
                self.send_error(404)
                return
            ready, body = state.report()
            data = json.dumps(body).encode()
            self.send_response(200 if ready else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # probes every few seconds: no access log
            pass

    server = ThreadingHTTPServer((url.hostname or "0.0.0.0", url.port or 8081), Handler)
    threading.Thread(target=server.serve_forever, name="readiness", daemon=True).start()
    return server
