"""A minimal JSON client of the dev cluster's API server (admin certificate), without the kubernetes package.

The bootstrap (nodes, namespaces) and the dev volume provisioner use it; the operator has its own client (k8s/).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from r1_operator.dev.pki import admin_ssl_context


def get_url(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class AdminApi:
    """Minimal JSON client (admin cert) for the bootstrap and the dev provisioner; no kubernetes package import."""

    def __init__(self, server: str, pki: Path) -> None:
        self.server = server
        self.ctx = admin_ssl_context(pki)

    def request(self, method: str, path: str, body: dict | None = None,
                content_type: str = "application/json") -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.ctx) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
