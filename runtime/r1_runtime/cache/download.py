"""The variant's files on the hub (listed by huggingface_hub) and their resumable, verified download.

huggingface_hub selects the files (``allow_patterns=["*VARIANT*"]``, as the source blog
does), resolves the revision to a commit, reads each file's LFS sha256 and size, and
supplies the endpoint (``HF_ENDPOINT``), the token (``HF_TOKEN``) and its HTTP session.
The bytes are fetched here rather than by ``hf_hub_download``: huggingface_hub 2.x
writes each download to a process-unique temporary file and deletes it on failure, so a
killed download always restarts from zero, over one connection.

Here `connections` threads fetch byte ranges (`FETCH_SEGMENT_BYTES`, 64 MiB, or shorter for a file that
would otherwise give each connection fewer than four: `range_bytes`) with
``Range: bytes=A-B``, the files' ranges in order, so large files use every connection and
small ones go several at once. Each file is written in place into ``.NAME.partial`` (sparse,
its final size); a journal beside it (``.NAME.partial.ranges``) records each span after it is
written, so a restart fetches only what no span covers: a SIGKILL loses the bytes in flight,
never what was written (the kernel keeps written pages). After a power loss the journal may
claim bytes that never reached the disk; the hash below catches that and the file is fetched
again.

A hashing thread follows each file's written prefix, reading it back from the page cache it
was just written to (no disk read while it keeps up), so a file gets its final name once its
sha256 equals the hub's without a second pass over the disk. After a restart the bytes already
there are read once to rebuild the hash. A mismatch deletes the file and fetches it once more,
then fails. Memory is bounded: one 1 MiB chunk per connection and an 8 MiB hashing buffer,
whatever the file sizes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from r1_operator.api.contract import FETCH_SEGMENT_BYTES, Exit, partial_name
from r1_runtime.cache.files import fsync_dir
from r1_runtime.cache.hubhttp import Expired, RateLimited, Resolver, retry_after
from r1_runtime.cache.listing import FetchError, Listing, RemoteFile, list_variant  # noqa: F401 - fetch's names
from r1_runtime.cache.progress import Progress

RETRIES = 5  # failures in a row of one range before the fetch gives up (a rerun resumes)
CHUNK = 1 << 20  # read from the socket, written and journaled at a time
HASH_BUF = 8 << 20
RANGE_ENV = "R1_FETCH_RANGE_BYTES"  # a fixed range size instead (tests use small ones)
MIN_RANGE = 4 << 20


def range_bytes(size: int, connections: int) -> int:
    """A file's range size: FETCH_SEGMENT_BYTES, smaller for a file too small to give every connection four ranges
    (at least MIN_RANGE), so the last ranges in flight, when some connections already idle, are short."""
    raw = os.environ.get(RANGE_ENV)
    if raw:
        return int(raw)
    return max(MIN_RANGE, min(FETCH_SEGMENT_BYTES, -(-size // (4 * connections))))


def partial_path(final: Path) -> Path:
    return final.with_name(partial_name(final.name))


def journal_path(final: Path) -> Path:
    return final.with_name(partial_name(final.name) + ".ranges")


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def written_spans(final: Path, size: int) -> list[tuple[int, int]]:
    """The [start, end) spans of a file's partial download that are on the volume: the journal's, or for a partial
    without one (a sequential download's) its length from 0."""
    part, journal = partial_path(final), journal_path(final)
    if not part.is_file():
        return []
    if not journal.is_file():
        have = part.stat().st_size
        return [(0, have)] if 0 < have <= size else []
    spans = []
    for line in journal.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():  # a torn last line is skipped
            a, b = int(fields[0]), int(fields[1])
            if 0 <= a < b <= size:
                spans.append((a, b))
    return _merged(spans)


def written_bytes(final: Path, size: int) -> int:
    return sum(b - a for a, b in written_spans(final, size))


@dataclass
class _File:
    """One file being fetched: its sparse partial, the journal of written spans, and the hash of its prefix."""
    remote: RemoteFile
    final: Path
    fd: int = -1
    journal: int = -1
    spans: list[tuple[int, int]] = field(default_factory=list)
    hashed: int = 0
    attempt: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> None:
        part = partial_path(self.final)
        part.parent.mkdir(parents=True, exist_ok=True)
        self.spans = written_spans(self.final, self.remote.size)
        if not journal_path(self.final).is_file():  # written first: the sparse file's length is not progress
            text = "".join(f"{a} {b}\n" for a, b in self.spans)
            tmp = journal_path(self.final).with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, journal_path(self.final))
        self.fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self.fd).st_size != self.remote.size:
            os.ftruncate(self.fd, self.remote.size)
        self.journal = os.open(journal_path(self.final), os.O_WRONLY | os.O_APPEND)

    def close(self) -> None:
        for fd in (self.fd, self.journal):
            if fd >= 0:
                os.close(fd)
        self.fd = self.journal = -1

    def record(self, a: int, b: int) -> None:
        os.write(self.journal, f"{a} {b}\n".encode())
        with self.lock:
            self.spans = _merged([*self.spans, (a, b)])

    def prefix(self) -> int:
        with self.lock:
            return self.spans[0][1] if self.spans and self.spans[0][0] == 0 else 0

    def missing(self, connections: int = 8) -> list[tuple[int, int]]:
        """What no span covers, cut into ranges of at most range_bytes()."""
        out, pos, step = [], 0, range_bytes(self.remote.size, connections)
        with self.lock:
            edges = [*self.spans, (self.remote.size, self.remote.size)]
        for a, b in edges:
            for s in range(pos, a, step):
                out.append((s, min(s + step, a)))
            pos = max(pos, b)
        return out

    def discard(self) -> None:
        self.close()
        partial_path(self.final).unlink(missing_ok=True)
        journal_path(self.final).unlink(missing_ok=True)
        self.spans, self.hashed = [], 0


