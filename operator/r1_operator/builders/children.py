"""Which children to create, update, leave or delete, and why (pure): the desired objects against the live ones.

The Reconciler reads the live objects, asks these functions for one Step per child,
and executes the steps; nothing here talks to the API server.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from r1_operator.builders import names

Ref = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


def ref_of(obj: dict[str, Any]) -> Ref:
    m = obj["metadata"]
    return obj["apiVersion"], obj["kind"], m["namespace"], m["name"]


def version(obj: dict[str, Any]) -> str:
    """What moves when anyone changes the object: its generation, or resourceVersion for kinds without one."""
    m = obj.get("metadata") or {}
    return f"g{m['generation']}" if m.get("generation") else f"rv{m.get('resourceVersion')}"


@dataclass(frozen=True)
class Step:
    action: str  # create | own | update | leave | delete
    ref: Ref
    reason: str
    obj: dict[str, Any] | None = None  # the object to create or apply (with its applied-hash annotation)
    owner: dict[str, Any] | None = None  # for own: the owner reference to add


def with_digest(obj: dict[str, Any]) -> dict[str, Any]:
    """obj with the applied-hash annotation: the hash of the configuration, so a later read can tell it unchanged."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    meta = {**obj["metadata"], "annotations": {**(obj["metadata"].get("annotations") or {}), names.ANN_APPLIED: digest}}
    return {**obj, "metadata": meta}


def plan_owned(obj: dict[str, Any], live: dict[str, Any] | None, last_applied: str | None) -> Step:
    """A child owned by one R1Deployment: applied unless the live object is exactly what this process last applied.

    The live object must carry this configuration's hash and be unchanged since (last_applied is its version
    after our last apply): an edit by someone else, e.g. `kubectl scale`, is reverted."""
    obj = with_digest(obj)
    ref = ref_of(obj)
    if live is None:
        return Step("create", ref, "absent", obj)
    selector = (obj.get("spec") or {}).get("selector") if obj["kind"] == "Deployment" else None
    if selector is not None and (live.get("spec") or {}).get("selector") != selector:
        # immutable: the next reconcile creates it anew (a Deployment from before placements selected every pod)
        return Step("delete", ref, "its selector changed, which the API server cannot update")
    have = ((live.get("metadata") or {}).get("annotations") or {}).get(names.ANN_APPLIED)
    if have != obj["metadata"]["annotations"][names.ANN_APPLIED]:
        return Step("update", ref, "configuration changed", obj)
    if last_applied != version(live):
        return Step("update", ref, "changed since this operator last applied it (or not applied by this process)", obj)
    return Step("leave", ref, "as last applied")


def plan_shared(obj: dict[str, Any], live: dict[str, Any] | None, owner: dict[str, Any]) -> Step:
    """A child shared by several R1Deployments (cache PVC, fetch Job): created once, then each sharer adds itself."""
    ref = ref_of(obj)
    if live is None:
        return Step("create", ref, "absent", obj, owner)
    if owner["uid"] not in {o.get("uid") for o in (live.get("metadata") or {}).get("ownerReferences") or []}:
        return Step("own", ref, f"{owner['name']} is not among its owners yet", obj, owner)
    return Step("leave", ref, "exists and is owned")


def plan_absent(ref: Ref, live: dict[str, Any] | None, why: str) -> Step:
    """A child the spec turned off."""
    return Step("delete", ref, why) if live is not None else Step("leave", ref, "already absent")
