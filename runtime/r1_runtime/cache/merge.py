"""One-pass, resumable merge of a GGUF split set into one file, consuming the shards as it goes.

The merged header is shard 1's key-values copied byte for byte (minus the `split.*` keys), then the
tensor table of all shards with offsets into one data section. The data is copied in the
kernel (copy_file_range, as `cat` does) and hashed on the way from the page cache (sha256 in a second
thread), so the merged file's hash costs no extra read from disk and memory stays constant whatever the
model size.

The copy advances a window (`contract.MERGE_WINDOW_BYTES`) at a time: copy, fdatasync, record the
merged bytes done in a journal, then punch holes over the window's source bytes in the shards
(unless keep_shards), the record and the freeing each in a thread of its own while the next window is
copied. The merged copy plus what is left of the shards therefore never holds more than the set plus
`contract.MERGE_SLACK_WINDOWS` windows, the figure `contract.cache_peak_bytes` gives the operator and the
fetch. A process killed at any point resumes
from the journal: it re-hashes the merged bytes already done (the only extra read, and only after a
kill), and produces the same bytes. On a filesystem that cannot punch holes each shard is deleted
once it is wholly copied instead (a peak of the set plus its largest shard).

The result grows under a temporary name, is verified (header re-read, size), renamed atomically and
recorded in a marker file; a second run that finds the marker and the file does nothing. Bad input
fails before anything is written, naming the file.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import mmap
import os
import struct
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from r1_operator.api.contract import MERGE_WINDOW_BYTES, MERGED_MARKER_SUFFIX, Exit, parse_split, partial_name
from r1_operator.api.gguf_header import GGUFError, GGUFHeader, read_local
from r1_runtime.cache.files import CacheError, fsync_dir, write_json_atomic

SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
CHUNK = 8 << 20  # one kernel copy, then one hash over the same bytes in the page cache
IN_FLIGHT = 4  # chunks copied but not yet hashed: bounds what the hash lags and the process maps (32 MiB)
PUNCH_ALIGN = 1 << 16  # a multiple of any filesystem block: punching restarts from the last one's edge block


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


def _read_shard(path: Path, index: int, count: int) -> tuple[GGUFHeader, dict]:
    if not path.is_file():
        raise MergeError(f"{path}: shard {index + 1} of {count} is missing; fetch it again")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise MergeError(f"{path}: not a GGUF file (magic {magic!r}); the download is corrupt, fetch it again")
    try:
        header = read_local(str(path))
    except GGUFError as exc:
        raise MergeError(f"{path}: truncated or corrupt GGUF ({str(exc).removeprefix(f'{path}: ')}); "
                         "fetch it again") from None
    meta = {}
    for key in SPLIT_KEYS:
        value = header.kv.get(key)
        if value is None:
            raise MergeError(f"{path}: no {key} key; this is not part of a split set")
        meta[key] = int(value)  # type: ignore[call-overload]
    if meta["split.no"] != index:
        raise MergeError(f"{path}: split.no is {meta['split.no']}, expected {index}; the file is misnamed or from another set")
    if meta["split.count"] != count:
        raise MergeError(f"{path}: split.count is {meta['split.count']} but the set has {count} shards; "
                         "the shards come from different split sets")
    size = path.stat().st_size
    for t in header.tensors:
        if header.data_offset + t.offset + t.nbytes > size:
            raise MergeError(f"{path}: truncated ({size} bytes, tensor {t.name} ends at "
                             f"{header.data_offset + t.offset + t.nbytes}); fetch it again")
    return header, meta


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def plan_merge(first: Path) -> tuple[list[Path], bytes, list[_Tensor], int]:
    """Read and check every shard; return (shards, raw KV bytes, tensors, kv count). Writes nothing."""
    paths = shard_paths(first)
    headers = [_read_shard(p, i, len(paths)) for i, p in enumerate(paths)]
    header0, meta0 = headers[0]
    expected = meta0["split.tensors.count"]
    kept = [(a, b) for key, (a, b) in header0.kv_spans.items() if key not in SPLIT_KEYS]
    with open(paths[0], "rb") as f:
        raw = f.read(max((b for _, b in kept), default=0))
    kv_raw = b"".join(raw[a:b] for a, b in kept)  # byte for byte, in the file's order
    tensors: list[_Tensor] = []
    seen: set[str] = set()
    for (header, meta), path in zip(headers, paths):
        if meta["split.tensors.count"] != expected:
            raise MergeError(f"{path}: split.tensors.count {meta['split.tensors.count']} differs from shard 1's {expected}; "
                             "the shards come from different models")
        for t in header.tensors:
            if t.name in seen:
                raise MergeError(f"{path}: tensor {t.name} appears in two shards; the shards come from different models")
            seen.add(t.name)
            info = _string(t.name) + struct.pack("<I", len(t.dims)) + b"".join(struct.pack("<Q", d) for d in t.dims)
            info += struct.pack("<I", t.type)
            tensors.append(_Tensor(t.name, path, header.data_offset + t.offset, t.nbytes, info))
    if len(tensors) != expected:
        raise MergeError(f"{paths[0]}: the shards hold {len(tensors)} tensors but split.tensors.count is {expected}; "
                         "a shard is from another model")
    return paths, kv_raw, tensors, len(kept)


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def journal_path(output: Path) -> Path:
    return output.with_name(partial_name(output.name) + ".journal")


def resumable_bytes(output: Path) -> int:
    """Bytes an interrupted merge of output holds on the volume that count toward its peak (0 when none is under
    way): its committed bytes are freed from the shards when it resumes, and what it wrote past the last commit is
    truncated, so all the partial file's allocated bytes come back."""
    try:
        journal = json.loads(journal_path(output).read_text())
        st = output.with_name(partial_name(output.name)).stat()
        return min(st.st_blocks * 512, int(journal["bytes"]))
    except (OSError, ValueError, KeyError):
        return 0


