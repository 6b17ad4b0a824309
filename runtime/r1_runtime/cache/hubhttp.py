"""The hub's HTTP side of a fetch: each file resolved once to where its bytes are, and the hub's rate limits.

The hub answers `/resolve/` with a redirect to a signed URL on its storage (a CDN or object store) that holds
for a while (`X-Amz-Date` + `X-Amz-Expires`, or `Expires`). A file is resolved once and its byte ranges read
from that URL until it is about to expire (or its host says it has: 401/403/410), so a 212 GB set costs a few
hub requests, not one per 64 MiB range. The token goes to the hub only, never to the storage host.

A 429 (from the hub or the storage) is a wait, not a failure: `Retry-After` (seconds or an HTTP date), else the
`RateLimit` header's reset (`t=`/`reset=`), else `RateLimit-Reset`; it never spends a retry.
"""

from __future__ import annotations

import calendar
import email.utils
import re
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urljoin, urlparse

DEFAULT_LIFETIME_S = 600.0  # a redirect whose URL says nothing of its expiry is re-resolved this often
RENEW_BEFORE_S = 60.0  # re-resolve this long before a signed URL expires (at most a tenth of its life)
MAX_WAIT_S = 900.0  # the longest single rate-limit wait honoured (a hub asking for more is asked again then)
DEFAULT_WAIT_S = 30.0  # a 429 that names no wait
MAX_HOPS = 5


class RateLimited(Exception):
    def __init__(self, wait: float, source: str, where: str) -> None:
        super().__init__(f"{where} rate-limited the fetch: waiting {wait:.0f} s ({source})")
        self.wait, self.source, self.where = wait, source, where


class Expired(Exception):
    """The storage host refused a resolved URL (expired or revoked): resolve the file again."""


def retry_after(headers, now: float | None = None) -> tuple[float, str]:
    """(seconds to wait, which header said so) for a 429."""
    now = time.time() if now is None else now
    raw = headers.get("Retry-After")
    if raw:
        raw = raw.strip()
        if raw.isdigit():
            return min(float(raw), MAX_WAIT_S), f"Retry-After: {raw}"
        try:
            when = email.utils.parsedate_to_datetime(raw).timestamp()
            return min(max(when - now, 0.0), MAX_WAIT_S), f"Retry-After: {raw}"
        except (TypeError, ValueError):
            pass
    limit = headers.get("RateLimit")
    if limit:
        m = re.search(r"(?:^|[;,\s])(?:t|reset)=(\d+)", limit)
        if m:
            return min(float(m.group(1)), MAX_WAIT_S), f"RateLimit: {limit.strip()}"
    reset = headers.get("RateLimit-Reset") or headers.get("X-RateLimit-Reset")
    if reset and reset.strip().isdigit():
        n = float(reset.strip())
        wait = n - now if n > 1e9 else n  # an epoch, or seconds
        return min(max(wait, 0.0), MAX_WAIT_S), f"RateLimit-Reset: {reset.strip()}"
    return DEFAULT_WAIT_S, "no Retry-After: the default wait"


def expires_at(url: str, now: float | None = None) -> float:
    """When a signed URL stops working (epoch seconds), from its query; now + DEFAULT_LIFETIME_S when it says
    nothing."""
    now = time.time() if now is None else now
    q = {k.lower(): v[0] for k, v in parse_qs(urlparse(url).query).items()}
    if "x-amz-date" in q and "x-amz-expires" in q:
        try:
            start = calendar.timegm(time.strptime(q["x-amz-date"], "%Y%m%dT%H%M%SZ"))
            return start + float(q["x-amz-expires"])
        except (ValueError, OverflowError):
            pass
    if q.get("expires", "").isdigit():
        return float(q["expires"])
    return now + DEFAULT_LIFETIME_S


@dataclass
class Target:
    url: str
    on_hub: bool  # the hub serves the bytes itself: send the token
    expires: float  # epoch; float("inf") for the hub's own URL
    renew: float = 0.0  # epoch: resolve again from then on

    def __post_init__(self) -> None:
        if not self.renew:
            self.renew = self.expires - min(RENEW_BEFORE_S, max(self.expires - time.time(), 0.0) / 10)


class Resolver:
    """Where each file's bytes are, resolved once per signed URL's life and shared by the connections."""

    def __init__(self, session, headers: dict[str, str], timeout: float) -> None:
        self.session, self.headers, self.timeout = session, headers, timeout
        self._targets: dict[str, Target] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.resolves = 0  # hub requests made to resolve (for the benchmark and tests)

    def headers_for(self, t: Target) -> dict[str, str]:
        """The hub's headers (its token) for the hub; none of them for another host."""
        if t.on_hub:
            return dict(self.headers)
        return {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "cookie")}

    def forget(self, hub_url: str, t: Target) -> None:
        with self._guard:
            if self._targets.get(hub_url) is t:
                del self._targets[hub_url]

    def target(self, hub_url: str) -> Target:
        with self._guard:
            lock = self._locks.setdefault(hub_url, threading.Lock())
        with lock:  # one resolve per file at a time: the other connections wait for its answer
            t = self._targets.get(hub_url)
            if t is not None and t.renew > time.time():
                return t
            t = self._targets[hub_url] = self._resolve(hub_url)
            return t

    def _resolve(self, hub_url: str) -> Target:
        hub_host = urlparse(hub_url).netloc
        url = hub_url
        for _ in range(MAX_HOPS):
            self.resolves += 1
            r = self.session.head(url, headers=self.headers, follow_redirects=False, timeout=self.timeout)
            if r.status_code == 429:
                wait, source = retry_after(r.headers)
                raise RateLimited(wait, source, "the hub")
            if r.status_code in (301, 302, 303, 307, 308) and r.headers.get("Location"):
                nxt = urljoin(url, r.headers["Location"])
                if urlparse(nxt).netloc != hub_host or "/resolve/" not in urlparse(nxt).path:
                    return Target(nxt, False, expires_at(nxt))  # the storage: a CDN or object store, signed
                url = nxt  # a redirect within the hub (a renamed repo)
                continue
            if r.status_code >= 400:
                return Target(url, True, time.time() + DEFAULT_LIFETIME_S)  # the GET says why, as before
            return Target(url, True, float("inf"))
        raise OSError(f"{hub_url}: more than {MAX_HOPS} redirects within the hub")
