"""kopf handlers: each reads what changed and calls the Reconciler kept in kopf's memo; indexes hold the inventory.

Indexes are keyed by meaning: Nodes and GPU-holding pods by node name, R1Deployments by namespace.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import kopf

from r1_operator import metrics
from r1_operator.api.types import GROUP, PLURAL, VERSION
from r1_operator.builders import names
from r1_operator.child_events import ChildEvents, deployment_summary, job_summary, owners, pod_summary
from r1_operator import readiness
from r1_operator.k8s.client import api_client, check_api
from r1_operator.k8s.podwatch import GpuPodWatch
from r1_operator.planning.inventory import gpu_pod, holds_gpu
from r1_operator.reconcile import OPTIONAL_CRDS, Inventory, Reconciler
from r1_operator.replan import replan_loop
from r1_operator.settings import OperatorSettings

R1D = (GROUP, VERSION, PLURAL)
MANAGED = {"app.kubernetes.io/managed-by": names.MANAGED_BY}


def _node_essentials(body: Any) -> dict[str, Any]:
    meta, st = body.get("metadata") or {}, body.get("status") or {}
    return {"metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})},
            "spec": {"unschedulable": (body.get("spec") or {}).get("unschedulable", False),
                     "taints": list((body.get("spec") or {}).get("taints") or [])},
            "status": {"allocatable": dict(st.get("allocatable") or {}), "capacity": dict(st.get("capacity") or {}),
                       "conditions": [dict(c) for c in st.get("conditions") or [] if c.get("type") == "Ready"]}}


@kopf.index("", "v1", "nodes")
def nodes_index(name: str, body: Any, **_: Any) -> dict[Any, Any]:
    return {name: _node_essentials(body)}


def _holds_gpu(spec: Any, **_: Any) -> bool:
    return holds_gpu(spec)


@kopf.index("", "v1", "pods", when=_holds_gpu)
def gpu_pods_index(body: Any, **_: Any) -> dict[Any, Any]:
    return {(body.get("spec") or {}).get("nodeName"): gpu_pod(body)}


@kopf.index(*R1D)
def r1d_index(namespace: str, name: str, **_: Any) -> dict[Any, Any]:
    return {namespace: name}


def _all(index: kopf.Index) -> list[Any]:
    return [v for key in list(index) for v in index.get(key, [])]


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, nodes_index: kopf.Index,
                  gpu_pods_index: kopf.Index, r1d_index: kopf.Index, **_: Any) -> None:
    s: OperatorSettings = memo.get("settings") or OperatorSettings.from_env()  # main() reads it once
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP,
                                                                           key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our own events describe transitions; kopf's per-handler ones are noise
    settings.posting.reporting_component = names.MANAGED_BY
    settings.posting.reporting_instance = s.pod_name
    settings.execution.max_workers = s.workers
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.peering.lifetime = s.peering_lifetime
    api = api_client(s.kubeconfig or None)
    pods = lambda: _all(gpu_pods_index)  # noqa: E731
    if memo.get("namespaces"):
        # kopf watches only the namespaces served, but GPUs held by pods anywhere are not free
        memo.pod_watch = GpuPodWatch(api_client(s.kubeconfig or None))
        await asyncio.to_thread(memo.pod_watch.start)  # waits a little for the first list, never fails
        pods = memo.pod_watch.pods
    inv = Inventory(nodes=lambda: _all(nodes_index), pods=pods)
    memo.reconciler = Reconciler(api=api, settings=s, inventory=inv)
    memo.child_events = ChildEvents()
    deployments = lambda: [(ns, name) for ns in list(r1d_index) for name in r1d_index.get(ns, [])]  # noqa: E731
    memo.replan_task = asyncio.create_task(replan_loop(deployments, inv.nodes, inv.pods, memo.reconciler.replan,
                                                       s.replan_interval_s, s.resync_interval_s,
                                                       memo.reconciler.unplanned))
    state = memo.get("readiness") or readiness.Readiness()
    namespaces = list(memo.get("namespaces") or [])
    memo.readiness_task = asyncio.create_task(readiness.watch_api(lambda: check_api(api, namespaces), state))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for task in (memo.get("replan_task"), memo.get("readiness_task")):
        if task:
            task.cancel()
    if memo.get("pod_watch"):
        memo.pod_watch.stop()


@kopf.on.create(*R1D)
@kopf.on.update(*R1D)
@kopf.on.resume(*R1D)
def reconcile(body: Any, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.reconcile(_plain(body))


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
def job_changed(body: Any, namespace: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if memo.child_events.news(body, type, job_summary(body)):
        for owner in owners(body):
            memo.reconciler.refresh(namespace, owner)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def deployment_changed(body: Any, namespace: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if memo.child_events.news(body, type, deployment_summary(body)):
        for owner in owners(body):
            memo.reconciler.refresh(namespace, owner)


@kopf.on.event("", "v1", "pods", labels={"app.kubernetes.io/component": "runtime", **MANAGED})
def runtime_pod_changed(body: Any, namespace: str, labels: Any, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if memo.child_events.news(body, type, pod_summary(body)) and type in ("ADDED", "MODIFIED") \
            and labels.get(names.LABEL_DEPLOYMENT):
        memo.reconciler.refresh(namespace, labels[names.LABEL_DEPLOYMENT])


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions",
               when=lambda name, **_: name in OPTIONAL_CRDS)
def optional_crd_changed(name: str, type: str | None, memo: kopf.Memo, r1d_index: kopf.Index, **_: Any) -> None:
    """KEDA or the Prometheus Operator installed or removed: every R1Deployment reconciles at once (its
    ScaledObject or ServiceMonitor is made, or its condition says what is missing) instead of at the next resync."""
    if memo.reconciler.crd_seen(name, type != "DELETED"):
        for ns in list(r1d_index):
            for r1d in list(r1d_index.get(ns, [])):
                memo.reconciler.replan(ns, r1d)


@kopf.on.event(*R1D)
def deleted(type: str | None, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    # Children go with their owner references (garbage collection); only in-memory state is ours to drop.
    if type == "DELETED":
        memo.reconciler.forget(namespace, name)
        metrics.forget(namespace, name)


def _plain(body: Any) -> dict[str, Any]:
    return copy.deepcopy({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec", "status")})
