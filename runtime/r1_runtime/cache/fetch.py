"""Resumable, verified download of one GGUF variant from a Hugging Face hub.

huggingface_hub selects the files (``allow_patterns=["*VARIANT*"]``, as the
source blog does), resolves the revision to a commit, reads each file's LFS
sha256 and size, and supplies the endpoint (``HF_ENDPOINT``), the token
(``HF_TOKEN``) and its HTTP session. The bytes are fetched here rather than by
``hf_hub_download``: huggingface_hub 2.x writes each download to a
process-unique temporary file and deletes it on failure, so a killed download
always restarts from zero. Here each file grows in ``.NAME.partial`` next to its
final path and a restart asks for ``Range: bytes=<size of partial>-``.

A file gets its final name only after its sha256 equals the hub's. A mismatch
deletes it and fetches it once more, then fails. Free space is checked before
anything is written. Progress goes to ``DEST/.r1-fetch-progress.json``, a line on
stderr every few seconds (a bar on a TTY), and a termination message.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from r1_runtime.cache import merge as merging

PROGRESS_FILE = ".r1-fetch-progress.json"
LOCK_FILE = ".r1-fetch.lock"
MANIFEST_FILE = ".r1-fetch.json"
PROGRESS_MARK = "r1-progress="  # progress lines end with this and a JSON object
FREE_BYTES_ENV = "R1_FETCH_FREE_BYTES"  # test injection of the free-space figure
RETRIES = 5
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A fetch that cannot complete; the message says which file or field and what to do."""

    def __init__(self, message: str, exit_code: int = 1, phase: str = "failed"):
        super().__init__(message)
        self.exit_code = exit_code
        self.phase = phase


@dataclass(frozen=True)
class RemoteFile:
    path: str  # path in the repo
    size: int
    sha256: str


@dataclass(frozen=True)
class Listing:
    repo: str
    commit: str
    files: list[RemoteFile]


