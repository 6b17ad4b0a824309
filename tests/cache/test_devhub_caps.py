"""The dev hub's throughput caps, which stand in for a CDN's per-connection limit: a cap is never beaten.

Only lower bounds on time are asserted (a loaded machine can only be slower); the figures that
matter are measured by benchmarks.
"""

from __future__ import annotations

import argparse
import threading
import time

import httpx
import pytest

from r1_devtools import devhub, hubcli
from r1_devtools.testmodel import write_test_model


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("caps-hub")
    files = write_test_model(root / "org" / "m" / "M.gguf", n_shards=2, seed=3)
    return root, files


def _get(url: str) -> int:
    with httpx.stream("GET", url, timeout=60) as r:
        return sum(len(c) for c in r.iter_bytes())


def test_one_connection_is_held_to_the_connection_cap(hub_files):
    root, files = hub_files
    with devhub.running(root, throttle_bps=2_000_000) as (endpoint, _):
        t = time.monotonic()
        n = _get(f"{endpoint}/org/m/resolve/main/{files[0].name}")
        assert n == files[0].stat().st_size
        assert time.monotonic() - t >= 0.9 * n / 2_000_000


def test_connections_together_are_held_to_the_total_cap(hub_files):
    root, files = hub_files
    with devhub.running(root, total_bps=3_000_000) as (endpoint, _):
        base = f"{endpoint}/org/m/resolve/main"
        got: list[int] = []
        threads = [threading.Thread(target=lambda f=f: got.append(_get(f"{base}/{f.name}"))) for f in files]
        t = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        total = sum(f.stat().st_size for f in files)
        assert sorted(got) == sorted(f.stat().st_size for f in files)
        assert time.monotonic() - t >= 0.9 * total / 3_000_000  # both at once, yet no faster than the total cap


def test_rates_take_k_m_g_suffixes():
    assert hubcli.rate("25M") == 25_000_000 and hubcli.rate("1.5Gi") == 3 << 29 and hubcli.rate("800") == 800
    with pytest.raises(argparse.ArgumentTypeError, match="not a rate"):
        hubcli.rate("fast")
