"""A real Prometheus (the Debian package, installed by make setup) for tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import httpx
from r1_devtools.waiting import wait_for


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10).json()
        assert r["status"] == "success", r
        return r["data"]["result"]

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None


@contextmanager
def running_prometheus(targets: list[str], port: int, job: str = "r1-runtime", rule_files: list[Path] | None = None,
                       interval: str = "1s", scrape_configs: list[dict] | None = None):
    """Prometheus scraping `targets` as `job`, or the given scrape_configs (each job must come up)."""
    import yaml

    binary = shutil.which("prometheus")
    if binary is None:
        raise AssertionError("prometheus is not installed; run 'make setup' (it installs the Debian package)")
    d = Path(tempfile.mkdtemp(prefix="r1-prom-"))
    rules = "".join(f"\n  - {p}" for p in rule_files or [])
    (d / "prometheus.yml").write_text(
        f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
        + (f"rule_files:{rules}\n" if rules else "")
        + yaml.safe_dump({"scrape_configs": scrape_configs or [{"job_name": job,
                                                                 "static_configs": [{"targets": targets}]}]}))
    log = open(d / "log", "w")
    proc = subprocess.Popen([binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        def up():
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {(d / 'log').read_text()}")
            try:
                return httpx.get(prom.url + "/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "prometheus ready")
        for j in [c["job_name"] for c in scrape_configs or [{"job_name": job}]]:
            wait_for(lambda: prom.value(f'up{{job="{j}"}} == 1'), 30, f"first scrape of job {j}")
        yield prom
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(d, ignore_errors=True)
