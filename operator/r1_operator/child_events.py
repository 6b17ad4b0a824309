"""Which child events matter to an R1Deployment's status: a digest per child of the fields its status reads.

A child event refreshes its owners only when that summary changed (or the child was deleted):
metadata never counts, because a shared Job gains an owner reference per R1Deployment, which
must not refresh every sharer.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from r1_operator.api.types import GROUP, VERSION

_LIMIT = 100_000  # children remembered before the memory starts over (each forgotten child refreshes once)


def _conditions(status: Any) -> list:
    return sorted((c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or [])


def job_summary(body: Any) -> list:
    st = body.get("status") or {}
    return [st.get("active"), st.get("succeeded"), st.get("failed"), _conditions(st)]


def deployment_summary(body: Any) -> list:
    st, meta = body.get("status") or {}, body.get("metadata") or {}
    return [(body.get("spec") or {}).get("replicas"), st.get("replicas"), st.get("readyReplicas"),
            st.get("updatedReplicas"), (st.get("observedGeneration") or 0) >= (meta.get("generation") or 0),
            _conditions(st)]


def pod_summary(body: Any) -> list:
    # Readiness reaches the Deployment status too; pods add why they wait (Unschedulable, CrashLoopBackOff) and
    # how their containers last ended (OOMKilled, an exit code): a restart the Deployment's status never shows.
    st = body.get("status") or {}
    waiting = [((c.get("state") or {}).get("waiting") or {}).get("reason") for c in st.get("containerStatuses") or []]
    ended = [(c.get("restartCount"), ((c.get("lastState") or {}).get("terminated") or {}).get("reason"),
              ((c.get("state") or {}).get("terminated") or {}).get("reason"))
             for c in st.get("containerStatuses") or []]
    return [st.get("phase"), _conditions(st), waiting, ended]


def owners(body: Any) -> list[str]:
    """Names of the R1Deployments that own this child."""
    return [ref["name"] for ref in (body.get("metadata") or {}).get("ownerReferences") or []
            if ref.get("kind") == "R1Deployment" and ref.get("apiVersion") == f"{GROUP}/{VERSION}"]


class ChildEvents:
    """child uid → digest of its last summary."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def news(self, body: Any, event_type: str | None, summary: Any) -> bool:
        """True when the child was deleted, or its summary changed since its last event."""
        uid = (body.get("metadata") or {}).get("uid", "")
        if event_type == "DELETED":
            self._seen.pop(uid, None)
            return True
        digest = hashlib.sha256(json.dumps(summary, sort_keys=True, default=str).encode()).hexdigest()
        if self._seen.get(uid) == digest:
            return False
        if len(self._seen) > _LIMIT:
            self._seen.clear()
        self._seen[uid] = digest
        return True
