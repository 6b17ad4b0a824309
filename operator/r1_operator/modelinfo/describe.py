"""ModelFacts from GGUF files: a local file or split set, or a remote one read with HTTP range requests."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from r1_operator.api.contract import parse_split
from r1_operator.api.gguf_header import GGUFError, GGUFHeader, read_header, read_local
from r1_operator.planning.model import ModelFacts, facts_from_gguf

def set_paths(any_shard: Path) -> list[Path]:
    """Every file of the split set any_shard belongs to, or [any_shard] when it is not split."""
    split = parse_split(any_shard.name)
    return [any_shard.with_name(n) for n in split.names()] if split else [any_shard]


def facts_from_headers(headers: list[GGUFHeader], sizes: list[int], name: str | None = None) -> ModelFacts:
    """Check that the headers form one consistent split set and describe it."""
    first = headers[0]
    count = int(first.kv.get("split.count", 1))  # type: ignore[arg-type]
    if count != len(headers):
        raise GGUFError(f"{first.source}: split.count is {count} but {len(headers)} shard(s) were found")
    expected_tensors = int(first.kv.get("split.tensors.count", len(first.tensors)))  # type: ignore[arg-type]
    for i, h in enumerate(headers):
        if int(h.kv.get("split.no", 0)) != i:  # type: ignore[arg-type]
            raise GGUFError(f"{h.source}: split.no is {h.kv.get('split.no')}, expected {i}")
        if int(h.kv.get("split.count", 1)) != count:  # type: ignore[arg-type]
            raise GGUFError(f"{h.source}: split.count {h.kv.get('split.count')} disagrees with shard 1 ({count})")
    tensors = [t for h in headers for t in h.tensors]
    if len(tensors) != expected_tensors:
        raise GGUFError(f"{first.source}: split.tensors.count is {expected_tensors} but the shards hold {len(tensors)}")
    try:
        return facts_from_gguf(first.kv, tensors, sum(sizes), n_shards=len(headers), name=name)
    except ValueError as exc:
        raise GGUFError(f"{first.source}: {exc}") from None


def describe_local(path: str | os.PathLike[str], name: str | None = None) -> ModelFacts:
    p = Path(path)
    paths = set_paths(p)
    if len(paths) == 1 and not p.is_file():
        raise GGUFError(f"{p}: no such file")
    missing = [str(x) for x in paths if not x.is_file()]
    if missing:
        raise GGUFError(f"{p}: missing shard(s): {', '.join(missing)}")
    headers = [read_local(str(x)) for x in paths]
    return facts_from_headers(headers, [x.stat().st_size for x in paths], name=name)


def _http_reader(url: str, token: str | None) -> tuple[Callable[[int, int], bytes], list[int]]:
    size: list[int] = []

    def read(offset: int, n: int) -> bytes:
        req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-{offset + n - 1}"})
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                if r.status != 206:
                    raise GGUFError(f"{url}: server ignored the Range request (HTTP {r.status}); cannot read the header alone")
                total = r.headers.get("Content-Range", "").rpartition("/")[2]
                if total.isdigit() and not size:
                    size.append(int(total))
                return r.read()
        except urllib.error.HTTPError as e:
            if e.code == 416:
                return b""
            raise GGUFError(f"{url}: HTTP {e.code} reading bytes {offset}-{offset + n - 1}") from None
        except urllib.error.URLError as e:
            raise GGUFError(f"{url}: {e.reason}") from None

    return read, size


def describe_remote(repo: str, files: list[str], revision: str = "main", endpoint: str | None = None,
                    token: str | None = None, name: str | None = None) -> ModelFacts:
    """Describe a model on a Hugging Face-compatible hub from its shard headers (HTTP range requests)."""
    base = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    token = token if token is not None else os.environ.get("HF_TOKEN")
    headers, sizes = [], []
    for f in sorted(files):
        url = f"{base}/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{urllib.parse.quote(f)}"
        read, size = _http_reader(url, token)
        headers.append(read_header(read, url))
        sizes.append(size[0] if size else 0)
    return facts_from_headers(headers, sizes, name=name)
