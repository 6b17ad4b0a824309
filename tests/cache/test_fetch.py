"""r1-runtime fetch against a local Hugging Face-compatible hub (r1_devtools.devhub).

The hub serves a generated miniature split set; the fetch runs as a real
subprocess (as in the cache Job) using huggingface_hub for listing, auth and
HTTP. The hub counts every byte it serves, which is how resume is shown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from r1_devtools.waiting import wait_for

from r1_devtools import devhub
from r1_operator.api.contract import PROGRESS_FILE, cache_peak_bytes
from r1_runtime.cache.download import RANGE_ENV, partial_path, written_bytes, written_spans
from r1_devtools.testmodel import write_test_model

REPO_ID = "unsloth/DeepSeek-R1-GGUF"
VARIANT = "UD-IQ1_S"
R1_RUNTIME = str(Path(sys.executable).with_name("r1-runtime"))


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    d = root / REPO_ID / f"DeepSeek-R1-{VARIANT}"
    write_test_model(d / f"DeepSeek-R1-{VARIANT}.gguf", n_shards=3, seed=7)
    # another variant in the same repo, which must not be fetched
    write_test_model(root / REPO_ID / "DeepSeek-R1-UD-IQ1_M" / "DeepSeek-R1-UD-IQ1_M.gguf", n_shards=2, seed=8)
    (root / REPO_ID / "README.md").write_text("test repo\n")
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> bytes:
    (whole,) = write_test_model(tmp_path_factory.mktemp("ref") / "whole.gguf", seed=7)
    return whole.read_bytes()


@pytest.fixture
def hub(hub_root):
    with devhub.running(hub_root) as endpoint_and_state:
        yield endpoint_and_state


def run_fetch(endpoint: str, dest: Path, *extra: str, env: dict | None = None, wait: bool = True):
    cmd = [R1_RUNTIME, "fetch", "--repo", REPO_ID, "--variant", VARIANT, "--dest", str(dest),
           "--progress-interval", "0.2", "--termination-log", str(dest.parent / "termination-log"), *extra]
    full_env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"}
    full_env.pop("HF_TOKEN", None)
    full_env.update(env or {})
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=120)


def shard_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / REPO_ID / f"DeepSeek-R1-{VARIANT}").iterdir())


def test_fetch_merge_is_byte_identical_and_a_rerun_serves_nothing(hub, hub_root, reference, tmp_path):
    endpoint, state = hub
    dest = tmp_path / "cache"
    (tmp_path / "termination-log").write_text("")
    r = run_fetch(endpoint, dest, "--merge")
    assert r.returncode == 0, r.stderr
    merged = dest / f"DeepSeek-R1-{VARIANT}" / f"DeepSeek-R1-{VARIANT}.gguf"
    assert merged.read_bytes() == reference
    # shards are deleted once the merge is verified; the other variant never came
    assert sorted(p.name for p in merged.parent.iterdir()) == [merged.name, merged.name + ".merged.json"]
    assert all("UD-IQ1_M" not in f and "README" not in f for f in state.stats()["served"])
    sizes = {n: (hub_root / REPO_ID / f"DeepSeek-R1-{VARIANT}" / n).stat().st_size for n in shard_names(hub_root)}
    assert sum(state.stats()["served"].values()) == sum(sizes.values())
    progress = json.loads((dest / PROGRESS_FILE).read_text())
    assert progress["phase"] == "done" and progress["percent"] == 100.0
    assert json.loads((tmp_path / "termination-log").read_text())["phase"] == "done"
    assert "downloading" in r.stderr  # the periodic progress lines
    # ... end in JSON the operator reads from the pod's log (the CACHE column); the last one is the finished merge
    from r1_operator.k8s.observe import progress_from_log

    last = progress_from_log(r.stderr)
    assert last["phase"] == "done" and last["bytesDone"] == last["bytesTotal"] > 0 and last["percent"] == 100.0

    served_before = sum(state.stats()["served"].values())
    again = run_fetch(endpoint, dest, "--merge")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["skipped"] is True
    assert sum(state.stats()["served"].values()) == served_before


def test_real_huggingface_hub_client_downloads_from_the_test_hub(hub, tmp_path, hub_root):
    """The hub speaks the protocol huggingface_hub's own snapshot_download uses (HEAD, X-Linked-*, LFS hashes)."""
    endpoint, _ = hub
    code = ("import sys, huggingface_hub as h; print(h.snapshot_download(sys.argv[1], allow_patterns=['*UD-IQ1_S*'],"
            " local_dir=sys.argv[2], endpoint=sys.argv[3]))")
    r = subprocess.run([sys.executable, "-c", code, REPO_ID, str(tmp_path / "snap"), endpoint],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_DISABLE_XET": "1"})
    assert r.returncode == 0, r.stderr
    got = sorted(p.name for p in (tmp_path / "snap" / f"DeepSeek-R1-{VARIANT}").glob("*.gguf"))
    assert got == shard_names(hub_root)


def test_killed_fetch_resumes_without_serving_bytes_again(hub, hub_root, tmp_path):
    """Three connections fetch 256 KiB ranges of the three shards at once; a SIGKILL lands mid-way. The rerun
    asks for no byte the volume already holds (range granularity): the only bytes the hub serves twice are those
    in flight at the kill."""
    endpoint, state = hub
    state.throttle_bps = 1_000_000  # per connection: ~1.5 s per shard, so the kill lands mid-file
    dest = tmp_path / "cache"
    names = shard_names(hub_root)
    sizes = {n: (hub_root / REPO_ID / f"DeepSeek-R1-{VARIANT}" / n).stat().st_size for n in names}
    key = {n: f"{REPO_ID}/DeepSeek-R1-{VARIANT}/{n}" for n in names}
    finals = {n: dest / f"DeepSeek-R1-{VARIANT}" / n for n in names}
    env = {RANGE_ENV: str(256 << 10)}

    proc = run_fetch(endpoint, dest, "--keep-shards", "--connections", "3", env=env, wait=False)
    wait_for(lambda: written_bytes(finals[names[1]], sizes[names[1]]) > 300_000, 30, "shard 2 partly written")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    had = {n: [(0, sizes[n])] if finals[n].is_file() else written_spans(finals[n], sizes[n]) for n in names}
    assert 0 < sum(b - a for a, b in had[names[1]]) < sizes[names[1]]
    assert not finals[names[1]].exists()  # nothing that looks complete
    killed_at = len(state.stats()["requests"])  # the killed process makes no request after this one

    state.throttle_bps = 0
    r = run_fetch(endpoint, dest, "--keep-shards", "--connections", "3", env=env)
    assert r.returncode == 0, r.stderr
    stats = state.stats()
    for q in stats["requests"][killed_at:]:  # no request of the rerun overlaps what was written before the kill
        n = q["file"].rsplit("/", 1)[1]
        assert all(q["end"] < a or q["start"] >= b for a, b in had[n]), (q, had[n])
    for n in names:
        assert finals[n].read_bytes() == (hub_root / REPO_ID / f"DeepSeek-R1-{VARIANT}" / n).read_bytes()
        rerun = sum(q["bytes"] for q in stats["requests"][killed_at:] if q["file"] == key[n])
        assert rerun == sizes[n] - sum(b - a for a, b in had[n])  # exactly what was missing
        in_flight = stats["served"][key[n]] - sizes[n]
        assert 0 <= in_flight <= 3 * (2 << 20)  # socket buffers and one read chunk per connection, lost at the kill
    assert not list(dest.rglob("*.partial*"))  # partials and journals gone once verified


@pytest.mark.parametrize("corrupt_times, expect_rc", [(1, 0), (2, 4)])
def test_sha256_catches_a_corrupt_byte(hub, hub_root, tmp_path, corrupt_times, expect_rc):
    endpoint, state = hub
    names = shard_names(hub_root)
    httpx.post(f"{endpoint}/_faults", json={"corrupt": {f"{REPO_ID}/DeepSeek-R1-{VARIANT}/{names[2]}": corrupt_times}})
    dest = tmp_path / "cache"
    r = run_fetch(endpoint, dest, "--keep-shards")
    assert r.returncode == expect_rc, r.stderr
    assert f"{names[2]}: sha256" in r.stderr or f"{names[2]}: sha256" in r.stdout
    final = dest / f"DeepSeek-R1-{VARIANT}" / names[2]
    if expect_rc == 0:
        assert "does not match the hub's" in r.stderr  # caught once, fetched again
        assert final.read_bytes() == (hub_root / REPO_ID / f"DeepSeek-R1-{VARIANT}" / names[2]).read_bytes()
    else:
        assert "mismatch twice" in r.stderr
        assert not final.exists() and not partial_path(final).exists()
        assert json.loads((dest / PROGRESS_FILE).read_text())["phase"] == "verify-failed"
    assert sum(q["corrupted"] for q in state.stats()["requests"]) == corrupt_times


def _peak(hub_root: Path, merge: bool) -> int:
    sizes = [p.stat().st_size for p in (hub_root / REPO_ID / f"DeepSeek-R1-{VARIANT}").glob("*.gguf")]
    return cache_peak_bytes(sum(sizes), sum(sizes), merge=merge)


def test_not_enough_space_fails_before_writing(hub, hub_root, tmp_path):
    """The free-space figure is injected (R1_FETCH_FREE_BYTES): no small filesystem can be mounted without root."""
    endpoint, state = hub
    dest = tmp_path / "cache"
    peak = _peak(hub_root, merge=True)
    r = run_fetch(endpoint, dest, "--merge", env={"R1_FETCH_FREE_BYTES": str(peak - 1)})
    assert r.returncode == 3, r.stderr
    assert "not enough free space" in r.stderr and "spec.cache.size" in r.stderr
    # need = 3 shards + one merge window, here the whole set (~9.4 MiB); nothing was downloaded or written
    assert "need 9.4 MiB more" in r.stderr and "plus one merge window" in r.stderr
    assert state.stats()["served"] == {}
    assert not list(dest.rglob("*.gguf")) and not list(dest.rglob("*.partial"))
    # without --merge the shards alone fit in the same space
    ok = run_fetch(endpoint, dest, env={"R1_FETCH_FREE_BYTES": str(peak - 1)})
    assert ok.returncode == 0, ok.stderr


def test_a_volume_of_exactly_the_contract_peak_holds_fetch_and_merge(hub, hub_root, tmp_path):
    """The operator sizes `cache.size: auto` from contract.cache_peak_bytes; exactly that much free space is enough."""
    endpoint, _ = hub
    dest = tmp_path / "cache"
    r = run_fetch(endpoint, dest, "--merge", env={"R1_FETCH_FREE_BYTES": str(_peak(hub_root, merge=True))})
    assert r.returncode == 0, r.stderr
    assert (dest / f"DeepSeek-R1-{VARIANT}" / f"DeepSeek-R1-{VARIANT}.gguf").is_file()


def test_token_is_sent_and_never_printed(hub_root, tmp_path):
    secret = "hf_test_secret_value_123"
    with devhub.running(hub_root, token=secret) as (endpoint, _):
        denied = run_fetch(endpoint, tmp_path / "a")
        assert denied.returncode == 2
        assert "token" in denied.stderr
        ok = run_fetch(endpoint, tmp_path / "b", env={"HF_TOKEN": secret})
        assert ok.returncode == 0, ok.stderr
        for text in (ok.stdout, ok.stderr, denied.stderr, (tmp_path / "b" / PROGRESS_FILE).read_text()):
            assert secret not in text


@pytest.mark.parametrize("args, message", [
    (["--variant", "UD-Q9_Z"], "matches '*UD-Q9_Z*'"),
    (["--revision", "no-such-branch"], "revision 'no-such-branch' not found"),
    (["--repo", "unsloth/missing"], "repository unsloth/missing not found"),
])
def test_bad_input_exits_2_naming_the_field(hub, tmp_path, args, message):
    endpoint, _ = hub
    r = run_fetch(endpoint, tmp_path / "cache", *args)
    assert r.returncode == 2
    assert message in r.stderr


def test_concurrent_fetch_on_the_same_volume_is_refused(hub, tmp_path):
    endpoint, state = hub
    state.throttle_bps = 2_000_000
    dest = tmp_path / "cache"
    first = run_fetch(endpoint, dest, wait=False)
    wait_for(lambda: (dest / PROGRESS_FILE).is_file(), 30, "first fetch started")
    second = run_fetch(endpoint, dest)
    assert second.returncode == 1 and "another fetch holds" in second.stderr
    assert first.wait(timeout=60) == 0