# ---------------------------------------------------------------- freeing shard bytes

_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free a byte range of a file, keeping its size (reads give zeros); False where the filesystem cannot."""
    if length <= 0:
        return True
    if _libc.fallocate(fd, _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


# ---------------------------------------------------------------- the copy

class _HashingWriter:
    """Writes the merged file at increasing offsets and hashes every byte in order.

    A copy runs in the kernel (copy_file_range, CHUNK bytes a call: no pass through this process's memory,
    like `cat`), and a second thread hashes each chunk from the merged file's page cache through a short-lived
    read-only mapping (hashlib releases the GIL), at most IN_FLIGHT chunks behind. Where the filesystem cannot
    copy in the kernel, chunks go through a buffer instead (pread, hash, pwrite)."""

    def __init__(self, fd: int, pos: int, digest):
        self.fd, self.pos, self.digest = fd, pos, digest
        self.pending: deque[Future] = deque()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="sha256")
        self.in_kernel = True
        self.bufs: list[bytearray] = []  # only where the kernel cannot copy
        self.turn = 0

    def _queue(self, task, *args) -> None:
        while len(self.pending) >= IN_FLIGHT:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(task, *args))

    def _hash_written(self, pos: int, n: int) -> None:
        base = pos - pos % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(self.fd, pos + n - base, prot=mmap.PROT_READ, offset=base) as mm:
            view = memoryview(mm)
            try:
                self.digest.update(view[pos - base:])
            finally:
                view.release()

    def _copy_in_kernel(self, src_fd: int, offset: int, k: int) -> int:
        try:
            return os.copy_file_range(src_fd, self.fd, k, offset, self.pos)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self.in_kernel = False
            self.bufs = [bytearray(CHUNK) for _ in range(IN_FLIGHT)]
            return 0

    def _copy_buffered(self, src_fd: int, offset: int, k: int) -> int:
        buf = self.bufs[self.turn % IN_FLIGHT]
        self.turn += 1
        while len(self.pending) >= IN_FLIGHT - 1:  # the oldest hash may still be reading this buffer
            self.pending.popleft().result()
        got = os.preadv(src_fd, [memoryview(buf)[:k]], offset)
        if got > 0:
            self._pwrite(memoryview(buf)[:got])
            self.pending.append(self.pool.submit(self.digest.update, memoryview(buf)[:got]))
        return got

    def _pwrite(self, data) -> None:
        done = 0
        while done < len(data):
            done += os.pwrite(self.fd, data[done:], self.pos + done)

    def copy(self, src_fd: int, offset: int, n: int, progress: Callable[[int], None] | None) -> None:
        while n > 0:
            k = min(CHUNK, n)
            got = self._copy_in_kernel(src_fd, offset, k) if self.in_kernel else 0
            if got > 0:
                self._queue(self._hash_written, self.pos, got)
            elif not self.in_kernel:
                got = self._copy_buffered(src_fd, offset, k)
            if got <= 0:
                raise MergeError(f"unexpected end of a shard at byte {offset} ({n} bytes short); fetch it again")
            self.pos += got
            offset += got
            n -= got
            if progress:
                progress(got)

    def write(self, data: bytes) -> None:
        self._pwrite(data)
        self._queue(self.digest.update, data)
        self.pos += len(data)

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        self.drain()
        self.pool.shutdown()


def _layout(tensors: list[_Tensor], alignment: int, header_len: int) -> list[list]:
    """The journal's copy list: [shard file name, source offset, bytes, zero padding after, merged offset]."""
    out, pos = [], header_len
    for src, start, n, pad in _runs(tensors, alignment):
        out.append([src.name, start, n, pad, pos])
        pos += n + pad
    return out


