"""The reconcile chain for one R1Deployment: inventory → plan → cache → runtime → Service → monitors → status.

Handlers call `Reconciler.reconcile` (spec or nodes changed) and `Reconciler.refresh`
(a child changed). Both end in `_write_status`, the only writer of status.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from r1_operator import metrics
from r1_operator.api.types import GROUP, PLURAL, VERSION, R1DeploymentSpec
from r1_operator.builders import manifests as mf
from r1_operator.builders import names
from r1_operator.builders.planfor import PlanError, decide, inventory_for
from r1_operator.builders.settings import OperatorSettings
from r1_operator.builders.status import CacheObservation, Desired, RuntimeObservation, build_status
from r1_operator.dashboard import dashboard_json
from r1_operator.k8s import apply as k
from r1_operator.k8s import observe

SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
log = logging.getLogger("r1_operator")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Inventory:
    """Nodes and GPU-holding pods as the operator's watches last saw them."""

    nodes: Callable[[], Iterable[dict[str, Any]]]
    pods: Callable[[], Iterable[dict[str, Any]]]


@dataclass
class Reconciler:
    api: Any
    settings: OperatorSettings
    inventory: Inventory
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _crd_seen: dict[str, tuple[float, bool]] = field(default_factory=dict)
    _deleted: set[tuple[str, str, str, str]] = field(default_factory=set)
    _waiting: set[str] = field(default_factory=set)
    _applied: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(f"{namespace}/{name}", threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._locks.pop(f"{namespace}/{name}", None)
            mine = (names.runtime_name(name), names.dashboard_name(name))
            for key in [k for k in self._applied if k[1] == namespace and k[2] in mine]:
                del self._applied[key]
            self._deleted -= {ref for ref in self._deleted if ref[2] == namespace and ref[3] in mine}

    def _has_crd(self, name: str) -> bool:
        at, seen = self._crd_seen.get(name, (0.0, False))
        if time.monotonic() - at > 60:
            seen = k.crd_exists(self.api, name)
            self._crd_seen[name] = (time.monotonic(), seen)
        return seen

    # ------------------------------------------------------------------ entry points

    def reconcile(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        with self._lock(meta["namespace"], meta["name"]), metrics.timed("reconcile"):
            self._reconcile(body)

    def replan(self, namespace: str, name: str) -> None:
        """The periodic check: reconcile from the live object (re-plans only if the plan broke)."""
        body = k.get(self.api, f"{GROUP}/{VERSION}", "R1Deployment", namespace, name)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            self.reconcile(body)

    def refresh(self, namespace: str, name: str) -> None:
        """A child changed: converge the children on the stored plan and recompute status; never re-plans.

        Requests for one R1Deployment coalesce: while one waits for the lock, more add nothing."""
        key = f"{namespace}/{name}"
        with self._guard:
            if key in self._waiting:
                return
            self._waiting.add(key)
        with self._lock(namespace, name), metrics.timed("refresh"):
            with self._guard:
                self._waiting.discard(key)
            body = k.get(self.api, f"{GROUP}/{VERSION}", "R1Deployment", namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            spec, _ = self._spec(body)
            plan = (body.get("status") or {}).get("plan")
            if spec is None or not plan or not plan.get("fits"):
                return
            self._converge(body, spec, self._desired(body, spec, plan, ""))

    # ------------------------------------------------------------------ the chain

    def _spec(self, body: dict[str, Any]) -> tuple[R1DeploymentSpec | None, str]:
        try:
            return R1DeploymentSpec.model_validate(body.get("spec") or {}), ""
        except ValidationError as exc:
            err = exc.errors()[0]
            return None, f"spec.{'.'.join(map(str, err['loc']))}: {err['msg']}"

    def _desired(self, body, spec, plan, error: str) -> Desired:
        meta = body["metadata"]
        return Desired(generation=int(meta.get("generation") or 1), replicas=spec.replicas if spec else 0, plan=plan,
                       plan_error=error,
                       endpoint=mf.endpoint(meta["name"], meta["namespace"], self.settings),
                       selector=names.selector_string(names.selector(meta["name"])))

    def _reconcile(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        spec, error = self._spec(body)
        stored = (body.get("status") or {}).get("plan")
        if spec is None:
            self._write(body, self._desired(body, None, stored, error), None)
            return
        pods = list(self.inventory.pods())
        own = frozenset(p["metadata"]["uid"] for p in pods
                        if (p["metadata"].get("labels") or {}).get(names.LABEL_DEPLOYMENT) == name
                        and p["metadata"].get("namespace") == ns)
        nodes = inventory_for(list(self.inventory.nodes()), pods, spec.scheduling.gpu_resource_name, own)
        try:
            outcome = decide(spec, int(meta.get("generation") or 1), nodes, stored)
        except PlanError as exc:
            self._write(body, self._desired(body, spec, stored, str(exc)), None)
            return
        plan = outcome.plan
        desired = self._desired(body, spec, plan, "")
        if not plan.get("fits"):
            # Keep whatever runs: a node may come back; the status says why nothing fits now.
            self._write(body, desired, None)
            return
        if stored and stored.get("fits") and stored.get("variant") != plan["variant"]:
            self._release_cache(ns, spec, stored["variant"], uid)
        self._converge(body, spec, desired)

    def _converge(self, body: dict[str, Any], spec: R1DeploymentSpec, desired: Desired) -> None:
        try:
            self._ensure_children(body, spec, desired)
        except ApiException as exc:
            # Say so in the status (the condition quotes the API server), then let kopf retry.
            msg = _api_message(exc)
            self._write(body, replace(desired, apply_error=f"creating or updating a child failed: {msg}"), None)
            raise

    def _release_cache(self, ns: str, spec: R1DeploymentSpec, variant: str, uid: str) -> None:
        old = names.cache_name(spec.model.repo, spec.model.revision, variant)
        k.disown_shared(self.api, "batch/v1", "Job", ns, old, uid)
        k.disown_shared(self.api, "v1", "PersistentVolumeClaim", ns, old, uid)

    def _ensure_children(self, body: dict[str, Any], spec: R1DeploymentSpec, desired: Desired) -> None:
        """Converge the children on the plan. Reads first and writes only what differs, so a steady-state
        reconcile costs four GETs."""
        meta, plan = body["metadata"], desired.plan
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        s = self.settings
        owner = mf.owner_reference(name, uid, controller=False)
        pvc = mf.build_cache_pvc(ns, spec, plan, s)
        cache = pvc["metadata"]["name"]
        pvc_live = self._shared(pvc, owner)
        job_live = k.get(self.api, "batch/v1", "Job", ns, cache)
        cache_obs = observe.cache(self.api, ns, cache, pvc_live, job_live)
        annotated = names.ANN_CACHE_READY in ((pvc_live.get("metadata") or {}).get("annotations") or {})
        if cache_obs.ready is not None and not annotated:
            # Recorded on the volume, so the variant is never fetched again even if the Job is deleted.
            k.annotate(self.api, "v1", "PersistentVolumeClaim", ns, cache,
                       {names.ANN_CACHE_READY: json.dumps(cache_obs.ready, sort_keys=True)})
        elif cache_obs.ready is None:
            self._shared(mf.build_fetch_job(ns, spec, plan, s), owner, job_live)
        dep = self._apply_if_changed(mf.build_deployment(name, ns, uid, spec, plan, s,
                                                         cache_ready=cache_obs.ready is not None))
        self._apply_if_changed(mf.build_service(name, ns, uid, s))
        if self._has_crd(SERVICE_MONITOR_CRD):
            if spec.monitoring.service_monitor:
                self._deleted.discard(("monitoring.coreos.com/v1", "ServiceMonitor", ns, names.runtime_name(name)))
                self._apply_if_changed(mf.build_service_monitor(name, ns, uid))
            else:
                self._delete_once(("monitoring.coreos.com/v1", "ServiceMonitor", ns, names.runtime_name(name)))
        dashboard = ("v1", "ConfigMap", ns, names.dashboard_name(name))
        if spec.monitoring.dashboard:
            self._deleted.discard(dashboard)
            self._apply_if_changed(mf.build_dashboard_configmap(name, ns, uid, dashboard_json(), s))
        else:
            self._delete_once(dashboard)
        self._write(body, desired, (cache_obs, observe.runtime(self.api, ns, name, dep)))

    def _shared(self, obj: dict[str, Any], owner: dict[str, Any], live: dict[str, Any] | None = None) -> dict[str, Any]:
        """A child shared by several R1Deployments: created once, then each sharer adds its owner reference."""
        m = obj["metadata"]
        live = live or k.get(self.api, obj["apiVersion"], obj["kind"], m["namespace"], m["name"])
        if live is None:
            live, _ = k.create_if_missing(self.api, obj)
        if owner["uid"] not in {o.get("uid") for o in (live.get("metadata") or {}).get("ownerReferences") or []}:
            live = k.own_shared(self.api, obj, owner)
        return live

    def _apply_if_changed(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply unless the live object is exactly what this process last applied.

        The live object must carry this configuration's hash and be unchanged since (same generation, or
        resourceVersion for kinds without one): an edit by someone else, e.g. `kubectl scale`, is reverted.
        """
        digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
        obj["metadata"].setdefault("annotations", {})[names.ANN_APPLIED] = digest
        m = obj["metadata"]
        key = (obj["kind"], m["namespace"], m["name"])
        live = k.get(self.api, obj["apiVersion"], obj["kind"], m["namespace"], m["name"])
        if live is not None and ((live.get("metadata") or {}).get("annotations") or {}).get(names.ANN_APPLIED) == digest \
                and self._applied.get(key) == _version(live):
            return live
        live = k.apply(self.api, obj)
        self._applied[key] = _version(live)
        return live

    def _delete_once(self, ref: tuple[str, str, str, str]) -> None:
        """Delete a child the spec turned off; once per process per child, not on every reconcile."""
        if ref not in self._deleted:
            k.delete(self.api, *ref)
            self._deleted.add(ref)

    def _write(self, body: dict[str, Any], desired: Desired, observed) -> None:
        meta = body["metadata"]
        cache_obs, rt = observed or (CacheObservation(), RuntimeObservation())
        old = body.get("status") or {}
        result = build_status(desired, cache_obs, rt, old, _now())
        metrics.record_status(meta["namespace"], meta["name"], result.status)
        if _same(old, result.status):
            return
        k.replace_status(self.api, GROUP, VERSION, PLURAL, meta["namespace"], meta["name"], result.status)
        for ev in result.events:
            try:
                k.post_event(self.api, body, ev.type, ev.reason, ev.message, names.MANAGED_BY,
                             os.environ.get("POD_NAME", names.MANAGED_BY), _now())
            except ApiException as exc:  # an event is a courtesy; the status already says it
                log.warning("event %s on %s/%s not posted: %s", ev.reason, meta["namespace"], meta["name"], exc.reason)
            metrics.transition(ev.reason)


def _api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or str(exc.reason)
    except ValueError:
        return str(exc.reason)


def _version(obj: dict[str, Any]) -> str:
    m = obj.get("metadata") or {}
    return f"g{m['generation']}" if m.get("generation") else f"rv{m.get('resourceVersion')}"


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Equal but for lastTransitionTime (which build_status keeps when nothing changed)."""
    return json.dumps({**old, "conditions": None}, sort_keys=True) == json.dumps({**new, "conditions": None}, sort_keys=True) \
        and [(c["type"], c["status"], c["reason"], c["message"], c["observedGeneration"]) for c in old.get("conditions") or []] \
        == [(c["type"], c["status"], c["reason"], c["message"], c["observedGeneration"]) for c in new.get("conditions") or []]
