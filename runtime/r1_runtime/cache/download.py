"""The variant's files on the hub (listed by huggingface_hub) and their resumable, verified download.

huggingface_hub selects the files (``allow_patterns=["*VARIANT*"]``, as the source blog
does), resolves the revision to a commit, reads each file's LFS sha256 and size, and
supplies the endpoint (``HF_ENDPOINT``), the token (``HF_TOKEN``) and its HTTP session.
The bytes are fetched here rather than by ``hf_hub_download``: huggingface_hub 2.x
writes each download to a process-unique temporary file and deletes it on failure, so a
killed download always restarts from zero. Here each file grows in ``.NAME.partial``
next to its final path and a restart asks for ``Range: bytes=<size of partial>-``. A
file gets its final name only after its sha256 equals the hub's; a mismatch deletes it
and fetches it once more, then fails.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from r1_operator.api.contract import Exit, partial_name
from r1_runtime.cache.files import CacheError, fsync_dir
from r1_runtime.cache.progress import Progress

RETRIES = 5
CHUNK = 1 << 20


class FetchError(CacheError):
    """A download or listing that cannot complete (exit code and phase as in the contract)."""


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
        raise FetchError(f"revision {revision!r} not found in {repo}; check spec.model.revision", Exit.BAD_INPUT) from None
    except RepositoryNotFoundError:
        raise FetchError(f"repository {repo} not found at {endpoint or 'the hub'} (or the token cannot read it); "
                         "check the repo name, HF_ENDPOINT and the HF token Secret", Exit.BAD_INPUT) from None
    except HfHubHTTPError as exc:
        raise FetchError(f"hub error listing {repo}: {_status(exc)}; check HF_ENDPOINT and the HF token", Exit.RETRY) from None
    siblings = info.siblings or []
    chosen = list(filter_repo_objects(siblings, allow_patterns=[f"*{variant}*"], key=lambda s: s.rfilename))
    if not chosen:
        ggufs = sorted(s.rfilename for s in siblings if s.rfilename.endswith(".gguf"))
        raise FetchError(f"no file in {repo}@{info.sha} matches '*{variant}*'; GGUF files there: "
                         f"{', '.join(ggufs[:12]) or 'none'}; check the variant name", Exit.BAD_INPUT)
    files = []
    for s in chosen:
        if s.lfs is None:
            raise FetchError(f"{repo}/{s.rfilename} has no LFS sha256 on the hub; it cannot be verified", Exit.BAD_INPUT)
        files.append(RemoteFile(s.rfilename, int(s.lfs.size), s.lfs.sha256))
    return Listing(repo, info.sha, files)


def _status(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return f"HTTP {response.status_code}" if response is not None else type(exc).__name__


def partial_path(final: Path) -> Path:
    return final.with_name(partial_name(final.name))


class Downloader:
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
                fsync_dir(final.parent)
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
                                     "Free space or grow the cache volume, then run again", Exit.NO_SPACE, "no-space") from None
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
                             f"{exc}; the partial file is kept and a rerun resumes it", Exit.RETRY) from None
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
                                 "the repo/revision", Exit.BAD_INPUT)
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
                                         "the mirror is inconsistent", Exit.VERIFY_FAILED, "verify-failed")
                    out.write(chunk)
                    h.update(chunk)
                    have += len(chunk)
                    self.progress.add(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        return have