def list_variant(repo: str, variant: str, revision: str | None, endpoint: str | None) -> Listing:
    """The variant's files in the repo at a revision, with sizes and LFS hashes (huggingface_hub)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    api = HfApi(endpoint=endpoint)
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise FetchError(f"revision {revision!r} not found in {repo}; check spec.model.revision", 2) from None
    except RepositoryNotFoundError:
        raise FetchError(f"repository {repo} not found at {endpoint or 'the hub'} (or the token cannot read it); "
                         "check the repo name, HF_ENDPOINT and the HF token Secret", 2) from None
    except HfHubHTTPError as exc:
        raise FetchError(f"hub error listing {repo}: {_status(exc)}; check HF_ENDPOINT and the HF token", 1) from None
    siblings = info.siblings or []
    chosen = list(filter_repo_objects(siblings, allow_patterns=[f"*{variant}*"], key=lambda s: s.rfilename))
    if not chosen:
        ggufs = sorted(s.rfilename for s in siblings if s.rfilename.endswith(".gguf"))
        raise FetchError(f"no file in {repo}@{info.sha} matches '*{variant}*'; GGUF files there: "
                         f"{', '.join(ggufs[:12]) or 'none'}; check the variant name", 2)
    files = []
    for s in chosen:
        if s.lfs is None:
            raise FetchError(f"{repo}/{s.rfilename} has no LFS sha256 on the hub; it cannot be verified", 2)
        files.append(RemoteFile(s.rfilename, int(s.lfs.size), s.lfs.sha256))
    return Listing(repo, info.sha, files)


def _status(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return f"HTTP {response.status_code}" if response is not None else type(exc).__name__


class Progress:
    """Phase, bytes and rate: a JSON file on the volume, a line every `interval` s, a bar on a TTY."""

    def __init__(self, dest: Path, total: int, interval: float = 5.0, stream=sys.stderr):
        self.path = dest / PROGRESS_FILE
        self.total = total
        self.done = 0
        self.phase = "starting"
        self.file = ""
        self.interval = interval
        self.stream = stream
        self.started = time.monotonic()
        self._window: collections.deque[tuple[float, int]] = collections.deque([(self.started, 0)])
        self._last_line = 0.0
        self._last_write = 0.0
        self._printed_phase = ""
        self._bar = None
        if hasattr(stream, "isatty") and stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, file=stream)

    def rate(self) -> float:
        now = time.monotonic()
        while len(self._window) > 1 and now - self._window[0][0] > 10.0:
            self._window.popleft()
        t0, b0 = self._window[0]
        return (self.done - b0) / (now - t0) if now > t0 else 0.0

    def snapshot(self, **extra) -> dict:
        rate = self.rate()
        left = self.total - self.done
        return {
            "phase": self.phase,
            "file": self.file,
            "bytesDone": self.done,
            "bytesTotal": self.total,
            "percent": round(100.0 * self.done / self.total, 1) if self.total else 100.0,
            "bytesPerSecond": round(rate),
            "etaSeconds": round(left / rate) if rate > 0 and left > 0 else None,
            "elapsedSeconds": round(time.monotonic() - self.started, 1),
            "updatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
        }

    def set_phase(self, phase: str, file: str = "", done: int | None = None, total: int | None = None) -> None:
        self.phase, self.file = phase, file
        if total is not None:
            self.total = total
            if self._bar is not None:
                self._bar.reset(total=total)
        if done is not None:
            self.done = done
            self._window = collections.deque([(time.monotonic(), done)])
            if self._bar is not None:
                self._bar.n = done
                self._bar.refresh()
        self.emit(force=True)

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        self._window.append((now, self.done))
        if self._bar is not None:
            self._bar.update(n)
        if now - self._last_write >= 1.0 or (self._bar is None and now - self._last_line >= self.interval):
            self.emit()  # the snapshot is built only when it is written or printed

    def emit(self, force: bool = False, **extra) -> dict:
        now = time.monotonic()
        snap = self.snapshot(**extra)
        if force or now - self._last_write >= 1.0:
            merging.write_json_atomic(self.path, snap, durable=False)
            self._last_write = now
        if self._bar is None and (now - self._last_line >= self.interval or (force and self.phase != self._printed_phase)):
            rate = snap["bytesPerSecond"] / (1 << 20)
            # The JSON tail is for machines: the operator reads it from the pod's log for the CACHE column.
            machine = json.dumps({k: snap[k] for k in ("phase", "bytesDone", "bytesTotal", "percent")})
            print(f"r1-runtime fetch: {snap['phase']} {snap['file']} {_gib(self.done)}/{_gib(self.total)} "
                  f"({snap['percent']}%) {rate:.1f} MiB/s {PROGRESS_MARK}{machine}", file=self.stream, flush=True)
            self._last_line = now
            self._printed_phase = self.phase
        return snap

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def free_bytes(dest: Path) -> int:
    injected = os.environ.get(FREE_BYTES_ENV)
    return int(injected) if injected else shutil.disk_usage(dest).free


def shard1(listing: Listing) -> tuple[RemoteFile, str] | None:
    """The first shard of a split set and the set's stem, or None when the variant is not split."""
    for f in listing.files:
        m = merging.SPLIT_RE.match(Path(f.path).name)
        if m and int(m.group("no")) == 1:
            return f, m.group("stem")
    return None


def merged_path(dest: Path, listing: Listing) -> Path | None:
    """Where --merge puts the merged file: NAME.gguf next to NAME-00001-of-0000N.gguf (None if not a split set)."""
    first = shard1(listing)
    return dest / Path(first[0].path).with_name(first[1] + ".gguf") if first else None


def _merged_done(out: Path, listing: Listing) -> bool:
    marker = merging.marker_path(out)
    if not (out.is_file() and marker.is_file()):
        return False
    info = json.loads(marker.read_text())
    want = sorted((Path(f.path).name, f.size) for f in listing.files if merging.SPLIT_RE.match(Path(f.path).name))
    have = sorted((s["file"], s["bytes"]) for s in info.get("shards", []))
    return info.get("bytes") == out.stat().st_size and want == have


