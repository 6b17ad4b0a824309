"""The fetch against a hub as the real one behaves: files redirected to signed storage URLs that expire, rate
limits answered with 429, and a hub that cannot be reached at all (r1_devtools.devhub's --cdn-ttl and
--rate-limit modes; the fetch runs as a real subprocess, as in the cache Job)."""

from __future__ import annotations

import email.utils
import json
import time

import pytest
from r1_devtools import devhub
from test_fetch import REPO_ID, VARIANT, hub_root, reference, run_fetch, shard_names  # noqa: F401 - fixtures

from r1_operator.api.contract import PROGRESS_FILE, Exit
from r1_operator.dev.processes import free_port
from r1_runtime.cache.download import RANGE_ENV
from r1_runtime.cache.hubhttp import DEFAULT_WAIT_S, MAX_WAIT_S, expires_at, retry_after

SMALL_RANGES = {RANGE_ENV: str(128 << 10)}  # many ranges per file, so a per-range hub request would show


def _ranges(state) -> int:
    return len(state.stats()["requests"])


def test_each_file_is_resolved_once_and_its_ranges_read_from_the_signed_url(hub_root, reference, tmp_path):
    with devhub.running(hub_root, cdn_ttl=3600) as (endpoint, state):
        r = run_fetch(endpoint, tmp_path / "c", "--merge", "--connections", "4", env=SMALL_RANGES)
        assert r.returncode == 0, r.stderr
        st = state.stats()
    files = len(shard_names(hub_root))
    assert st["cdn"] == _ranges(state) > 3 * files  # every range from the storage URL
    assert st["resolves"] == files  # one hub request per file, not one per range
    merged = tmp_path / "c" / f"DeepSeek-R1-{VARIANT}" / f"DeepSeek-R1-{VARIANT}.gguf"
    assert merged.read_bytes() == reference


def test_signed_urls_are_renewed_as_they_age_and_a_refused_one_is_resolved_again(hub_root, reference, tmp_path):
    # about 10 s of download at 500 kB/s against URLs valid for 3 s, and three storage requests refused as expired
    with devhub.running(hub_root, cdn_ttl=3, total_bps=500_000) as (endpoint, state):
        state.revoke = 3
        r = run_fetch(endpoint, tmp_path / "c", "--merge", "--connections", "2", env=SMALL_RANGES)
        assert r.returncode == 0, r.stderr
        st = state.stats()
    files = len(shard_names(hub_root))
    assert st["expired"] == 3
    assert files + 3 <= st["resolves"] < st["cdn"] / 2  # renewed as they aged, still far fewer than the ranges
    assert "retry " not in r.stderr  # an expired URL is no failure
    total = sum((hub_root / REPO_ID / f"DeepSeek-R1-{VARIANT}" / n).stat().st_size for n in shard_names(hub_root))
    assert sum(st["served"].values()) == total  # no byte fetched twice
    merged = tmp_path / "c" / f"DeepSeek-R1-{VARIANT}" / f"DeepSeek-R1-{VARIANT}.gguf"
    assert merged.read_bytes() == reference


def test_the_token_goes_to_the_hub_and_never_to_the_storage_host(hub_root, tmp_path):
    secret = "hf_test_secret_storage_456"
    with devhub.running(hub_root, token=secret, cdn_ttl=3600) as (endpoint, state):
        seen = []
        orig = devhub._Handler._cdn

        def spy(self, *a):
            seen.append(self.headers.get("Authorization"))
            return orig(self, *a)

        devhub._Handler._cdn = spy
        try:
            r = run_fetch(endpoint, tmp_path / "c", env={"HF_TOKEN": secret, **SMALL_RANGES})
        finally:
            devhub._Handler._cdn = orig
        assert r.returncode == 0, r.stderr
    assert seen and not any(seen)


def test_429s_are_waited_out_without_spending_retries_and_progress_says_so(hub_root, reference, tmp_path):
    """Two hub requests a second, and the hub serving the bytes itself (no storage redirect), so each of the
    ranges is a hub request: four connections are refused far more often than a failing range's retries (5)."""
    with devhub.running(hub_root, rate_limit=(2, 1.0)) as (endpoint, state):
        proc = run_fetch(endpoint, tmp_path / "c", "--merge", "--connections", "4", env={RANGE_ENV: str(512 << 10)},
                         wait=False)
        limited_seen = None
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            p = tmp_path / "c" / PROGRESS_FILE
            if limited_seen is None and p.exists():
                try:
                    limited_seen = json.loads(p.read_text()).get("rateLimited")
                except ValueError:
                    pass
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        st = state.stats()
    assert st["limited"] > 10  # more 429s than the retries of the ranges refused
    assert "rate-limited the fetch: waiting" in err and "Retry-After" in err
    assert "retry " not in err  # no failure counted
    merged = tmp_path / "c" / f"DeepSeek-R1-{VARIANT}" / f"DeepSeek-R1-{VARIANT}.gguf"
    assert merged.read_bytes() == reference
    assert limited_seen and limited_seen["by"] == "the hub" and limited_seen["waitSeconds"] >= 0
    from r1_operator.k8s.observe import progress_from_log

    lines = [ln for ln in err.splitlines() if '"rateLimited"' in ln]
    assert lines and progress_from_log(lines[-1])["rateLimited"]["source"].startswith("Retry-After")


def test_a_hub_that_cannot_be_reached_exits_saying_so_in_its_termination_message(tmp_path):
    (tmp_path / "termination-log").write_text("")
    started = time.monotonic()
    r = run_fetch(f"http://127.0.0.1:{free_port()}", tmp_path / "c")
    assert time.monotonic() - started < 60
    assert r.returncode == Exit.RETRY, r.stderr
    msg = json.loads((tmp_path / "termination-log").read_text())
    assert msg["phase"] == "hub-unreachable"
    assert msg["error"].startswith("cannot reach the hub at http://127.0.0.1:") and "HF_ENDPOINT" in msg["error"]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("headers, wait, source", [
    ({"Retry-After": "17"}, 17, "Retry-After: 17"),
    ({"Retry-After": email.utils.formatdate(1_000_030, usegmt=True)}, 30, "Retry-After"),
    ({"RateLimit": '"api";r=0;t=55'}, 55, "RateLimit"),
    ({"RateLimit": "limit=100, remaining=0, reset=12"}, 12, "RateLimit"),
    ({"RateLimit-Reset": "9"}, 9, "RateLimit-Reset"),
    ({"Retry-After": "100000"}, MAX_WAIT_S, "Retry-After"),
    ({}, DEFAULT_WAIT_S, "no Retry-After"),
])
def test_the_wait_a_429_asks_for(headers, wait, source):
    got, said = retry_after(headers, now=1_000_000)
    assert got == pytest.approx(wait) and said.startswith(source)


def test_when_a_signed_url_expires():
    assert expires_at("https://cdn/x?X-Amz-Date=20261207T120000Z&X-Amz-Expires=3600&X-Amz-Signature=s") == \
        pytest.approx(1796644800 + 3600)
    assert expires_at("https://cdn/x?Expires=1796644800&Signature=s") == 1796644800
    assert expires_at("https://cdn/x", now=100) == 700  # says nothing: re-resolved after DEFAULT_LIFETIME_S
