"""Writes to the API server: server-side apply of children, shared-child owner references, status.

Server-side apply makes every write idempotent and conflict-free: re-running a
reconcile after a crash converges on the same objects, never duplicates them.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "r1-operator"

_PLURALS = {
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "Service"): "services",
    ("v1", "ConfigMap"): "configmaps",
    ("batch/v1", "Job"): "jobs",
    ("apps/v1", "Deployment"): "deployments",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("r1.inference.dev/v1alpha1", "R1Deployment"): "r1deployments",
}


def object_path(api_version: str, kind: str, namespace: str, name: str = "") -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{_PLURALS[(api_version, kind)]}"
    return f"{path}/{name}" if name else path


def _call(api, method: str, path: str, body: Any = None, content_type: str = "application/json",
          query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """One request through the client's auth and TLS; HTTP errors raise ApiException with the server's message."""
    args = api.param_serialize(method, path, query_params=query or [], body=body, auth_settings=["BearerToken"],
                               header_params={"Content-Type": content_type, "Accept": "application/json"})
    resp = api.call_api(*args)
    raw = resp.read()
    if not 200 <= resp.status < 300:
        raise ApiException(status=resp.status, reason=resp.reason, http_resp=resp, body=raw.decode(errors="replace"))
    return json.loads(raw) if raw else {}


def apply(api, obj: dict[str, Any], manager: str = FIELD_MANAGER, force: bool = True) -> dict[str, Any]:
    """Server-side apply: create or update to exactly this configuration (fields owned by `manager`)."""
    m = obj["metadata"]
    path = object_path(obj["apiVersion"], obj["kind"], m["namespace"], m["name"])
    query = [("fieldManager", manager)] + ([("force", "true")] if force else [])
    return _call(api, "PATCH", path, obj, "application/apply-patch+yaml", query)


def get(api, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _call(api, "GET", object_path(api_version, kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def create_if_missing(api, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(object, created). A shared child keeps the spec of whoever created it first."""
    m = obj["metadata"]
    try:
        return _call(api, "POST", object_path(obj["apiVersion"], obj["kind"], m["namespace"]), obj), True
    except ApiException as exc:
        if exc.status != 409:
            raise
    found = get(api, obj["apiVersion"], obj["kind"], m["namespace"], m["name"])
    if found is None:  # deleted between the two calls; the next reconcile creates it
        raise ApiException(status=409, reason=f"{obj['kind']} {m['name']} is being deleted")
    return found, False


def own_shared(api, obj: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """Add one R1Deployment's owner reference to a shared child, under a field manager of its own.

    Each sharer applies only its own entry, so sharers never remove each other's;
    the garbage collector deletes the child when the last owner is gone.
    """
    m = obj["metadata"]
    cfg = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
           "metadata": {"name": m["name"], "namespace": m["namespace"], "ownerReferences": [owner]}}
    return apply(api, cfg, manager=f"{FIELD_MANAGER}-{owner['uid'][:18]}", force=True)


def disown_shared(api, api_version: str, kind: str, namespace: str, name: str, owner_uid: str) -> None:
    """Drop one owner's entry (its manager applies an empty configuration); no-op when the child is gone."""
    cfg = {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}}
    if get(api, api_version, kind, namespace, name) is None:
        return
    apply(api, cfg, manager=f"{FIELD_MANAGER}-{owner_uid[:18]}", force=True)


def annotate(api, api_version: str, kind: str, namespace: str, name: str, annotations: dict[str, str]) -> None:
    _call(api, "PATCH", object_path(api_version, kind, namespace, name),
          {"metadata": {"annotations": annotations}}, "application/merge-patch+json")


def delete(api, api_version: str, kind: str, namespace: str, name: str) -> bool:
    try:
        _call(api, "DELETE", object_path(api_version, kind, namespace, name), {"propagationPolicy": "Background"})
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def replace_status(api, group: str, version: str, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Set the whole status (a JSON patch `add` replaces it), so fields the builder dropped do not linger."""
    path = f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/status"
    _call(api, "PATCH", path, [{"op": "add", "path": "/status", "value": status}], "application/json-patch+json")


def crd_exists(api, name: str) -> bool:
    try:
        _call(api, "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        return True
    except ApiException as exc:
        if exc.status in (403, 404):
            return False
        raise


def post_event(api, obj: dict[str, Any], type_: str, reason: str, message: str, component: str,
               instance: str, now: str) -> None:
    """A core/v1 Event on the object (what `kubectl describe` and `kubectl get events` show)."""
    m = obj["metadata"]
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{m['name']}.", "namespace": m["namespace"]},
        "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": m["name"],
                           "namespace": m["namespace"], "uid": m["uid"]},
        "type": type_, "reason": reason, "message": message[:1024], "count": 1,
        "firstTimestamp": now, "lastTimestamp": now, "source": {"component": component},
        "reportingComponent": component, "reportingInstance": instance[:128],
    }
    _call(api, "POST", f"/api/v1/namespaces/{m['namespace']}/events", event)