def _space_plan(dest: Path, listing: Listing, merge_to: Path | None) -> tuple[int, int]:
    """(bytes still to write, bytes already on the volume) for downloads plus merge."""
    need = have = 0
    for f in listing.files:
        final = dest / f.path
        if final.is_file() and final.stat().st_size == f.size:
            have += f.size
            continue
        part = partial_path(final)
        got = part.stat().st_size if part.is_file() else 0
        got = got if got <= f.size else 0
        have += got
        need += f.size - got
    if merge_to is not None:
        need += sum(f.size for f in listing.files if merging.SPLIT_RE.match(Path(f.path).name))
    return need, have


class _Downloader:
    def __init__(self, listing: Listing, endpoint: str | None, progress: Progress, timeout: float):
        from huggingface_hub import constants, get_session
        from huggingface_hub.utils import build_hf_headers

        self.listing = listing
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.session = get_session()
        self.headers = build_hf_headers()
        self.progress = progress
        self.timeout = timeout

    def url(self, f: RemoteFile) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.listing.repo, f.path, revision=self.listing.commit, endpoint=self.endpoint)

    def fetch(self, f: RemoteFile, final: Path) -> None:
        """Download (resuming), verify and rename one file; one refetch after a hash mismatch."""
        for attempt in (1, 2):
            digest = self._download(f, final)
            if digest == f.sha256:
                os.replace(partial_path(final), final)
                merging._fsync_dir(final.parent)
                return
            partial_path(final).unlink(missing_ok=True)
            self.progress.add(-f.size)
            if attempt == 1:
                print(f"r1-runtime fetch: {f.path}: sha256 {digest} does not match the hub's {f.sha256}; "
                      "deleted it, fetching it again", file=sys.stderr, flush=True)
        raise FetchError(f"{f.path}: sha256 mismatch twice (got {digest}, hub says {f.sha256}); the partial file "
                         "was deleted. The mirror or the volume corrupts data: check HF_ENDPOINT and the storage",
                         4, "verify-failed")

    def _download(self, f: RemoteFile, final: Path) -> str:
        part = partial_path(final)
        part.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        have = part.stat().st_size if part.is_file() else 0
        if have > f.size:
            part.unlink()
            have = 0
        if have:  # the bytes already here count as done; hash them so the final check covers the whole file
            self.progress.set_phase("verifying-partial", f.path)
            with open(part, "rb") as src:
                while chunk := src.read(8 << 20):
                    h.update(chunk)
        self.progress.set_phase("downloading", f.path)
        failures = 0
        while have < f.size:
            try:
                have = self._get_range(f, part, have, h)
            except FetchError:
                raise
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise FetchError(f"{part}: disk full after {have} of {f.size} bytes; the partial file is kept. "
                                     "Free space or grow the cache volume, then run again", 3, "no-space") from None
                failures = self._retry(f, failures, exc)
            except Exception as exc:  # noqa: BLE001 - network errors come as several httpx types
                failures = self._retry(f, failures, exc)
            have = part.stat().st_size
        self.progress.set_phase("verifying", f.path)
        return h.hexdigest()

    def _retry(self, f: RemoteFile, failures: int, exc: Exception) -> int:
        failures += 1
        if failures > RETRIES:
            raise FetchError(f"{f.path}: download failed {failures} times, last error: {type(exc).__name__}: "
                             f"{exc}; the partial file is kept and a rerun resumes it", 1) from None
        delay = min(2 ** failures, 30)
        print(f"r1-runtime fetch: {f.path}: {type(exc).__name__}: {exc}; retry {failures}/{RETRIES} in {delay}s",
              file=sys.stderr, flush=True)
        time.sleep(delay)
        return failures

    def _get_range(self, f: RemoteFile, part: Path, have: int, h) -> int:
        headers = dict(self.headers)
        if have:
            headers["Range"] = f"bytes={have}-"
        with self.session.stream("GET", self.url(f), headers=headers, follow_redirects=True,
                                 timeout=self.timeout) as r:
            if r.status_code in (401, 403, 404):
                raise FetchError(f"{f.path}: hub answered HTTP {r.status_code}; check the HF token Secret and "
                                 "the repo/revision", 2)
            if r.status_code >= 400:
                raise OSError(f"HTTP {r.status_code} from the hub")
            if have and r.status_code == 200:  # the server ignored Range: start over, counting honestly
                self.progress.add(-have)
                h.__init__()
                have = 0
                mode = "wb"
            else:
                mode = "ab"
            with open(part, mode) as out:
                for chunk in r.iter_bytes(CHUNK):
                    if have + len(chunk) > f.size:
                        raise FetchError(f"{f.path}: the hub sent more than the {f.size} bytes it announced; "
                                         "the mirror is inconsistent", 4, "verify-failed")
                    out.write(chunk)
                    h.update(chunk)
                    have += len(chunk)
                    self.progress.add(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        return have


def fetch(repo: str, variant: str, dest: str | os.PathLike[str], *, revision: str | None = None,
          merge: bool = False, keep_shards: bool = False, endpoint: str | None = None,
          interval: float = 5.0, timeout: float = 60.0, stream=sys.stderr) -> dict:
    """Fetch the variant's files into dest (and merge a split set); return the final progress snapshot."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    with open(dest / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FetchError(f"{dest}: another fetch holds {LOCK_FILE}; wait for it to finish", 1) from None
        progress = Progress(dest, 0, interval, stream)
        try:
            return _fetch_locked(repo, variant, dest, revision, merge, keep_shards, endpoint, timeout, progress)
        except FetchError as exc:
            progress.phase = exc.phase
            progress.emit(force=True, error=str(exc))
            raise
        finally:
            progress.close()


def _fetch_locked(repo, variant, dest: Path, revision, merge, keep_shards, endpoint, timeout, progress: Progress) -> dict:
    progress.set_phase("listing", repo)
    listing = list_variant(repo, variant, revision, endpoint)
    total = sum(f.size for f in listing.files)
    merge_to = merged_path(dest, listing) if merge else None
    summary = {"repo": repo, "variant": variant, "commit": listing.commit,
               "files": [f.path for f in listing.files]}
    if merge_to is not None and _merged_done(merge_to, listing):
        progress.set_phase("done", str(merge_to.relative_to(dest)), done=total, total=total)
        return progress.emit(force=True, **summary, model=str(merge_to), skipped=True)
    need, have = _space_plan(dest, listing, merge_to)
    free = free_bytes(dest)
    if need > free:
        raise FetchError(
            f"{dest}: not enough free space: need {_gib(need)} more ({_gib(total)} of files, {_gib(have)} already "
            f"here{', plus the merged copy' if merge_to else ''}), {_gib(free)} free. Grow the cache volume "
            f"(spec.cache.size) or free space, then run again", 3, "no-space")
    progress.set_phase("downloading", done=0, total=total)
    downloader = _Downloader(listing, endpoint, progress, timeout)
    for f in listing.files:
        final = dest / f.path
        if final.is_file() and final.stat().st_size == f.size:
            progress.add(f.size)
            continue
        downloader.fetch(f, final)
    first = shard1(listing)
    model = dest / (first[0].path if first else listing.files[0].path)
    if merge_to is not None:
        progress.set_phase("merging", merge_to.name, done=0, total=total)
        info = merging.merge(dest / first[0].path, merge_to, keep_shards=keep_shards, progress=progress.add)
        summary["merged"] = {"sha256": info["sha256"], "bytes": info["bytes"]}
        model = merge_to
    # Written last: `serve --model DEST` trusts a manifest only once every file it names is complete.
    merging.write_json_atomic(dest / MANIFEST_FILE, {**summary, "model": str(model.relative_to(dest)),
                                                     "sizes": {f.path: f.size for f in listing.files},
                                                     "sha256": {f.path: f.sha256 for f in listing.files}})
    progress.set_phase("done", str(model.relative_to(dest)), done=progress.total)
    return progress.emit(force=True, **summary, model=str(model))


def termination_message(snapshot: dict) -> str:
    """A short JSON (Kubernetes keeps 4096 bytes) for the pod's termination message."""
    keep = ("phase", "bytesDone", "bytesTotal", "percent", "model", "commit", "error")
    msg = json.dumps({k: snapshot[k] for k in keep if k in snapshot})
    return msg[:4000]

