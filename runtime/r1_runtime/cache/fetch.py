"""`r1-runtime fetch`: one GGUF variant into the cache volume (list, check space, download, merge, manifest).

Free space is checked before anything is written, against the contract's peak
(`cache_peak_bytes`: every file plus one merge window, as the merge consumes the shards while it
copies; with --keep-shards two copies), the figure the operator sizes the volume from. Progress goes to
``DEST/.r1-fetch-progress.json``, a line on stderr every few seconds and a termination
message. The manifest is written last: `serve --model DEST` trusts it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

from r1_operator.api.contract import LOCK_FILE, MANIFEST_FILE, Exit, SplitName, cache_peak_bytes, parse_split
from r1_runtime.cache import merge as merging
from r1_runtime.cache.download import Downloader, FetchError, Listing, RemoteFile, list_variant, written_bytes
from r1_runtime.cache.files import CacheError, write_json_atomic
from r1_runtime.cache.progress import Progress, gib

FREE_BYTES_ENV = "R1_FETCH_FREE_BYTES"  # test injection of the free-space figure


def free_bytes(dest: Path) -> int:
    injected = os.environ.get(FREE_BYTES_ENV)
    return int(injected) if injected else shutil.disk_usage(dest).free


def _split_files(listing: Listing) -> list[tuple[RemoteFile, SplitName]]:
    return [(f, sp) for f in listing.files if (sp := parse_split(Path(f.path).name)) is not None]


def shard1(listing: Listing) -> RemoteFile | None:
    """The first shard of a split set, or None when the variant is not split."""
    return next((f for f, sp in _split_files(listing) if sp.no == 1), None)


def merged_path(dest: Path, listing: Listing) -> Path | None:
    """Where --merge puts the merged file: NAME.gguf next to NAME-00001-of-0000N.gguf (None if not a split set)."""
    first = shard1(listing)
    return dest / Path(first.path).with_name(parse_split(Path(first.path).name).merged) if first else None


def _merged_done(out: Path, listing: Listing) -> bool:
    marker = merging.marker_path(out)
    if not (out.is_file() and marker.is_file()):
        return False
    info = json.loads(marker.read_text())
    want = sorted((Path(f.path).name, f.size) for f, _ in _split_files(listing))
    have = sorted((s["file"], s["bytes"]) for s in info.get("shards", []))
    return info.get("bytes") == out.stat().st_size and want == have


def space_needed(dest: Path, listing: Listing, merge: bool, keep_shards: bool = False) -> tuple[int, int]:
    """(bytes still to write, bytes already on the volume): the contract's peak less what is already here."""
    have = 0
    for f in listing.files:
        final = dest / f.path
        if final.is_file() and final.stat().st_size == f.size:
            have += f.size
            continue
        have += written_bytes(final, f.size)
    out = merged_path(dest, listing) if merge else None
    if out is not None:  # an interrupted merge: its bytes come back as it resumes (merge.resumable_bytes)
        have += merging.resumable_bytes(out)
    peak = cache_peak_bytes(sum(f.size for f in listing.files), sum(f.size for f, _ in _split_files(listing)),
                            merge=merge and shard1(listing) is not None, keep_shards=keep_shards)
    return peak - have, have


def _merge_room(merge_to: Path | None, keep_shards: bool) -> str:
    if merge_to is None:
        return ""
    return ", plus the merged copy (--keep-shards)" if keep_shards else ", plus one merge window"


def fetch(repo: str, variant: str, dest: str | os.PathLike[str], *, revision: str | None = None,
          merge: bool = False, keep_shards: bool = False, endpoint: str | None = None,
          interval: float = 5.0, timeout: float = 60.0, connections: int = 8, stream=sys.stderr) -> dict:
    """Fetch the variant's files into dest (and merge a split set); return the final progress snapshot."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    with open(dest / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FetchError(f"{dest}: another fetch holds {LOCK_FILE}; wait for it to finish", Exit.RETRY) from None
        progress = Progress(dest, 0, interval, stream)
        try:
            return _fetch_locked(repo, variant, dest, revision, merge, keep_shards, endpoint, timeout, connections,
                                 progress)
        except CacheError as exc:
            progress.phase = exc.phase
            progress.emit(force=True, error=str(exc))
            raise
        finally:
            progress.close()


def _fetch_locked(repo, variant, dest: Path, revision, merge, keep_shards, endpoint, timeout, connections,
                  progress: Progress) -> dict:
    progress.set_phase("listing", repo)
    listing = list_variant(repo, variant, revision, endpoint)
    total = sum(f.size for f in listing.files)
    merge_to = merged_path(dest, listing) if merge else None
    summary = {"repo": repo, "variant": variant, "commit": listing.commit,
               "files": [f.path for f in listing.files]}
    if merge_to is not None and _merged_done(merge_to, listing):
        progress.set_phase("done", str(merge_to.relative_to(dest)), done=total, total=total)
        return progress.emit(force=True, **summary, model=str(merge_to), skipped=True)
    need, have = space_needed(dest, listing, merge_to is not None, keep_shards)
    free = free_bytes(dest)
    if need > free:
        raise FetchError(
            f"{dest}: not enough free space: need {gib(need)} more ({gib(total)} of files, {gib(have)} already "
            f"here{_merge_room(merge_to, keep_shards)}), {gib(free)} free. Grow the cache volume "
            f"(spec.cache.size) or free space, then run again", Exit.NO_SPACE, "no-space")
    progress.set_phase("downloading", done=0, total=total)
    todo = []
    for f in listing.files:
        final = dest / f.path
        if final.is_file() and final.stat().st_size == f.size:
            progress.add(f.size)
        else:
            todo.append((f, final))
    Downloader(listing, endpoint, progress, timeout, connections).fetch_all(todo)
    first = shard1(listing)
    model = dest / (first.path if first else listing.files[0].path)
    if merge_to is not None:
        progress.set_phase("merging", merge_to.name, done=0, total=total)
        info = merging.merge(dest / first.path, merge_to, keep_shards=keep_shards, progress=progress.add)
        summary["merged"] = {"sha256": info["sha256"], "bytes": info["bytes"]}
        model = merge_to
    # Written last: `serve --model DEST` trusts a manifest only once every file it names is complete.
    write_json_atomic(dest / MANIFEST_FILE, {**summary, "model": str(model.relative_to(dest)),
                                             "sizes": {f.path: f.size for f in listing.files},
                                             "sha256": {f.path: f.sha256 for f in listing.files}})
    progress.set_phase("done", str(model.relative_to(dest)), done=progress.total)
    return progress.emit(force=True, **summary, model=str(model))


def termination_message(snapshot: dict) -> str:
    """A short JSON (Kubernetes keeps 4096 bytes) for the pod's termination message."""
    keep = ("phase", "bytesDone", "bytesTotal", "percent", "model", "commit", "error")
    msg = json.dumps({k: snapshot[k] for k in keep if k in snapshot})
    return msg[:4000]

