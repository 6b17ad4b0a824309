"""`r1-runtime merge`: byte-identical, idempotent, and bad input fails cleanly naming the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from r1_runtime.cache.merge import MergeError, marker_path, merge
from r1_devtools.testmodel import ModelShape, write_test_model

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("shards", [2, 3, 5])
def test_merge_is_byte_identical_to_the_unsplit_model(tmp_path, shards):
    split = write_test_model(tmp_path / "split" / "R1.gguf", n_shards=shards, seed=4)
    (whole,) = write_test_model(tmp_path / "whole" / "R1.gguf", seed=4)
    out = tmp_path / "out" / "R1.gguf"
    info = merge(split[0], out)
    assert out.read_bytes() == whole.read_bytes()
    marker = json.loads(marker_path(out).read_text())
    assert marker["sha256"] == info["sha256"] and marker["bytes"] == out.stat().st_size
    assert [s["file"] for s in marker["shards"]] == [p.name for p in split]
    assert all(p.exists() for p in split)  # kept by default in the API


def test_second_run_sees_the_marker_and_does_nothing(tmp_path):
    split = write_test_model(tmp_path / "s" / "M.gguf", n_shards=2)
    out = tmp_path / "M.gguf"
    merge(split[0], out)
    mtime = out.stat().st_mtime_ns
    assert merge(split[0], out)["skipped"] is True
    assert out.stat().st_mtime_ns == mtime


def test_cli_deletes_shards_only_after_a_verified_merge(tmp_path):
    split = write_test_model(tmp_path / "s" / "M.gguf", n_shards=3, seed=2)
    (whole,) = write_test_model(tmp_path / "w" / "M.gguf", seed=2)
    out = tmp_path / "M.gguf"
    res = subprocess.run([str(BIN / "r1-runtime"), "merge", str(split[0]), str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == whole.read_bytes()
    assert not any(p.exists() for p in split)


def _assert_nothing_left(out: Path):
    assert not out.exists()
    assert not marker_path(out).exists()
    assert not list(out.parent.glob(f".{out.name}*"))


def _copy_set(files, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        (dest / f.name).write_bytes(f.read_bytes())
        out.append(dest / f.name)
    return out


@pytest.fixture
def split3(tmp_path):
    return write_test_model(tmp_path / "orig" / "M.gguf", n_shards=3, seed=9)


def _drop(s, tmp):
    s[1].unlink()


def _truncate(s, tmp):
    data = s[2].read_bytes()
    s[2].write_bytes(data[: len(data) - 1000])


def _bad_magic(s, tmp):
    data = bytearray(s[1].read_bytes())
    data[:4] = b"GGML"
    s[1].write_bytes(bytes(data))


def _other_split_count(s, tmp):
    other = write_test_model(tmp / "two" / "M.gguf", n_shards=2, seed=9)
    s[1].write_bytes(other[1].read_bytes())  # split.no 1 of a 2-shard set


def _other_model(s, tmp):
    other = write_test_model(tmp / "other" / "M.gguf", ModelShape(n_layer=6), n_shards=3, seed=9)
    s[2].write_bytes(other[2].read_bytes())


@pytest.mark.parametrize(
    "damage, message",
    [
        (_drop, r"M-00002-of-00003.gguf: shard 2 of 3 is missing"),
        (_truncate, r"M-00003-of-00003.gguf: truncated"),
        (_bad_magic, r"M-00002-of-00003.gguf: not a GGUF file"),
        (_other_split_count, r"M-00002-of-00003.gguf: split.count is 2"),
        (_other_model, r"M-00003-of-00003.gguf: .*(another model|different models)"),
    ],
)
def test_bad_shards_fail_naming_the_file_and_leave_nothing(tmp_path, split3, damage, message):
    s = _copy_set(split3, tmp_path / "set")
    damage(s, tmp_path)
    out = tmp_path / "out" / "M.gguf"
    with pytest.raises(MergeError, match=message):
        merge(s[0], out)
    _assert_nothing_left(out)


def test_cli_error_is_one_line_and_non_zero(tmp_path, split3):
    s = _copy_set(split3, tmp_path / "set")
    s[1].unlink()
    res = subprocess.run([str(BIN / "r1-runtime"), "merge", str(s[0]), str(tmp_path / "o.gguf")], capture_output=True, text=True)
    assert res.returncode == 2
    assert "shard 2 of 3 is missing" in res.stderr and "Traceback" not in res.stderr
    assert s[0].exists() and s[2].exists()  # nothing deleted on failure


def test_not_shard_one(tmp_path, split3):
    with pytest.raises(MergeError, match="give shard 1"):
        merge(split3[1], tmp_path / "o.gguf")
