"""The contract's peak holds the whole fetch on a real, size-enforced filesystem, and a full disk loses nothing.

Each volume here is an ext4 image of exactly the bytes `contract.cache_volume_bytes` gives for the set
(the figure `cache.size: auto` rounds up to whole GiB), loop-mounted as the dev provisioner does for real
nodes. The set (about 720 MB, three shards) is larger than the merge's slack, so the volume is too small
for two copies: it holds the fetch only because the merge consumes the shards as it copies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1_devtools import devhub
from r1_devtools.testmodel import ModelShape, write_test_model
from r1_operator.api import contract
from r1_operator.dev import provisioner
from r1_runtime.cache import merge as merging

REPO_ID, VARIANT = "unsloth/DeepSeek-R1-GGUF", "UD-IQ1_S"
R1_RUNTIME = str(Path(sys.executable).with_name("r1-runtime"))
SHAPE = ModelShape(n_embd=2048, n_layer=4, n_dense=1, n_head=16, q_lora_rank=512, kv_lora_rank=256, n_ff=4096,
                   n_ff_exp=1024, n_expert=16, n_expert_used=2)
MERGED = f"DeepSeek-R1-{VARIANT}/DeepSeek-R1-{VARIANT}.gguf"


@pytest.fixture(scope="module")
def big_hub(tmp_path_factory):
    if os.geteuid() != 0:
        raise AssertionError("size-enforced volumes are loop-mounted ext4 images: run the tests as root")
    root = tmp_path_factory.mktemp("big-hub")
    shards = write_test_model(root / REPO_ID / MERGED, SHAPE, n_shards=3, seed=5)
    set_bytes = sum(p.stat().st_size for p in shards)
    peak = contract.cache_peak_bytes(set_bytes, set_bytes, merge=True)
    two_copies = contract.cache_peak_bytes(set_bytes, set_bytes, merge=True, keep_shards=True)
    assert two_copies > contract.cache_volume_bytes(peak)  # two copies cannot fit where the contract's peak does
    ref = tmp_path_factory.mktemp("big-ref") / "whole.gguf"
    sha = merging.merge(shards[0], ref, keep_shards=True)["sha256"]
    ref.unlink()
    with devhub.running(root) as (endpoint, state):
        yield endpoint, state, set_bytes, sha


@pytest.fixture
def volume(tmp_path, big_hub):
    """An ext4 filesystem of exactly the volume the contract asks for this set."""
    set_bytes = big_hub[2]
    size = contract.cache_volume_bytes(contract.cache_peak_bytes(set_bytes, set_bytes, merge=True))
    image, mount = tmp_path / "vol.img", tmp_path / "vol"
    provisioner.make_filesystem(image, mount, size)
    yield mount
    provisioner.remove_filesystem(image, mount)


def _fetch(endpoint: str, dest: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [R1_RUNTIME, "fetch", "--repo", REPO_ID, "--variant", VARIANT, "--dest", str(dest), "--merge",
           "--progress-interval", "1", "--termination-log", str(dest.parent / "termination-log"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", **(env or {})})


def _merged_ok(dest: Path, sha: str) -> None:
    marker = json.loads(merging.marker_path(dest / MERGED).read_text())
    assert marker["sha256"] == sha and (dest / MERGED).stat().st_size == marker["bytes"]
    assert sorted(p.name for p in (dest / MERGED).parent.iterdir()) == [
        Path(MERGED).name, Path(MERGED).name + contract.MERGED_MARKER_SUFFIX]  # shards, journal, partial: gone
    assert json.loads((dest / contract.MANIFEST_FILE).read_text())["model"] == MERGED


def test_a_volume_of_the_contract_size_holds_the_whole_fetch_and_two_copies_do_not_fit(big_hub, volume):
    endpoint, _, set_bytes, sha = big_hub
    keep = _fetch(endpoint, volume, "--keep-shards")
    assert keep.returncode == 3 and "not enough free space" in keep.stderr and "--keep-shards" in keep.stderr
    assert not list(volume.rglob("*.gguf")) and not list(volume.rglob("*.partial"))  # refused before writing
    r = _fetch(endpoint, volume)
    assert r.returncode == 0, r.stderr[-3000:]
    _merged_ok(volume, sha)


def test_a_disk_full_mid_merge_keeps_everything_and_a_rerun_finishes(big_hub, volume):
    """--keep-shards with the free-space check told the disk is huge (R1_FETCH_FREE_BYTES): the download fits,
    the merge's second copy does not, and the real filesystem fills up mid-merge."""
    endpoint, state, set_bytes, sha = big_hub
    served = sum(q["bytes"] for q in state.stats()["requests"])
    full = _fetch(endpoint, volume, "--keep-shards", env={"R1_FETCH_FREE_BYTES": str(1 << 50)})
    assert full.returncode == 3, full.stderr[-3000:]
    assert "disk full while merging" in full.stderr and "spec.cache.size" in full.stderr
    d = (volume / MERGED).parent
    assert not (volume / MERGED).exists() and not merging.marker_path(volume / MERGED).exists()
    assert not (volume / contract.MANIFEST_FILE).exists()
    partial = d / contract.partial_name(Path(MERGED).name)
    assert partial.is_file() and partial.stat().st_size > contract.MERGE_WINDOW_BYTES  # kept, under its partial name
    shards = sorted(d.glob("*-of-*.gguf"))
    assert sum(p.stat().st_size for p in shards) == set_bytes  # every downloaded byte kept
    fetched = sum(q["bytes"] for q in state.stats()["requests"]) - served
    assert fetched == set_bytes

    again = _fetch(endpoint, volume)  # the real free-space check; the merge resumes from its journal
    assert again.returncode == 0, again.stderr[-3000:]
    _merged_ok(volume, sha)
    assert sum(q["bytes"] for q in state.stats()["requests"]) - served == set_bytes  # nothing downloaded again


def test_the_volume_figure_is_the_peak_less_the_filesystem_share():
    peak = 1000 << 20
    size = contract.cache_volume_bytes(peak)
    assert size * (1 - contract.FILESYSTEM_OVERHEAD) >= peak and size % (1 << 20) == 0
    assert contract.cache_volume_gib(peak) == -(-size // (1 << 30))
