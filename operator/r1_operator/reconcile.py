"""The reconcile chain for one R1Deployment: inventory → plan → cache → runtime → Service → monitors → status.

Handlers call `Reconciler.reconcile` (spec or nodes changed) and `Reconciler.refresh`
(a child changed). Both end in `_write`, the only writer of status.
"""

from __future__ import annotations

import datetime as dt
import logging
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from r1_operator import metrics
from r1_operator.api.types import GROUP, PLURAL, VERSION, R1DeploymentSpec, wanted_replicas
from r1_operator.builders import children as ch
from r1_operator.builders import manifests as mf
from r1_operator.builders import names
from r1_operator.builders.status import Autoscaling, CacheObservation, Desired, RuntimeObservation, build_status, \
    combine
from r1_operator.dashboard import dashboard_json
from r1_operator.k8s import apply as k
from r1_operator.k8s import observe
from r1_operator.planning import corrections as fx
from r1_operator.planning.decide import PlanError, correction_for, decide, placement_plans
from r1_operator.planning.inventory import inventory
from r1_operator.planning.pools import pool_nodes, pool_of
from r1_operator.settings import OperatorSettings

SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
SCALED_OBJECT_CRD = "scaledobjects.keda.sh"
OPTIONAL_CRDS = (SERVICE_MONITOR_CRD, SCALED_OBJECT_CRD)  # children made only when their CRD is installed
CRD_RECHECK_S = 60.0  # besides the CRD watch (handlers.optional_crd_changed), a seen CRD state is re-read this often
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
    _absent: set[ch.Ref] = field(default_factory=set)  # optional children seen absent or deleted by this process
    _waiting: set[str] = field(default_factory=set)
    _applied: dict[ch.Ref, str] = field(default_factory=dict)  # child → its version right after our last apply
    _unplanned: set[tuple[str, str]] = field(default_factory=set)  # no feasible plan at their last reconcile

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(f"{namespace}/{name}", threading.Lock())

    def unplanned(self) -> list[tuple[str, str]]:
        """(namespace, name) of the R1Deployments whose last reconcile found no feasible plan."""
        with self._guard:
            return sorted(self._unplanned)

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._locks.pop(f"{namespace}/{name}", None)
            self._unplanned.discard((namespace, name))
            mine = (names.runtime_name(name), names.dashboard_name(name))
            ours = lambda ref: ref[2] == namespace and (  # noqa: E731 - a placement's Deployment is NAME-pN
                ref[3] in mine or ref[3].startswith(names.placement_name(name, 1)[:-1]))
            for ref in [r for r in self._applied if ours(r)]:
                del self._applied[ref]
            self._absent -= {ref for ref in self._absent if ours(ref)}

    def _has_crd(self, name: str) -> bool:
        at, seen = self._crd_seen.get(name, (0.0, False))
        if time.monotonic() - at > CRD_RECHECK_S:
            seen = k.crd_exists(self.api, name)
            self._crd_seen[name] = (time.monotonic(), seen)
        return seen

    def crd_seen(self, name: str, present: bool) -> bool:
        """The CRD watch saw `name` installed or removed; True when that changes what the operator knew."""
        _, before = self._crd_seen.get(name, (0.0, None))
        self._crd_seen[name] = (time.monotonic(), present)
        return before is not None and before != present

    # ------------------------------------------------------------------ entry points

    def reconcile(self, body: dict[str, Any]) -> None:
        """Reconcile the R1Deployment `body` names, as the API server holds it once this one has the lock: an
        event's body, or one read before waiting, can predate a status another reconcile just wrote (a plan
        correction would then be made, and announced, twice)."""
        meta = body["metadata"]
        self.replan(meta["namespace"], meta["name"])

    def replan(self, namespace: str, name: str) -> None:
        """The periodic check: reconcile from the live object (re-plans only if the plan broke)."""
        with self._lock(namespace, name), metrics.timed("reconcile"):
            body = k.get(self.api, f"{GROUP}/{VERSION}", "R1Deployment", namespace, name)
            if body is not None and not body["metadata"].get("deletionTimestamp"):
                self._reconcile(body)

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
            spec = R1DeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            err = exc.errors()[0]
            return None, f"spec.{'.'.join(map(str, err['loc']))}: {err['msg']}"
        # With autoscaling, replicas stay within its bounds (the autoscaler writes spec.replicas; it is never
        # written here, so the operator and the autoscaler never fight over it).
        return spec.model_copy(update={"replicas": wanted_replicas(spec)}), ""

    def _autoscaling(self, name: str, spec: R1DeploymentSpec | None) -> Autoscaling | None:
        a = spec.autoscaling if spec else None
        if a is None:
            return None
        if not self._has_crd(SCALED_OBJECT_CRD):
            return Autoscaling(False, "KEDAMissing", f"the {SCALED_OBJECT_CRD} CRD is not installed: install KEDA "
                               f"(keda.sh) to scale on the queue; until then {spec.replicas} replica(s) serve")
        if not self._prometheus(spec):
            return Autoscaling(False, "NoPrometheus", "no Prometheus to read the queue from: set "
                               "spec.autoscaling.prometheusAddress, or the chart's autoscaling.prometheusAddress")
        return Autoscaling(True, "KEDA", f"KEDA ScaledObject {names.runtime_name(name)} scales {a.min_replicas} to "
                           f"{a.max_replicas} replicas, holding the queue near {a.target_queue_per_replica:g} per "
                           f"replica ({self._prometheus(spec)})")

    def _prometheus(self, spec: R1DeploymentSpec) -> str:
        return (spec.autoscaling.prometheus_address if spec.autoscaling else "") or self.settings.prometheus_address

    def _desired(self, body, spec, plan, error: str) -> Desired:
        meta = body["metadata"]
        return Desired(generation=int(meta.get("generation") or 1), replicas=spec.replicas if spec else 0, plan=plan,
                       plan_error=error,
                       endpoint=mf.endpoint(meta["name"], meta["namespace"], self.settings),
                       selector=names.selector_string(names.selector(meta["name"])),
                       simulated_gpus=self.settings.dev_simulated_gpus,
                       autoscaling=self._autoscaling(meta["name"], spec))

    def _reconcile(self, body: dict[str, Any], correction: dict[str, Any] | None = None) -> None:
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        spec, error = self._spec(body)
        stored = (body.get("status") or {}).get("plan")
        if correction is not None and stored:
            stored = {**stored, "corrections": [*(stored.get("corrections") or []), correction]}
        if spec is None:
            self._write(body, self._desired(body, None, stored, error), None)
            return
        pods = list(self.inventory.pods())
        own = frozenset(p["metadata"]["uid"] for p in pods
                        if (p["metadata"].get("labels") or {}).get(names.LABEL_DEPLOYMENT) == name
                        and p["metadata"].get("namespace") == ns)
        nodes = inventory(list(self.inventory.nodes()), pods, spec.scheduling.gpu_resource_name, ignore_uids=own,
                          memory_by_label=self.settings.memory_by_label())
        try:
            outcome = decide(spec, int(meta.get("generation") or 1), nodes, stored,
                             pool_nodes(self.settings.pools(), spec.scheduling.gpu_resource_name,
                                        self.settings.memory_by_label()))
        except PlanError as exc:
            self._write(body, self._desired(body, spec, stored, str(exc)), None)
            return
        plan = outcome.plan
        with self._guard:
            (self._unplanned.discard if plan.get("fits") else self._unplanned.add)((ns, name))
        if correction is not None and (outcome.changed or fx.kind(correction) == fx.MEMORY):
            plan = {**plan, "why": f"re-planned: {fx.describe(correction)}"}
        desired = self._desired(body, spec, plan, "")
        if not plan.get("fits"):
            # Keep whatever runs: a node may come back; the status says why nothing fits now.
            self._write(body, desired, None)
            return
        if stored and stored.get("fits"):  # another variant, or nodes no placement uses any more
            used = {mf.cache_ref(spec, p)[0] for p in placement_plans(plan) if not pool_of(p.get("node"))}
            for old in {mf.cache_ref(spec, p)[0] for p in placement_plans(stored)
                        if not pool_of(p.get("node"))} - used:
                self._release_cache(ns, old, uid)
        self._converge(body, spec, desired, sweep=True)

    def _converge(self, body: dict[str, Any], spec: R1DeploymentSpec, desired: Desired, sweep: bool = False) -> None:
        try:
            fix = self._ensure_children(body, spec, desired, sweep)
        except ApiException as exc:
            # Say so in the status (the condition quotes the API server), then let kopf retry.
            msg = _api_message(exc)
            self._write(body, replace(desired, apply_error=f"creating or updating a child failed: {msg}"), None)
            raise
        if fix is not None:  # a runtime ran out of memory: re-plan with the correction, and say so
            log.warning("%s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], fx.describe(fix))
            try:
                k.post_event(self.api, body, "Warning", "PlanCorrected", fx.describe(fix)[:1024], names.MANAGED_BY,
                             self.settings.pod_name, _now())
            except ApiException as exc:
                log.warning("event PlanCorrected not posted: %s", exc.reason)
            self._reconcile(body, correction=fix)

    def _release_cache(self, ns: str, old: str, uid: str) -> None:
        """A cache none of this R1Deployment's placements uses any more: drop its owner reference, or delete it
        when it was the last owner (an object without owners is never garbage-collected)."""
        for api_version, kind in (("batch/v1", "Job"), ("v1", "PersistentVolumeClaim")):
            live = k.get(self.api, api_version, kind, ns, old)
            others = [o for o in (live or {}).get("metadata", {}).get("ownerReferences") or [] if o.get("uid") != uid]
            if live is not None and not others:
                k.delete(self.api, api_version, kind, ns, old)
            else:
                k.disown_shared(self.api, api_version, kind, ns, old, uid)

    def _ensure_cache(self, ns: str, spec: R1DeploymentSpec, placement: dict[str, Any], owner: dict[str, Any]) \
            -> CacheObservation:
        """One placement's cache: the shared PVC, and its fetch Job until the PVC records the verified model."""
        s = self.settings
        pvc = mf.build_cache_pvc(ns, spec, placement, s)
        cache = pvc["metadata"]["name"]
        pvc_live = self._execute(ch.plan_shared(pvc, live := self._read(ch.ref_of(pvc)), owner), live)
        job_live = self._read(("batch/v1", "Job", ns, cache))
        cache_obs = observe.cache(self.api, ns, cache, pvc_live, job_live)
        annotated = names.ANN_CACHE_READY in ((pvc_live.get("metadata") or {}).get("annotations") or {})
        if cache_obs.ready is not None and not annotated:
            # Recorded on the volume, so the variant is never fetched again even if the Job is deleted.
            k.annotate(self.api, "v1", "PersistentVolumeClaim", ns, cache,
                       {names.ANN_CACHE_READY: json.dumps(cache_obs.ready, sort_keys=True)})
        elif cache_obs.ready is None:
            self._execute(ch.plan_shared(mf.build_fetch_job(ns, spec, placement, s), job_live, owner), job_live)
        return cache_obs

    def _retired(self, ns: str, name: str, keep: set[str]) -> list[tuple[ch.Ref, str]]:
        """Runtime and provision Deployments of placements no longer planned (listed by label, so none is ever
        left behind)."""
        sel = f"{names.LABEL_DEPLOYMENT}={name},app.kubernetes.io/component in (runtime,provision)"
        live = k._call(self.api, "GET", f"/apis/apps/v1/namespaces/{ns}/deployments",
                       query=[("labelSelector", sel)]).get("items", [])
        return [(("apps/v1", "Deployment", ns, d["metadata"]["name"]), "its placement is no longer planned")
                for d in live if d["metadata"]["name"] not in keep]

    def _ensure_children(self, body: dict[str, Any], spec: R1DeploymentSpec, desired: Desired,
                         sweep: bool = False) -> dict[str, Any] | None:
        """Read the children, plan a Step for each (builders.children), execute the steps, write status.

        Each placement has its cache (one per node for ReadWriteOnce volumes, one for all with ReadWriteMany)
        and its Deployment; one Service selects them all. A steady-state refresh of one placement reads four
        objects and writes nothing; a reconcile (sweep) also lists the runtime Deployments, deleting those of
        placements no longer planned."""
        meta, plan = body["metadata"], desired.plan
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        s = self.settings
        owner = mf.owner_reference(name, uid, controller=False)
        placements = [p for p in placement_plans(plan) if not pool_of(p.get("node"))]
        pooled = [p for p in placement_plans(plan) if pool_of(p.get("node"))]  # waiting for a new node
        caches: dict[str, CacheObservation] = {}
        for p in placements:
            cache = mf.cache_ref(spec, p)[0]
            if cache not in caches:
                caches[cache] = self._ensure_cache(ns, spec, p, owner)
        dev_mocks = _dev_mocks(meta) if s.dev_simulated_gpus else {}
        deployments = [mf.build_deployment(name, ns, uid, spec, p, s,
                                           cache_ready=caches[mf.cache_ref(spec, p)[0]].ready is not None,
                                           dev_mocks=dev_mocks)
                       for p in placements]
        provisions = [mf.build_provision(name, ns, uid, spec, p, s) for p in pooled]
        wanted: list[dict[str, Any]] = [*deployments, *provisions, mf.build_service(name, ns, uid, s)]
        unwanted: list[tuple[ch.Ref, str]] = []
        if sweep:
            unwanted.extend(self._retired(ns, name, {d["metadata"]["name"] for d in (*deployments, *provisions)}))
        monitor = ("monitoring.coreos.com/v1", "ServiceMonitor", ns, names.runtime_name(name))
        if self._has_crd(SERVICE_MONITOR_CRD):
            if spec.monitoring.service_monitor:
                wanted.append(mf.build_service_monitor(name, ns, uid))
            else:
                unwanted.append((monitor, "turned off in spec.monitoring"))
        if spec.monitoring.dashboard:
            wanted.append(mf.build_dashboard_configmap(name, ns, uid, dashboard_json(), s))
        else:
            unwanted.append((("v1", "ConfigMap", ns, names.dashboard_name(name)), "turned off in spec.monitoring"))
        scaled = (mf.KEDA_API, "ScaledObject", ns, names.runtime_name(name))
        if desired.autoscaling is not None and desired.autoscaling.available:
            wanted.append(mf.build_scaled_object(name, ns, uid, spec, self._prometheus(spec)))
        elif desired.autoscaling is None and self._has_crd(SCALED_OBJECT_CRD):
            unwanted.append((scaled, "spec.autoscaling is off"))
        if spec.network.policy == "restricted":
            wanted.extend(mf.build_network_policies(name, ns, uid, spec, plan, s))
        else:
            unwanted.extend((("networking.k8s.io/v1", "NetworkPolicy", ns, n), "spec.network.policy is none")
                            for n in (names.runtime_name(name), names.fetch_policy_name(name),
                                      names.provision_policy_name(name)))
        results = []
        for obj in wanted:
            ref = ch.ref_of(obj)
            self._absent.discard(ref)
            try:
                live = self._read(ref)
                results.append(self._execute(ch.plan_owned(obj, live, self._applied.get(ref)), live))
            except ApiException as exc:
                if ref != scaled or exc.status != 403:
                    raise
                # The chart grants ScaledObjects only with autoscaling.enabled: say so, serve spec.replicas.
                desired = replace(desired, autoscaling=Autoscaling(
                    False, "Forbidden", f"the operator may not manage ScaledObjects ({_api_message(exc)}): "
                    "install the chart with autoscaling.enabled=true"))
        for ref, why in unwanted:
            if ref not in self._absent:  # once seen absent, not read again on every reconcile
                try:
                    self._execute(ch.plan_absent(ref, live := self._read(ref), why), live)
                except ApiException as exc:
                    if ref != scaled or exc.status != 403:
                        raise
                    self._absent.add(ref)  # not allowed to read them, so none was ever created
        runtimes = [(p, observe.runtime(self.api, ns, live)) for p, live in zip(placements, results)]
        for p, live in zip(pooled, results[len(placements):]):
            why = observe.runtime(self.api, ns, live).waiting
            caches[f"pool/{p['id']}"] = CacheObservation(waiting_node=(
                f"waiting for a new node of pool {pool_of(p['node'])} for placement {p['id']}: Deployment "
                f"{names.provision_name(name, p['id'])} asks the cluster's autoscaler for it"
                + (f" ({why})" if why else "")))
        waiting = [c for c in caches.values() if c.ready is None]
        rt = combine(runtimes)
        pinned = mf.memory_pinned(spec)
        fix = correction_for(plan, rt.load_oom, _now(), pinned) if rt.load_oom else None
        if fix == "gave up":
            rt = replace(rt, failing=f"{rt.failing}; the plan was corrected {fx.MAX_PER_NODE} times on that node "
                         "already, the most the operator does")
        elif rt.load_oom and fx.kind(rt.load_oom) == fx.MEMORY and pinned:
            rt = replace(rt, failing=f"{rt.failing}; spec.resources sets the runtime's memory, so the operator "
                         "leaves it: raise spec.resources.limits.memory, or lower spec.inference.ctxSize or parallel")
        self._write(body, desired, ((waiting or list(caches.values()))[0], rt))
        return fix if isinstance(fix, dict) else None

    def _read(self, ref: ch.Ref) -> dict[str, Any] | None:
        return k.get(self.api, *ref)

    def _execute(self, step: ch.Step, live: dict[str, Any] | None) -> dict[str, Any] | None:
        """Carry out one Step on the child whose live state was `live`; returns the live object afterwards."""
        if step.action != "leave":
            log.debug("%s %s/%s %s: %s", step.action, step.ref[1], step.ref[2], step.ref[3], step.reason)
        if step.action == "leave":
            if live is None:
                self._absent.add(step.ref)
            return live
        if step.action == "delete":
            k.delete(self.api, *step.ref)
            self._absent.add(step.ref)
            return None
        if step.owner is not None:  # a shared child: created once, then each sharer adds its owner reference
            if step.action == "create":
                live, _ = k.create_if_missing(self.api, step.obj)
            if step.owner["uid"] not in {o.get("uid") for o in (live.get("metadata") or {}).get("ownerReferences") or []}:
                live = k.own_shared(self.api, step.obj, step.owner)
            return live
        live = k.apply(self.api, step.obj)
        self._applied[step.ref] = ch.version(live)
        return live

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
                             self.settings.pod_name, _now())
            except ApiException as exc:  # an event is a courtesy; the status already says it
                log.warning("event %s on %s/%s not posted: %s", ev.reason, meta["namespace"], meta["name"], exc.reason)
            metrics.transition(ev.reason)


def _dev_mocks(meta: dict[str, Any]) -> dict[str, int]:
    """DEV CLUSTERS ONLY: the runtime's mocks the R1Deployment's annotations ask for (names.DEV_MOCKS), by flag."""
    out = {}
    for ann, flag in names.DEV_MOCKS.items():
        try:
            out[flag] = max(int((meta.get("annotations") or {}).get(ann) or 0), 0)
        except ValueError:
            out[flag] = 0
    return out


def _api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or str(exc.reason)
    except ValueError:
        return str(exc.reason)


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Equal but for lastTransitionTime (which build_status keeps when nothing changed)."""
    return json.dumps({**old, "conditions": None}, sort_keys=True) == json.dumps({**new, "conditions": None}, sort_keys=True) \
        and [(c["type"], c["status"], c["reason"], c["message"], c["observedGeneration"]) for c in old.get("conditions") or []] \
        == [(c["type"], c["status"], c["reason"], c["message"], c["observedGeneration"]) for c in new.get("conditions") or []]
