"""The one-pass merge consumes its shards a window at a time and survives a SIGKILL at any point.

Each kill is a real SIGKILL of the merging process, sent by the process itself at a chosen point (a
wrapper around the call named). `r1-runtime merge` then finishes the job from the journal, and the
result is byte-identical to the unsplit model, with no shard, journal or partial file left.
"""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from r1_devtools.testmodel import write_test_model
from r1_operator.api import contract
from r1_runtime.cache import merge as merging

BIN = Path(sys.executable).parent
WINDOW = 256 << 10  # small, so a ~5 MB set takes many commits

CHILD = """
import errno, os, signal, sys
from pathlib import Path
from r1_runtime.cache import merge as m

first, out, point, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seen = [0]

def kill_at(owner, name, when=lambda *a, **k: True):
    real = getattr(owner, name)
    def wrapper(*a, **k):
        if when(*a, **k):
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    setattr(owner, name, wrapper)

if point == "write":      # mid-window: some merged bytes copied in the kernel, not yet committed
    kill_at(m.os, "copy_file_range")
elif point == "buffered": # the same where the filesystem cannot copy in the kernel (pread, hash, pwrite)
    def no_kernel_copy(*a, **k):
        raise OSError(errno.EXDEV, "cross-device")
    m.os.copy_file_range = no_kernel_copy
    kill_at(m.os, "pwrite")
elif point == "punch":    # a window committed in the journal, its shard bytes not yet freed
    kill_at(m, "punch_hole")
elif point == "commit":   # inside the journal's own atomic write
    kill_at(m, "write_json_atomic", lambda path, data, **k: path.name.endswith(".journal"))
elif point == "rename":   # the whole file copied and hashed, not yet renamed
    kill_at(m.os, "replace", lambda src, dst: str(dst) == out)
elif point == "marker":   # renamed, the marker not yet written
    kill_at(m, "write_json_atomic", lambda path, data, **k: path == m.marker_path(Path(out)))
elif point == "cleanup":  # marker written, shards being deleted
    kill_at(m.Path, "unlink")
m.merge(first, out, keep_shards=False, window=int(sys.argv[5]))
sys.exit(7)  # the kill did not happen
"""


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    (w,) = write_test_model(tmp_path_factory.mktemp("whole") / "M.gguf", seed=9)
    return w


def _split(d: Path) -> list[Path]:
    return write_test_model(d / "M.gguf", n_shards=3, seed=9)


@pytest.mark.parametrize("point,nth", [("write", 1), ("write", 9), ("write", 15), ("buffered", 1),
                                       ("buffered", 9), ("punch", 1), ("punch", 6),
                                       ("commit", 3), ("rename", 1), ("marker", 1), ("cleanup", 2)])
def test_a_merge_killed_at_any_point_finishes_byte_identical_on_a_rerun(tmp_path, whole, point, nth):
    shards = _split(tmp_path)
    out = tmp_path / "M.gguf"
    child = subprocess.run([sys.executable, "-c", CHILD, str(shards[0]), str(out), point, str(nth), str(WINDOW)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, (child.returncode, child.stderr[-2000:])
    assert not merging.marker_path(out).exists() or point == "cleanup"
    res = subprocess.run([str(BIN / "r1-runtime"), "merge", str(shards[0]), str(out)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == whole.read_bytes()
    marker = json.loads(merging.marker_path(out).read_text())
    assert marker["sha256"] == hashlib.sha256(whole.read_bytes()).hexdigest()
    assert not any(p.exists() for p in shards)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["M.gguf", "M.gguf.merged.json"]  # no journal, no partial


def test_the_merge_frees_shard_bytes_as_it_goes_and_never_holds_more_than_its_slack_windows_extra(tmp_path, whole,
                                                                                                  monkeypatch):
    shards = _split(tmp_path)
    set_bytes = sum(p.stat().st_size for p in shards)
    out = tmp_path / "M.gguf"
    tmp = out.with_name(f".{out.name}.partial")
    samples: list[tuple[int, int, int]] = []
    real_free = merging._free

    def allocated(paths) -> int:  # bytes the filesystem holds for these files
        return sum(p.stat().st_blocks * 512 for p in paths if p.exists())

    def sampling_free(*args, **kwargs):  # runs while the next window is copied
        # a window recorded and not yet freed, the next one being recorded, the one after being copied: the peak
        before, shards_before = allocated((tmp, *shards)), allocated(shards)
        real_free(*args, **kwargs)
        samples.append((before, shards_before, allocated(shards)))

    monkeypatch.setattr(merging, "_free", sampling_free)
    info = merging.merge(shards[0], out, keep_shards=False, window=WINDOW)
    assert out.read_bytes() == whole.read_bytes() and info["sha256"] == hashlib.sha256(whole.read_bytes()).hexdigest()
    assert len(samples) > 10
    peak = max(b for b, _, _ in samples)
    assert peak <= set_bytes + contract.MERGE_SLACK_WINDOWS * WINDOW + (64 << 10), (peak, set_bytes)
    assert all(after < before for _, before, after in samples)  # each commit freed the shard bytes it copied


def test_keep_shards_keeps_two_copies(tmp_path, whole):
    shards = _split(tmp_path)
    before = {p: p.read_bytes() for p in shards}
    res = subprocess.run([str(BIN / "r1-runtime"), "merge", "--keep-shards", str(shards[0]), str(tmp_path / "M.gguf")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "two copies" in res.stderr
    assert all(p.read_bytes() == b for p, b in before.items())  # nothing punched
    assert (tmp_path / "M.gguf").read_bytes() == whole.read_bytes()


def test_where_the_kernel_cannot_copy_the_merge_goes_through_buffers_with_the_same_bytes_and_hash(
        tmp_path, whole, monkeypatch):
    shards = _split(tmp_path)
    calls = []

    def cross_device(*args, **kwargs):
        calls.append(args)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(merging.os, "copy_file_range", cross_device)
    info = merging.merge(shards[0], tmp_path / "M.gguf", keep_shards=False, window=WINDOW)
    assert len(calls) == 1  # tried once, then buffered for the rest of the merge
    assert (tmp_path / "M.gguf").read_bytes() == whole.read_bytes()
    assert info["sha256"] == hashlib.sha256(whole.read_bytes()).hexdigest()
