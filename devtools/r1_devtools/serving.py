"""Run `r1-runtime serve` as a real process on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from r1_devtools.waiting import wait_for
from r1_operator.dev.processes import free_port

R1_RUNTIME = str(Path(sys.executable).with_name("r1-runtime"))


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def metrics(self) -> dict[str, float]:
        """Parse /metrics into {'name{labels}': value}."""
        out = {}
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def openai(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.v1, api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


SERVED = "r1-test"  # the model name test servers serve (--alias), unless a test gives its own


@contextmanager
def running_server(model: Path, *args: str, env: dict | None = None, ready: bool = True, threads: int = 2):
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="r1-serve-", suffix=".log")[1])
    cmd = [R1_RUNTIME, "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(threads), *([] if "--alias" in args else ["--alias", SERVED]), *args]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        path = "/ready" if ready else "/health"

        def up():
            if proc.poll() is not None:
                raise AssertionError(f"r1-runtime serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                return httpx.get(server.url + path, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 120, f"{path} of {' '.join(cmd)}")
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
