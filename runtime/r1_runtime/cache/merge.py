"""Streaming merge of a GGUF split set into one file.

The merged header is shard 1's key-values copied byte for byte (minus the
`split.*` keys), then the tensor table of all shards with offsets into one data
section. Tensor data is copied shard to output inside the kernel
(copy_file_range), so memory stays constant whatever the model size. The result
is written under a temporary name, fsynced, verified (header re-read, sizes,
sha256), renamed atomically, and recorded in a marker file; a second run that
finds the marker and the file does nothing. Any bad input fails before the
output exists, naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf

from r1_operator.api.contract import MERGED_MARKER_SUFFIX, Exit, parse_split, partial_name
from r1_runtime.cache.files import CacheError, fsync_dir, write_json_atomic

SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
COPY_CHUNK = 64 << 20


class MergeError(CacheError):
    """A shard is missing or inconsistent (exit 2), or the volume is full (exit 3)."""

    def __init__(self, message: str, exit_code: int = Exit.BAD_INPUT, phase: str = "merge-failed"):
        super().__init__(message, exit_code, phase)


@dataclass(frozen=True)
class _Tensor:
    name: str
    shard: Path
    src_offset: int  # absolute offset of the data in its shard
    nbytes: int
    raw_info: bytes  # name, n_dims, dims, type, without the offset


def shard_paths(first: Path) -> list[Path]:
    """Every shard of the set that `first` (shard 1) starts."""
    split = parse_split(first.name)
    if split is None:
        raise MergeError(f"{first}: not a split-set name (expected NAME-00001-of-0000N.gguf)")
    if split.no != 1:
        raise MergeError(f"{first}: give shard 1 of the set, not shard {split.no}")
    return [first.with_name(n) for n in split.names()]


def marker_path(output: Path) -> Path:
    return output.with_name(output.name + MERGED_MARKER_SUFFIX)


def _read_shard(path: Path, index: int, count: int) -> tuple[gguf.GGUFReader, dict]:
    if not path.is_file():
        raise MergeError(f"{path}: shard {index + 1} of {count} is missing; fetch it again")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise MergeError(f"{path}: not a GGUF file (magic {magic!r}); the download is corrupt, fetch it again")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # noqa: BLE001 - gguf-py raises plain ValueError/IndexError on damaged headers
        raise MergeError(f"{path}: truncated or corrupt GGUF ({exc}); fetch it again") from None
    meta = {}
    for key in SPLIT_KEYS:
        field = reader.fields.get(key)
        if field is None:
            raise MergeError(f"{path}: no {key} key; this is not part of a split set")
        meta[key] = int(field.contents())
    if meta["split.no"] != index:
        raise MergeError(f"{path}: split.no is {meta['split.no']}, expected {index}; the file is misnamed or from another set")
    if meta["split.count"] != count:
        raise MergeError(f"{path}: split.count is {meta['split.count']} but the set has {count} shards; "
                         "the shards come from different split sets")
    size = path.stat().st_size
    for t in reader.tensors:
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise MergeError(f"{path}: truncated ({size} bytes, tensor {t.name} ends at "
                             f"{int(t.data_offset) + int(t.n_bytes)}); fetch it again")
    return reader, meta


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def plan_merge(first: Path) -> tuple[list[Path], bytes, list[_Tensor], int]:
    """Read and check every shard; return (shards, raw KV bytes, tensors, kv count). Writes nothing."""
    paths = shard_paths(first)
    readers = []
    for i, p in enumerate(paths):
        readers.append(_read_shard(p, i, len(paths)))
    reader0, meta0 = readers[0]
    expected = meta0["split.tensors.count"]
    kv_raw = b""
    n_kv = 0
    with open(paths[0], "rb") as f:
        for key, field in reader0.fields.items():
            if key.startswith("GGUF.") or key in SPLIT_KEYS:
                continue
            f.seek(field.offset)
            kv_raw += f.read(sum(int(p.nbytes) for p in field.parts))
            n_kv += 1
    tensors: list[_Tensor] = []
    seen: set[str] = set()
    for (reader, meta), path in zip(readers, paths):
        if meta["split.tensors.count"] != expected:
            raise MergeError(f"{path}: split.tensors.count {meta['split.tensors.count']} differs from shard 1's {expected}; "
                             "the shards come from different models")
        for t in reader.tensors:
            if t.name in seen:
                raise MergeError(f"{path}: tensor {t.name} appears in two shards; the shards come from different models")
            seen.add(t.name)
            dims = [int(d) for d in t.shape]
            info = _string(t.name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
            info += struct.pack("<I", int(t.tensor_type))
            tensors.append(_Tensor(t.name, path, int(t.data_offset), int(t.n_bytes), info))
    if len(tensors) != expected:
        raise MergeError(f"{paths[0]}: the shards hold {len(tensors)} tensors but split.tensors.count is {expected}; "
                         "a shard is from another model")
    return paths, kv_raw, tensors, n_kv


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def _copy(src_fd: int, dst_fd: int, offset: int, n: int, progress: Callable[[int], None] | None = None) -> None:
    done = 0
    while done < n:
        try:
            k = os.copy_file_range(src_fd, dst_fd, min(COPY_CHUNK, n - done), offset + done)
        except OSError as exc:  # filesystems without copy_file_range: plain reads and writes, same constant memory
            if exc.errno == errno.ENOSPC:
                raise
            k = len(data := os.pread(src_fd, min(8 << 20, n - done), offset + done))
            os.write(dst_fd, data)
        if k == 0:
            raise MergeError(f"unexpected end of data copying {n} bytes at {offset}")
        done += k
        if progress:
            progress(k)


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def merge(first: str | os.PathLike[str], output: str | os.PathLike[str], *, keep_shards: bool = True,
          alignment: int = 32, progress: Callable[[int], None] | None = None) -> dict:
    """Merge the split set starting at `first` into `output`; return the marker's content."""
    first, output = Path(first), Path(output)
    marker = marker_path(output)
    if marker.exists() and output.exists():
        info = json.loads(marker.read_text())
        if info.get("bytes") == output.stat().st_size:
            return {**info, "skipped": True}
    paths, kv_raw, tensors, n_kv = plan_merge(first)
    with open(paths[0], "rb") as f:
        version = struct.unpack("<I", f.read(8)[4:])[0]
    started = time.monotonic()
    tmp = output.with_name(partial_name(output.name))
    output.parent.mkdir(parents=True, exist_ok=True)
    header = b"GGUF" + struct.pack("<IQQ", version, len(tensors), n_kv) + kv_raw
    offset = 0
    for t in tensors:
        header += t.raw_info + struct.pack("<Q", offset)
        offset += _pad(t.nbytes, alignment)
    header += b"\0" * (_pad(len(header), alignment) - len(header))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, header)
            fds = {p: os.open(p, os.O_RDONLY) for p in paths}
            try:
                for src, start, n, pad in _runs(tensors, alignment):
                    _copy(fds[src], fd, start, n, progress)
                    if pad:
                        os.write(fd, b"\0" * pad)
            finally:
                for f in fds.values():
                    os.close(f)
            os.fsync(fd)
        finally:
            os.close(fd)
        expected_size = len(header) + offset
        if tmp.stat().st_size != expected_size:
            raise MergeError(f"{tmp}: wrote {tmp.stat().st_size} bytes, expected {expected_size}; check free disk space",
                             Exit.NO_SPACE, "no-space")
        copied = time.monotonic() - started
        _verify(tmp, tensors)
        digest = sha256_file(tmp)
        os.replace(tmp, output)
        fsync_dir(output.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise MergeError(f"{output.parent}: disk full while merging into {output.name}; the partial merge was "
                             "deleted and the shards are kept. Grow the cache volume (spec.cache.size), then run "
                             "again", Exit.NO_SPACE, "no-space") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    info = {
        "file": output.name,
        "bytes": output.stat().st_size,
        "sha256": digest,
        "tensors": len(tensors),
        "shards": [{"file": p.name, "bytes": p.stat().st_size} for p in paths],
        "copy_seconds": round(copied, 3),
    }
    write_json_atomic(marker, info)
    if not keep_shards:
        for p in paths:
            p.unlink(missing_ok=True)
    return info


def _runs(tensors: list[_Tensor], alignment: int) -> list[tuple[Path, int, int, int]]:
    """(shard, offset, bytes, zero padding after) copies that lay the tensors out as the merged file wants.

    Consecutive tensors of one shard that sit in the shard exactly as they must sit in
    the output (each at the previous one's padded end) become one copy, so a shard
    written with the same alignment is copied in a few large copy_file_range calls.
    """
    runs: list[list] = []
    for t in tensors:
        last = runs[-1] if runs else None
        if last and last[0] == t.shard and last[1] + _pad(last[2], alignment) == t.src_offset:
            last[2] = _pad(last[2], alignment) + t.nbytes
        else:
            runs.append([t.shard, t.src_offset, t.nbytes])
    return [(src, start, n, _pad(n, alignment) - n) for src, start, n in runs]


def _verify(path: Path, tensors: list[_Tensor]) -> None:
    reader = gguf.GGUFReader(path)
    if [t.name for t in reader.tensors] != [t.name for t in tensors]:
        raise MergeError(f"{path}: merged tensor table does not match the shards")
    if any(k in reader.fields for k in SPLIT_KEYS):
        raise MergeError(f"{path}: merged header still has split keys")
    for a, b in zip(reader.tensors, tensors):
        if int(a.n_bytes) != b.nbytes:
            raise MergeError(f"{path}: tensor {a.name} has {int(a.n_bytes)} bytes, expected {b.nbytes}")