def _fresh(first: Path, output: Path, tmp: Path, alignment: int, keep_shards: bool) -> dict:
    """Check every shard, write the merged header to tmp and the journal that the copy then advances."""
    paths, kv_raw, tensors, n_kv = plan_merge(first)
    with open(paths[0], "rb") as f:
        version = struct.unpack("<I", f.read(8)[4:])[0]
    header = b"GGUF" + struct.pack("<IQQ", version, len(tensors), n_kv) + kv_raw
    offset = 0
    for t in tensors:
        header += t.raw_info + struct.pack("<Q", offset)
        offset += _pad(t.nbytes, alignment)
    header += b"\0" * (_pad(len(header), alignment) - len(header))
    output.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < len(header):
            done += os.pwrite(fd, header[done:], done)
        os.fsync(fd)
    finally:
        os.close(fd)
    journal = {"version": 1, "file": output.name, "bytes": len(header) + offset, "header_bytes": len(header),
               "done": len(header), "keep_shards": keep_shards,
               "shards": [{"file": p.name, "bytes": p.stat().st_size} for p in paths],
               "tensors": len(tensors), "tensor_table": _table_digest((t.name, t.nbytes) for t in tensors),
               "runs": _layout(tensors, alignment, len(header))}
    write_json_atomic(journal_path(output), journal)
    return journal


def _resumable(first: Path, output: Path, tmp: Path, keep_shards: bool) -> dict | None:
    """The journal of an interrupted merge of this output, if its merged bytes are still there."""
    try:
        journal = json.loads(journal_path(output).read_text())
    except (OSError, ValueError):
        return None
    if journal.get("version") != 1 or journal.get("file") != output.name:
        return None
    if journal.get("sha256") and output.is_file() and output.stat().st_size == journal["bytes"]:
        return journal  # renamed; only the marker and the clean-up were left
    if not tmp.is_file() or tmp.stat().st_size < journal["done"]:
        if not journal["keep_shards"] and journal["done"] > journal["header_bytes"]:
            # the shards were partly consumed into a merged file that is gone: they cannot be merged again
            for s in journal["shards"]:
                (first.parent / s["file"]).unlink(missing_ok=True)
            journal_path(output).unlink(missing_ok=True)
            raise MergeError(f"{tmp}: the partial merge is gone but its shards were already consumed; they were "
                             "deleted: fetch the set again", Exit.RETRY)
        return None
    journal["keep_shards"] = journal["keep_shards"] and keep_shards
    return journal


