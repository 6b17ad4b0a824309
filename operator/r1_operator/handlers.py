"""kopf handlers: thin. Each reads what changed and calls the Reconciler; indexes keep the inventory in memory."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import os
from typing import Any

import kopf

from r1_operator import metrics
from r1_operator.api.types import GROUP, PLURAL, VERSION
from r1_operator.builders import names
from r1_operator.builders.settings import OperatorSettings
from r1_operator.k8s.inventory import api_client
from r1_operator.reconcile import Inventory, Reconciler

R1D = (GROUP, VERSION, PLURAL)
MANAGED = {"app.kubernetes.io/managed-by": names.MANAGED_BY}
_SETTINGS = OperatorSettings.from_env()
_STATE: dict[str, Reconciler] = {}


def _node_essentials(body: Any) -> dict[str, Any]:
    meta, st = body.get("metadata") or {}, body.get("status") or {}
    return {"metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})},
            "spec": {"unschedulable": (body.get("spec") or {}).get("unschedulable", False),
                     "taints": list((body.get("spec") or {}).get("taints") or [])},
            "status": {"allocatable": dict(st.get("allocatable") or {}), "capacity": dict(st.get("capacity") or {}),
                       "conditions": [dict(c) for c in st.get("conditions") or [] if c.get("type") == "Ready"]}}


@kopf.index("", "v1", "nodes")
def nodes_index(name: str, body: Any, **_: Any) -> dict[Any, Any]:
    return {None: _node_essentials(body)}


def _holds_gpu(spec: Any, **_: Any) -> bool:
    for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
        res = c.get("resources") or {}
        if any("gpu" in key for part in ("limits", "requests") for key in (res.get(part) or {})):
            return True
    return False


@kopf.index("", "v1", "pods", when=_holds_gpu)
def gpu_pods_index(body: Any, **_: Any) -> dict[Any, Any]:
    meta = body.get("metadata") or {}
    return {None: {"metadata": {"uid": meta.get("uid"), "namespace": meta.get("namespace"),
                                "labels": dict(meta.get("labels") or {})},
                   "spec": {"nodeName": (body.get("spec") or {}).get("nodeName"),
                            "containers": [{"resources": dict(c.get("resources") or {})}
                                           for c in (body.get("spec") or {}).get("containers") or []]},
                   "status": {"phase": (body.get("status") or {}).get("phase")}}}


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, nodes_index: kopf.Index, gpu_pods_index: kopf.Index, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP,
                                                                           key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our own events describe transitions; kopf's per-handler ones are noise
    settings.posting.reporting_component = names.MANAGED_BY
    settings.posting.reporting_instance = os.environ.get("POD_NAME", "r1-operator")
    settings.execution.max_workers = int(os.environ.get("R1_WORKERS", "16"))
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.peering.lifetime = int(os.environ.get("R1_PEERING_LIFETIME", "30"))
    api = api_client(os.environ.get("R1_KUBECONFIG") or None)
    inv = Inventory(nodes=lambda: list(nodes_index.get(None, [])), pods=lambda: list(gpu_pods_index.get(None, [])))
    _STATE["r"] = Reconciler(api=api, settings=_SETTINGS, inventory=inv)


@kopf.on.create(*R1D)
@kopf.on.update(*R1D)
@kopf.on.resume(*R1D)
def reconcile(body: Any, **_: Any) -> None:
    _STATE["r"].reconcile(_plain(body))


@kopf.index(*R1D)
def r1d_index(namespace: str, name: str, **_: Any) -> dict[Any, Any]:
    return {None: (namespace, name)}


def _inventory_digest(nodes: kopf.Index, pods: kopf.Index) -> str:
    """What a plan depends on, without the heartbeats that change every few seconds."""
    shape = sorted(
        (n["metadata"]["name"], sorted(n["metadata"]["labels"].items()), n["spec"]["unschedulable"],
         json.dumps(n["spec"]["taints"], sort_keys=True), sorted(n["status"]["allocatable"].items()),
         [c.get("status") for c in n["status"]["conditions"]])
        for n in nodes.get(None, []))
    held = sorted((p["metadata"]["uid"], p["spec"]["nodeName"] or "", p["status"]["phase"] or "")
                  for p in pods.get(None, []))
    return hashlib.sha256(json.dumps([shape, held], default=str).encode()).hexdigest()


async def _replan_loop(index: kopf.Index, nodes: kopf.Index, pods: kopf.Index) -> None:
    """Nodes change without touching the R1Deployments: re-check every plan when the inventory changed,
    and all of them every R1_RESYNC_INTERVAL_S regardless (a safety net for missed events).

    A loop of our own rather than a kopf timer: kopf puts a finalizer on resources
    with timers, and garbage collection already removes every child.
    """
    loop = asyncio.get_running_loop()
    last, last_full = "", loop.time()
    while True:
        await asyncio.sleep(_SETTINGS.replan_interval_s)
        digest = _inventory_digest(nodes, pods)
        if digest == last and loop.time() - last_full < _SETTINGS.resync_interval_s:
            continue
        last, last_full = digest, loop.time()
        for namespace, name in list(index.get(None, [])):
            try:
                await loop.run_in_executor(None, _STATE["r"].replan, namespace, name)
            except Exception as exc:  # one deployment's failure must not stop the others' checks
                logging.getLogger("r1_operator").warning("re-plan of %s/%s failed: %s", namespace, name, exc)


@kopf.on.startup()
async def start_replan_loop(r1d_index: kopf.Index, nodes_index: kopf.Index, gpu_pods_index: kopf.Index,
                            memo: kopf.Memo, **_: Any) -> None:
    memo.replan_task = asyncio.create_task(_replan_loop(r1d_index, nodes_index, gpu_pods_index))


@kopf.on.cleanup()
async def stop_replan_loop(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("replan_task")
    if task:
        task.cancel()


_SEEN: dict[str, str] = {}  # child uid → digest of the fields that matter to status


def _news(body: Any, type: str | None, summary: Any) -> bool:
    """True when a child that feeds the status was deleted, or its summary changed since its last event.
    Metadata never counts: a shared Job gains an owner reference per R1Deployment, which must not refresh
    every sharer."""
    uid = (body.get("metadata") or {}).get("uid", "")
    if type == "DELETED":
        _SEEN.pop(uid, None)
        return True
    digest = hashlib.sha256(json.dumps(summary, sort_keys=True, default=str).encode()).hexdigest()
    if _SEEN.get(uid) == digest:
        return False
    if len(_SEEN) > 100_000:
        _SEEN.clear()
    _SEEN[uid] = digest
    return True


def _conditions(status: Any) -> list:
    return sorted((c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or [])


def _owners(body: Any) -> list[str]:
    return [ref["name"] for ref in (body.get("metadata") or {}).get("ownerReferences") or []
            if ref.get("kind") == "R1Deployment" and ref.get("apiVersion") == f"{GROUP}/{VERSION}"]


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
def job_changed(body: Any, namespace: str, type: str | None, **_: Any) -> None:
    st = body.get("status") or {}
    if _news(body, type, [st.get("active"), st.get("succeeded"), st.get("failed"), _conditions(st)]):
        for owner in _owners(body):
            _STATE["r"].refresh(namespace, owner)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def deployment_changed(body: Any, namespace: str, type: str | None, **_: Any) -> None:
    st, meta = body.get("status") or {}, body.get("metadata") or {}
    summary = [(body.get("spec") or {}).get("replicas"), st.get("replicas"), st.get("readyReplicas"),
               st.get("updatedReplicas"), (st.get("observedGeneration") or 0) >= (meta.get("generation") or 0),
               _conditions(st)]
    if _news(body, type, summary):
        for owner in _owners(body):
            _STATE["r"].refresh(namespace, owner)


@kopf.on.event("", "v1", "pods", labels={"app.kubernetes.io/component": "runtime", **MANAGED})
def runtime_pod_changed(body: Any, namespace: str, labels: Any, type: str | None, **_: Any) -> None:
    # Readiness reaches the Deployment status too; pods add why they wait (Unschedulable, CrashLoopBackOff).
    st = body.get("status") or {}
    waiting = [((c.get("state") or {}).get("waiting") or {}).get("reason") for c in st.get("containerStatuses") or []]
    if _news(body, type, [st.get("phase"), _conditions(st), waiting]) and type in ("ADDED", "MODIFIED") \
            and labels.get(names.LABEL_DEPLOYMENT):
        _STATE["r"].refresh(namespace, labels[names.LABEL_DEPLOYMENT])


@kopf.on.event(*R1D)
def deleted(type: str | None, name: str, namespace: str, **_: Any) -> None:
    # Children go with their owner references (garbage collection); only in-memory state is ours to drop.
    if type == "DELETED":
        _STATE["r"].forget(namespace, name)
        metrics.forget(namespace, name)


def _plain(body: Any) -> dict[str, Any]:
    return copy.deepcopy({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec", "status")})