class Downloader:
    """The listing's files over `connections` HTTP connections (see the module's docstring)."""

    def __init__(self, listing: Listing, endpoint: str | None, progress: Progress, timeout: float,
                 connections: int = 8):
        from huggingface_hub import constants, get_session
        from huggingface_hub.utils import build_hf_headers

        self.listing = listing
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.session = get_session()
        self.headers = build_hf_headers()
        self.resolver = Resolver(self.session, self.headers, timeout)
        self.progress = progress
        self.timeout = timeout
        self.connections = connections
        self._ranges: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._wake = threading.Condition()

    def url(self, f: RemoteFile) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.listing.repo, f.path, revision=self.listing.commit, endpoint=self.endpoint)

    def fetch_all(self, files: list[tuple[RemoteFile, Path]]) -> None:
        """Download (resuming), verify and rename the files; one refetch of a file after a hash mismatch."""
        jobs = [_File(f, final) for f, final in files]
        for job in jobs:
            job.open()
            done = sum(b - a for a, b in job.spans)
            if done:
                self.progress.add(done)
            for a, b in job.missing(self.connections):
                self._ranges.put((job, a, b))
        workers = [threading.Thread(target=self._work, args=(i,), name=f"fetch-{i}", daemon=True)
                   for i in range(self.connections)]
        for w in workers:
            w.start()
        try:
            for job in jobs:
                self._verify(job)
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._stop.set()
            with self._wake:
                self._wake.notify_all()
            for w in workers:
                w.join()
            for job in jobs:
                job.close()
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------ the hashing thread (the caller's)

    def _verify(self, job: _File) -> None:
        """Hash the file's prefix as it grows, then rename it (or fetch it again after a mismatch)."""
        f = job.remote
        self.progress.set_phase("downloading", f.path)
        while True:
            h = hashlib.sha256()
            job.hashed = 0
            buf = bytearray(HASH_BUF)
            while job.hashed < f.size:
                self._raise_if_failed()
                upto = job.prefix()
                if upto <= job.hashed:
                    with self._wake:
                        self._wake.wait(0.2)
                    continue
                while job.hashed < upto:
                    n = os.preadv(job.fd, [memoryview(buf)[:min(HASH_BUF, upto - job.hashed)]], job.hashed)
                    if n <= 0:
                        raise FetchError(f"{partial_path(job.final)}: shorter than its journal says; delete it and "
                                         "run again", Exit.RETRY)
                    h.update(memoryview(buf)[:n])
                    job.hashed += n
            digest = h.hexdigest()
            if digest == f.sha256:
                os.fsync(job.fd)
                job.close()
                os.replace(partial_path(job.final), job.final)
                journal_path(job.final).unlink(missing_ok=True)
                fsync_dir(job.final.parent)
                return
            self.progress.add(-f.size)
            job.discard()
            if job.attempt == 2:
                raise FetchError(f"{f.path}: sha256 mismatch twice (got {digest}, hub says {f.sha256}); the partial "
                                 "file was deleted. The mirror or the volume corrupts data: check HF_ENDPOINT and the "
                                 "storage", Exit.VERIFY_FAILED, "verify-failed")
            print(f"r1-runtime fetch: {f.path}: sha256 {digest} does not match the hub's {f.sha256}; "
                  "deleted it, fetching it again", file=sys.stderr, flush=True)
            job.attempt = 2
            job.open()
            for a, b in job.missing(self.connections):
                self._ranges.put((job, a, b))

    # ------------------------------------------------------------ the connections

    def _fail(self, exc: BaseException) -> None:
        with self._error_lock:
            if self._error is None:
                self._error = exc
        self._stop.set()
        with self._wake:
            self._wake.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self, conn: int) -> None:
        while not self._stop.is_set():
            try:
                job, a, b = self._ranges.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._fetch_range(conn, job, a, b)
            except BaseException as exc:  # noqa: BLE001 - the first failure stops the fetch and is raised
                self._fail(exc)
                return
            finally:
                self.progress.connection(conn, None)

    def _fetch_range(self, conn: int, job: _File, a: int, b: int) -> None:
        f, failures, pos = job.remote, 0, a
        while pos < b and not self._stop.is_set():
            try:
                pos = self._get(conn, job, pos, b)
                failures = 0
            except FetchError:
                raise
            except RateLimited as rl:  # a wait the hub asks for: never a failure
                print(f"r1-runtime fetch: {f.path}: {rl}", file=sys.stderr, flush=True)
                self.progress.rate_limited(rl.wait, rl.source, rl.where)
                self._stop.wait(rl.wait)
                self.progress.rate_limited(0, "", "")
            except Expired:
                pass  # resolved again by the next _get
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise FetchError(f"{partial_path(job.final)}: disk full with {written_bytes(job.final, f.size)} "
                                     f"of {f.size} bytes written; they are kept. Free space or grow the cache volume, "
                                     "then run again", Exit.NO_SPACE, "no-space") from None
                failures = self._retry(f, failures, exc)
            except Exception as exc:  # noqa: BLE001 - network errors come as several httpx types
                failures = self._retry(f, failures, exc)

    def _retry(self, f: RemoteFile, failures: int, exc: Exception) -> int:
        failures += 1
        if failures > RETRIES:
            raise FetchError(f"{f.path}: download failed {failures} times, last error: {type(exc).__name__}: "
                             f"{exc}; what was written is kept and a rerun resumes it", Exit.RETRY) from None
        delay = min(2 ** failures, 30)
        print(f"r1-runtime fetch: {f.path}: {type(exc).__name__}: {exc}; retry {failures}/{RETRIES} in {delay}s",
              file=sys.stderr, flush=True)
        self._stop.wait(delay)
        return failures

    def _get(self, conn: int, job: _File, pos: int, end: int) -> int:
        """One GET of [pos, end): each chunk written in place and journaled; returns how far it got."""
        f = job.remote
        t = self.resolver.target(self.url(f))
        headers = {**self.resolver.headers_for(t), "Range": f"bytes={pos}-{end - 1}"}
        with self.session.stream("GET", t.url, headers=headers, follow_redirects=True, timeout=self.timeout) as r:
            if r.status_code == 429:
                raise RateLimited(*retry_after(r.headers), "the hub" if t.on_hub else "the hub's storage")
            if not t.on_hub and r.status_code in (401, 403, 410):
                self.resolver.forget(self.url(f), t)
                raise Expired(f"{f.path}: HTTP {r.status_code} from the resolved URL")
            if r.status_code in (401, 403, 404):
                raise FetchError(f"{f.path}: hub answered HTTP {r.status_code}; check the HF token Secret and "
                                 "the repo/revision", Exit.BAD_INPUT)
            if r.status_code >= 400:
                raise OSError(f"HTTP {r.status_code} from the hub")
            skip = pos if r.status_code == 200 else 0  # the server ignored Range: its body starts at byte 0
            self.progress.connection(conn, f.path)
            for chunk in r.iter_bytes(CHUNK):
                if self._stop.is_set():
                    break
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                    if not chunk:
                        continue
                if pos + len(chunk) > end:
                    if r.status_code == 200:
                        chunk = chunk[:end - pos]
                    else:
                        raise FetchError(f"{f.path}: the hub sent more than the {end - pos} bytes of the range it "
                                         "was asked for; the mirror is inconsistent", Exit.VERIFY_FAILED,
                                         "verify-failed")
                done = 0
                while done < len(chunk):  # a short write (the disk filling) is finished or raises ENOSPC
                    done += os.pwrite(job.fd, memoryview(chunk)[done:], pos + done)
                job.record(pos, pos + len(chunk))
                pos += len(chunk)
                self.progress.add(len(chunk), conn)
                if pos >= end:
                    break
            with self._wake:
                self._wake.notify_all()
        return pos