def merge(first: str | os.PathLike[str], output: str | os.PathLike[str], *, keep_shards: bool = True,
          alignment: int = 32, progress: Callable[[int], None] | None = None,
          window: int = MERGE_WINDOW_BYTES) -> dict:
    """Merge the split set starting at `first` into `output` (resuming an interrupted merge); return the marker."""
    first, output = Path(first), Path(output)
    marker = marker_path(output)
    if marker.exists() and output.exists():
        info = json.loads(marker.read_text())
        if info.get("bytes") == output.stat().st_size:
            _clean_up(first, output)  # a run killed after its marker: finish deleting what the journal names
            return {**info, "skipped": True}
    tmp = output.with_name(partial_name(output.name))
    journal = _resumable(first, output, tmp, keep_shards)
    punched = True
    try:
        if journal is None:
            journal = _fresh(first, output, tmp, alignment, keep_shards)
        if not journal.get("sha256"):
            punched = _copy_all(first.parent, tmp, journal, window, progress)
        if tmp.exists():  # else renamed already, before a kill
            _verify(tmp, journal)
            os.replace(tmp, output)
            fsync_dir(output.parent)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            how = ("" if punched else " This filesystem cannot punch holes, so each shard was freed only once wholly "
                   "copied: the merge needs room for the largest shard beyond the set.")
            raise MergeError(f"{output.parent}: disk full while merging into {output.name}; the merge journal keeps "
                             f"what is done and a rerun resumes it.{how} Grow the cache volume (spec.cache.size), "
                             "then run again", Exit.NO_SPACE, "no-space") from None
        raise
    info = {"file": output.name, "bytes": journal["bytes"], "sha256": journal["sha256"],
            "tensors": journal["tensors"], "shards": journal["shards"],
            "copy_seconds": journal.get("copy_seconds", 0.0)}
    write_json_atomic(marker, info)
    _clean_up(first, output)
    return info


def _clean_up(first: Path, output: Path) -> None:
    """After the marker: delete the consumed shards, then the journal (its presence means this is not done)."""
    try:
        journal = json.loads(journal_path(output).read_text())
    except (OSError, ValueError):
        return
    if not journal.get("keep_shards"):
        for s in journal["shards"]:
            (first.parent / s["file"]).unlink(missing_ok=True)
    journal_path(output).unlink(missing_ok=True)


def _copy_all(shard_dir: Path, tmp: Path, journal: dict, window: int,
              progress: Callable[[int], None] | None) -> bool:
    """Copy (or finish copying) every run into tmp, committing a window at a time; record the sha256 in the
    journal. Returns False when the shards could not be punched (they were deleted whole instead)."""
    started = time.monotonic()
    done, consume = journal["done"], not journal["keep_shards"]
    digest = _hash_prefix(tmp, done)  # the header, or on resume every byte already merged (read once, after a kill)
    if progress and done > journal["header_bytes"]:
        progress(done - journal["header_bytes"])
    fds = {s["file"]: os.open(shard_dir / s["file"], os.O_RDWR if consume else os.O_RDONLY)
           for s in journal["shards"] if (shard_dir / s["file"]).exists()}
    out = os.open(tmp, os.O_RDWR)  # read back by the hash, from the page cache
    punch = {"ok": True}
    # A window's commit is a pipeline beside the copy of the next one: its fdatasync and journal record in one
    # thread, then the freeing of its shard bytes in another (only once the journal has it). A commit waits for
    # the previous window's record and the freeing of the one before, so a window's freeing never holds up the
    # next one's fdatasync, and the shards hold at most MERGE_SLACK_WINDOWS windows already merged: one being
    # freed, one being recorded, one being copied (contract.cache_peak_bytes).
    committer = ThreadPoolExecutor(1, thread_name_prefix="commit")
    freer = ThreadPoolExecutor(1, thread_name_prefix="free")
    recorded: list[tuple[int, Future]] = []  # the window being recorded: its end, and the future
    freeing: list[Future] = []
    jpath = journal_path(tmp.with_name(journal["file"]))
    try:
        os.ftruncate(out, done)  # bytes past the last commit are rewritten

        def durable(pos: int) -> None:
            os.fdatasync(out)  # every byte written before this call, so all of [0, pos)
            write_json_atomic(jpath, {**journal, "done": pos})

        def free(pos: int) -> None:
            _free(shard_dir, fds, {**journal, "done": pos}, punch)

        def settle_previous() -> None:
            """The window being recorded is durable; its freeing starts once the one before has finished."""
            if not recorded:
                return
            pos, future = recorded.pop()
            future.result()
            if consume:
                if freeing:
                    freeing.pop().result()
                freeing.append(freer.submit(free, pos))

        def commit(pos: int) -> None:
            settle_previous()
            recorded.append((pos, committer.submit(durable, pos)))

        writer = _HashingWriter(out, done, digest)
        try:
            if consume and done > journal["header_bytes"]:  # frees what a kill left unpunched (idempotent)
                _free(shard_dir, fds, journal, punch)
            since = journal["header_bytes"] if done == journal["header_bytes"] else 0  # the header counts
            for name, start, n, pad, pos in journal["runs"]:
                end = pos + n + pad
                if end <= done:
                    continue
                skip = max(0, done - pos)
                while skip < n:
                    k = min(n - skip, window - since)
                    if name not in fds:
                        raise MergeError(f"{shard_dir / name}: shard missing mid-merge; fetch the set again")
                    writer.copy(fds[name], start + skip, k, progress)
                    skip += k
                    since += k
                    if since >= window:
                        commit(writer.pos)
                        since = 0
                if pad and writer.pos < end:
                    writer.write(b"\0" * (end - writer.pos))
            commit(writer.pos)
            settle_previous()
            if freeing:
                freeing.pop().result()
            journal["done"] = writer.pos
            writer.drain()
        finally:
            writer.close()
            committer.shutdown()
            freer.shutdown()
    finally:
        os.close(out)
        for fd in fds.values():
            os.close(fd)
    if os.stat(tmp).st_size != journal["bytes"]:
        raise MergeError(f"{tmp}: wrote {os.stat(tmp).st_size} bytes, expected {journal['bytes']}; "
                         "check free disk space", Exit.NO_SPACE, "no-space")
    journal["sha256"] = digest.hexdigest()
    journal["copy_seconds"] = round(journal.get("copy_seconds", 0.0) + time.monotonic() - started, 3)
    write_json_atomic(jpath, journal)
    return punch["ok"]


