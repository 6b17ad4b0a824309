"""The variant's files on the hub, listed by huggingface_hub: paths, sizes, LFS sha256 and the commit."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from r1_operator.api.contract import Exit
from r1_runtime.cache.files import CacheError
from r1_runtime.cache.hubhttp import retry_after

MAX_LIST_WAIT_S = 1800.0  # rate-limit waits while listing, in all, before the fetch exits (a rerun resumes)


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
        info = _model_info(api, repo, revision, endpoint)
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


def _model_info(api, repo: str, revision: str | None, endpoint: str | None):
    """model_info, waiting out the hub's 429s (up to MAX_LIST_WAIT_S in all, never counted as failures); a hub
    that does not answer at all is a FetchError saying so (phase hub-unreachable, which the operator reports)."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import HfHubHTTPError

    waited = 0.0
    while True:
        try:
            return api.model_info(repo, revision=revision, files_metadata=True)
        except HfHubHTTPError as exc:
            response = getattr(exc, "response", None)
            if response is None or response.status_code != 429 or waited >= MAX_LIST_WAIT_S:
                raise
            wait, source = retry_after(response.headers)
            print(f"r1-runtime fetch: listing {repo}: the hub rate-limited it, waiting {wait:.0f} s ({source})",
                  file=sys.stderr, flush=True)
            time.sleep(wait)
            waited += wait
        except (OSError, httpx2.TransportError) as exc:  # refused, unresolvable, timed out: no answer at all
            raise FetchError(f"cannot reach the hub at {endpoint or 'huggingface.co'} to list {repo}: "
                             f"{type(exc).__name__}: {exc}; check HF_ENDPOINT (the chart's runtime.hubEndpoint), "
                             "DNS, and the egress from the fetch pod (a proxy: spec.scheduling.env HTTPS_PROXY)",
                             Exit.RETRY, "hub-unreachable") from None


def _status(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return f"HTTP {response.status_code}" if response is not None else type(exc).__name__


