"""`r1-dev hub`: the dev hub (r1_devtools.devhub) from the command line, with its caps and modes."""

from __future__ import annotations

import argparse
import json
import re
import threading
from pathlib import Path

from r1_devtools.devhub import __doc__ as HUB_DOC
from r1_devtools.devhub import serve


def rate(text: str) -> int:
    """Bytes per second: 25M is 25,000,000 (K, M, G are powers of 1000; Ki, Mi, Gi of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate: give bytes per second, e.g. 25M or 1.5Gi")
    unit = m.group(2) or ""
    scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}[unit]
    return int(float(m.group(1)) * scale)


def limit(text: str) -> tuple[int, float]:
    """N/SECONDS: at most N requests per window of SECONDS."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)s?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate limit: give N/SECONDS, e.g. 10/60")
    return int(m.group(1)), float(m.group(2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="r1-dev hub", description=HUB_DOC.split("\n\n")[0])
    p.add_argument("root", help="directory holding ORG/NAME/ repos")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--token", help="require this bearer token")
    p.add_argument("--conn-rate", "--throttle-bps", dest="conn_rate", type=rate, default=0,
                   help="cap each connection (response) at this many bytes/s, with K/M/G suffixes (0: none)")
    p.add_argument("--total-rate", type=rate, default=0,
                   help="cap all connections together at this many bytes/s, with K/M/G suffixes (0: none)")
    p.add_argument("--cdn-ttl", type=float, default=0.0, help="redirect downloads to signed URLs that expire after "
                   "this many seconds, as the hub sends LFS files to its CDN (0: serve them directly)")
    p.add_argument("--rate-limit", type=limit, default=None, metavar="N/SECONDS",
                   help="answer API and resolve requests beyond N per window with 429, Retry-After and RateLimit")
    args = p.parse_args(argv)
    server, _ = serve(Path(args.root), args.host, args.port, args.token, args.conn_rate, args.total_rate,
                      args.cdn_ttl, args.rate_limit)
    host, port = server.server_address[:2]
    print(json.dumps({"endpoint": f"http://{host}:{port}"}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0