def _hash_prefix(path: Path, n: int):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while n > 0 and (chunk := f.read(min(CHUNK, n))):
            digest.update(chunk)
            n -= len(chunk)
    return digest


def _free(shard_dir: Path, fds: dict[str, int], journal: dict, punch: dict) -> None:
    """Free the shard bytes whose merged copies are committed. Per shard that is everything below its lowest
    source byte not yet committed (its header included): each call punches from the block where the last one
    stopped, so no block at a window's edge stays allocated and nothing is punched twice. Where the filesystem
    cannot punch holes, each shard whose every byte is committed is deleted instead."""
    done = journal["done"]
    low: dict[str, int] = {}
    for name, src, n, _pad_, pos in journal["runs"]:
        committed = min(max(done - pos, 0), n)
        low.setdefault(name, 1 << 62)
        if committed < n:
            low[name] = min(low[name], src + committed)
    freed = punch.setdefault("freed", {})
    for name, lowest in low.items():
        if name not in fds:
            continue
        whole = lowest == 1 << 62
        if punch["ok"]:
            end = os.fstat(fds[name]).st_size if whole else lowest
            start = freed.get(name, 0) // PUNCH_ALIGN * PUNCH_ALIGN
            if end > start and not punch_hole(fds[name], start, end - start):
                punch["ok"] = False
            freed[name] = max(end, freed.get(name, 0))
        if not punch["ok"] and whole:
            os.close(fds.pop(name))
            (shard_dir / name).unlink(missing_ok=True)


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


def _table_digest(entries) -> str:
    """sha256 of a tensor table's (name, bytes) list: the journal's record of what the merged header must hold."""
    return hashlib.sha256(json.dumps([[n, int(b)] for n, b in entries]).encode()).hexdigest()


def _verify(path: Path, journal: dict) -> None:
    """Re-read the merged header: the shards' tensor table (names and sizes), no split keys."""
    try:
        header = read_local(str(path))
    except GGUFError as exc:
        raise MergeError(f"merged header unreadable: {exc}") from None
    if any(k in header.kv for k in SPLIT_KEYS):
        raise MergeError(f"{path}: merged header still has split keys")
    if len(header.tensors) != journal["tensors"] or \
            _table_digest((t.name, t.nbytes) for t in header.tensors) != journal["tensor_table"]:
        raise MergeError(f"{path}: merged tensor table does not match the shards'")
