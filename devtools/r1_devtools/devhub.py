"""A small Hugging Face-compatible hub that serves model repos from a local directory.

It exists for tests, benchmarks and the demo, where the real hub cannot be
reached. It implements what `huggingface_hub` and `r1-runtime fetch` call:

- ``GET /api/models/{repo}[/revision/{rev}]`` with LFS sha256 and sizes per file
  (``?blobs=true`` in huggingface_hub's ``model_info``),
- ``GET /api/models/{repo}/tree/{rev}`` (snapshot_download's file listing),
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``,
  ``X-Linked-Etag``, ``X-Linked-Size``, ``ETag`` and ``Range`` requests (206).

A repo is a directory ``ROOT/{org}/{name}``; every file is treated as an LFS
file. The commit id is derived from the file names and hashes, so it changes
when the content does. For tests it counts the bytes served per file
(``GET /_stats``) and can corrupt a byte of a file for its first N downloads (fault
injection, ``POST /_faults``). It can cap throughput per connection (``--conn-rate``, each
response) and in total (``--total-rate``, all responses together), in bytes per second: real
CDNs cap a single connection well below a node's link, and these caps stand in for that, so
what parallel connections gain can be measured here. olah was considered and
not used: its local-repo mode reads whole LFS files into memory per request,
hashes the whole file on every HEAD, and ignores ``Range``, so no resumed
download could be shown against it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

_REPO = r"(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)"
_INFO_RE = re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$")
_TREE_RE = re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE_RE = re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN_RE = re.compile(rf"^/_cdn/{_REPO}/(?P<rev>[^/]+)/(?P<path>.+)$")


class Hub:
    """State shared by the request handlers: repos, hashes, byte counters and faults."""

    def __init__(self, root: Path, token: str | None = None, throttle_bps: int = 0, total_bps: int = 0):
        self.root = Path(root)
        self.token = token
        self.throttle_bps = throttle_bps  # per connection (each response)
        self.total_bps = total_bps  # all responses together
        self._next_send = 0.0  # the total cap's clock: when the next byte may go
        self.lock = threading.Lock()
        self.served: dict[str, int] = {}
        self.requests: list[dict] = []
        self.corrupt: dict[str, int] = {}  # "repo/path" -> downloads left to corrupt
        self._hashes: dict[tuple[str, float, int], str] = {}
        # A CDN, simulated (cdn_ttl > 0): /resolve/ redirects to a signed /_cdn/ URL that expires after cdn_ttl s.
        self.cdn_ttl = 0.0
        self._key = secrets.token_bytes(16)
        # The hub's rate limit, simulated (rate_limit = (N, window s)): API and resolve requests beyond N in a
        # window get 429 with Retry-After and RateLimit; /_cdn/ is not limited, as a CDN is not.
        self.rate_limit: tuple[int, float] | None = None
        self._window = (0.0, 0)  # (window start, requests in it)
        self.counts = {"resolves": 0, "limited": 0, "cdn": 0, "expired": 0}
        self.revoke = 0  # fault: the next N storage requests are refused as expired, whatever their signature

    def files(self, repo: str) -> list[Path]:
        base = self.root / repo
        if not base.is_dir():
            return []
        return sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_mtime, st.st_size)
        with self.lock:
            if key in self._hashes:
                return self._hashes[key]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        with self.lock:
            self._hashes[key] = h.hexdigest()
        return self._hashes[key]

    def commit(self, repo: str) -> str:
        h = hashlib.sha1(repo.encode())
        for p in self.files(repo):
            h.update(f"{p.relative_to(self.root / repo)}:{self.sha256(p)}\n".encode())
        return h.hexdigest()

    def info(self, repo: str) -> dict:
        siblings = []
        for p in self.files(repo):
            size = p.stat().st_size
            siblings.append({
                "rfilename": str(p.relative_to(self.root / repo)),
                "size": size,
                "blobId": hashlib.sha1(p.name.encode()).hexdigest(),
                "lfs": {"sha256": self.sha256(p), "size": size, "pointerSize": 134},
            })
        return {"id": repo, "modelId": repo, "sha": self.commit(repo), "private": False, "siblings": siblings}

    def take(self, n: int) -> float:
        """Reserve n bytes of the total cap; return how long to wait before sending them."""
        if not self.total_bps:
            return 0.0
        with self.lock:
            now = time.monotonic()
            start = max(now, self._next_send)
            self._next_send = start + n / self.total_bps
            return start - now

    def count(self, key: str, n: int) -> None:
        with self.lock:
            self.served[key] = self.served.get(key, 0) + n

    def stats(self) -> dict:
        with self.lock:
            return {"served": dict(self.served), "requests": list(self.requests), **self.counts}

    def sign(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}|{expires}".encode(), "sha256").hexdigest()[:32]

    def limited(self) -> float:
        """0 when a hub request may go now, else the seconds until the window resets (the request is refused)."""
        if not self.rate_limit:
            return 0.0
        n, window = self.rate_limit
        with self.lock:
            now = time.monotonic()
            start, count = self._window
            if now - start >= window:
                start, count = now, 0
            if count >= n:
                self.counts["limited"] += 1
                self._window = (start, count)
                return max(window - (now - start), 0.001)
            self._window = (start, count + 1)
            return 0.0


class _Handler(BaseHTTPRequestHandler):
    hub: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def _json(self, status: int, body: dict | list, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _authorized(self) -> bool:
        if not self.hub.token:
            return True
        if self.headers.get("Authorization") == f"Bearer {self.hub.token}":
            return True
        self._error(401, "Invalid credentials in Authorization header", "GatedRepo")
        return False

    def do_POST(self):  # noqa: N802 - http.server naming
        url = urlparse(self.path)
        if url.path == "/_faults":
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with self.hub.lock:
                self.hub.corrupt.update({k: int(v) for k, v in body.get("corrupt", {}).items()})
                if "throttle_bps" in body:
                    self.hub.throttle_bps = int(body["throttle_bps"])
                if "total_bps" in body:
                    self.hub.total_bps = int(body["total_bps"])
                if "cdn_ttl" in body:
                    self.hub.cdn_ttl = float(body["cdn_ttl"])
                if "revoke" in body:
                    self.hub.revoke = int(body["revoke"])
                if "rate_limit" in body:
                    self.hub.rate_limit = tuple(body["rate_limit"]) if body["rate_limit"] else None
            return self._json(200, {"ok": True})
        if url.path == "/_reset":
            with self.hub.lock:
                self.hub.served.clear()
                self.hub.requests.clear()
                self.hub.corrupt.clear()
                self.hub.counts = dict.fromkeys(self.hub.counts, 0)
            return self._json(200, {"ok": True})
        self._error(404, "not found", "EntryNotFound")

    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def do_GET(self):  # noqa: N802
        url = urlparse(self.path)
        path = unquote(url.path)
        if path == "/_stats":
            return self._json(200, self.hub.stats())
        if path == "/health":
            return self._json(200, {"ok": True})
        if m := _CDN_RE.match(path):
            return self._cdn(m, path, url.query)
        if wait := self.hub.limited():
            secs = max(int(wait + 0.999), 1)
            return self._json(429, {"error": "You have been rate-limited"},
                              {"Retry-After": str(secs), "RateLimit": f'"resolvers";r=0;t={secs}'})
        if not self._authorized():
            return None
        if m := _INFO_RE.match(path):
            return self._info(m.group("repo"), m.group("rev"))
        if m := _TREE_RE.match(path):
            return self._tree(m.group("repo"), m.group("rev"), m.group("path") or "")
        if m := _RESOLVE_RE.match(path):
            return self._resolve(m.group("repo"), m.group("rev"), m.group("path"))
        return self._error(404, f"{path} not found", "EntryNotFound")

    def _check_rev(self, repo: str, rev: str | None) -> bool:
        if not self.hub.files(repo):
            self._error(404, f"Repository {repo} not found", "RepoNotFound")
            return False
        if rev not in (None, "main", self.hub.commit(repo)):
            self._error(404, f"Revision {rev} not found in {repo}", "RevisionNotFound")
            return False
        return True

    def _info(self, repo: str, rev: str | None) -> None:
        if self._check_rev(repo, rev):
            self._json(200, self.hub.info(repo))

    def _tree(self, repo: str, rev: str, prefix: str) -> None:
        if not self._check_rev(repo, rev):
            return
        entries = [{"type": "file", "oid": s["blobId"], "size": s["size"], "path": s["rfilename"],
                    "lfs": {"oid": s["lfs"]["sha256"], "size": s["size"], "pointerSize": 134}}
                   for s in self.hub.info(repo)["siblings"] if s["rfilename"].startswith(prefix)]
        self._json(200, entries)

    def _cdn(self, m: re.Match, path: str, query: str) -> None:
        q = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        expires = int(q.get("Expires", "0")) if q.get("Expires", "").isdigit() else 0
        with self.hub.lock:
            revoked = self.hub.revoke > 0
            self.hub.revoke -= revoked
        if revoked or not hmac.compare_digest(q.get("Signature", ""), self.hub.sign(path, expires)) \
                or expires < time.time():
            with self.hub.lock:
                self.hub.counts["expired"] += 1
            return self._error(403, "Request has expired", "AccessDenied")
        with self.hub.lock:
            self.hub.counts["cdn"] += 1
        return self._resolve(m.group("repo"), m.group("rev"), m.group("path"), cdn=True)

    def _resolve(self, repo: str, rev: str, rel: str, cdn: bool = False) -> None:
        if not self._check_rev(repo, rev):
            return
        if not cdn:
            with self.hub.lock:
                self.hub.counts["resolves"] += 1
        if self.hub.cdn_ttl and not cdn:  # to the CDN, signed, as the hub sends LFS files to its storage
            expires = int(time.time() + self.hub.cdn_ttl)
            target = f"/_cdn/{repo}/{self.hub.commit(repo)}/{rel}"
            self.send_response(302)
            self.send_header("Location", f"{target}?Expires={expires}&Signature={self.hub.sign(target, expires)}")
            self.send_header("X-Repo-Commit", self.hub.commit(repo))
            self.send_header("X-Linked-Etag", f'"{self.hub.sha256((self.hub.root / repo / rel))}"')
            self.send_header("X-Linked-Size", str((self.hub.root / repo / rel).stat().st_size))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        base = (self.hub.root / repo).resolve()
        file = (base / rel).resolve()
        if base not in file.parents or not file.is_file():
            return self._error(404, f"{rel} not found in {repo}", "EntryNotFound")
        size = file.stat().st_size
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng and (m := re.match(r"^bytes=(\d+)-(\d*)$", rng.strip())):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            status = 206
        digest = self.hub.sha256(file)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{digest}"')
        self.send_header("X-Repo-Commit", self.hub.commit(repo))
        self.send_header("X-Linked-Etag", f'"{digest}"')
        self.send_header("X-Linked-Size", str(size))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return None
        key = f"{repo}/{rel}"
        with self.hub.lock:  # a fault flips the middle byte: it counts only for a request whose range holds it
            corrupt = self.hub.corrupt.get(key, 0) > 0 and start <= size // 2 <= end
            if corrupt:
                self.hub.corrupt[key] -= 1
            record = {"file": key, "start": start, "end": end, "bytes": 0, "corrupted": corrupt}
            self.hub.requests.append(record)
        self._send_body(file, key, start, end, size, corrupt, record)
        return None

    def _send_body(self, file: Path, key: str, start: int, end: int, size: int, corrupt: bool, record: dict) -> None:
        flip_at = size // 2
        chunk = 64 << 10
        pos = start
        began = time.monotonic()
        with open(file, "rb") as f:
            f.seek(start)
            while pos <= end:
                data = f.read(min(chunk, end - pos + 1))
                if not data:
                    break
                wait = self.hub.take(len(data))
                if wait > 0:
                    time.sleep(wait)
                if corrupt and pos <= flip_at < pos + len(data):
                    i = flip_at - pos
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    return
                pos += len(data)
                self.hub.count(key, len(data))
                with self.hub.lock:
                    record["bytes"] += len(data)
                bps = self.hub.throttle_bps
                if bps:
                    ahead = (pos - start) / bps - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)


def serve(root: Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
          throttle_bps: int = 0, total_bps: int = 0, cdn_ttl: float = 0.0,
          rate_limit: tuple[int, float] | None = None) -> tuple[ThreadingHTTPServer, Hub]:
    """Start the hub in a background thread; return (server, hub). server.server_address has the port."""
    hub = Hub(root, token=token, throttle_bps=throttle_bps, total_bps=total_bps)
    hub.cdn_ttl, hub.rate_limit = cdn_ttl, rate_limit
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="devhub").start()
    return server, hub


@contextlib.contextmanager
def running(root: Path, host: str = "127.0.0.1", advertise: str | None = None,
            **kwargs) -> Iterator[tuple[str, Hub]]:
    """serve() for the length of a with-block: yields (its endpoint URL, at `advertise` or host, and the hub), then
    shuts the server down."""
    server, hub = serve(root, host, **kwargs)
    try:
        yield f"http://{advertise or host}:{server.server_address[1]}", hub
    finally:
        server.shutdown()
        server.server_close()
