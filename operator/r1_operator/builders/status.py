"""Observed children → the R1Deployment status and the events of its transitions (pure).

One function computes the whole status; the operator writes what it returns and
nothing else writes status, so conditions never fight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from r1_operator.api.types import CONDITIONS, OPTIONAL_CONDITIONS

GiB = 1 << 30


@dataclass(frozen=True)
class CacheObservation:
    pvc: str = ""
    pvc_phase: str = ""  # "" when the PVC does not exist
    ready: dict[str, Any] | None = None  # the fetch summary recorded on the PVC once the Job succeeded
    job_active: int = 0
    job_failed: bool = False
    job_failure: str = ""  # the Job's failure condition message
    last_message: dict[str, Any] | None = None  # the fetch pod's termination message (JSON)
    progress: dict[str, Any] | None = None  # the fetch's latest progress, when known
    waiting_node: str = ""  # no cache yet: its placement waits for a node pool's new node (planning.pools)
    job_blocked: str = ""  # the API server refuses the fetch Job's pod (its FailedCreate event)


@dataclass(frozen=True)
class RuntimeObservation:
    exists: bool = False
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    up_to_date: bool = False  # the Deployment controller has seen the latest template
    failing: str = ""  # a Deployment condition or pod state that will not heal by waiting
    waiting: str = ""  # why pods are not ready yet (e.g. Unschedulable: ...)
    failing_reason: str = "RuntimeFailing"  # the Degraded reason for `failing` (OutOfMemory: a load ran out)
    offloaded_layers: int | None = None  # what the ready runtimes' llama.cpp reported offloading (fewest of them)
    planned_layers: int | None = None  # the plan's GPU layers for the placement offloaded_layers comes from
    unschedulable: str = ""  # a pod the scheduler cannot place (its message has the numbers)
    load_oom: dict[str, Any] | None = None  # a load that ran out of memory: its termination message, plan hash, placement


def combine(observed: list[tuple[dict[str, Any], RuntimeObservation]]) -> RuntimeObservation:
    """One observation over every placement's Deployment: counts add up, the first failure and wait are kept,
    and the offload is the placement furthest below its plan (or the fewest layers when none is below)."""
    if not observed:
        return RuntimeObservation()
    failing = next(((rt.failing, rt.failing_reason) for _, rt in observed if rt.failing), ("", "RuntimeFailing"))
    reported = [(int(p.get("nGpuLayers") or 0) - rt.offloaded_layers, rt.offloaded_layers, p.get("nGpuLayers"))
                for p, rt in observed if rt.offloaded_layers is not None]
    short = max(reported, default=None)
    return RuntimeObservation(
        exists=all(rt.exists for _, rt in observed),
        replicas=sum(rt.replicas for _, rt in observed),
        ready_replicas=sum(rt.ready_replicas for _, rt in observed),
        updated_replicas=sum(rt.updated_replicas for _, rt in observed),
        up_to_date=all(rt.up_to_date for _, rt in observed),
        failing=failing[0], failing_reason=failing[1],
        waiting=next((rt.waiting for _, rt in observed if rt.waiting), ""),
        offloaded_layers=short[1] if short else None, planned_layers=short[2] if short else None,
        unschedulable=next((rt.unschedulable for _, rt in observed if rt.unschedulable), ""),
        load_oom=next((rt.load_oom for _, rt in observed if rt.load_oom), None))


@dataclass(frozen=True)
class Desired:
    generation: int
    replicas: int
    plan: dict[str, Any] | None
    plan_error: str = ""  # the spec cannot be planned (names the field)
    apply_error: str = ""  # the API server refused a child (the operator retries)
    endpoint: str = ""
    selector: str = ""
    simulated_gpus: bool = False  # dev clusters only (R1_DEV_SIMULATED_GPUS): an offload shortfall is expected
    autoscaling: Autoscaling | None = None  # spec.autoscaling's state; None when it is off


@dataclass(frozen=True)
class Autoscaling:
    """Whether spec.autoscaling is in effect: available, or why not (the Autoscaling condition)."""
    available: bool
    reason: str
    message: str


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class _Cond:
    status: str
    reason: str
    message: str


@dataclass
class StatusResult:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.status["conditions"] if c["type"] == type_)


def _pct(done: int, total: int) -> float:
    return round(100.0 * done / total, 1) if total else 0.0


def _cache(d: Desired, c: CacheObservation) -> tuple[_Cond, dict[str, Any]]:
    info: dict[str, Any] = {"pvc": c.pvc}
    if c.waiting_node:
        info.update(phase="WaitingForNode", display="NoNode")
        return _Cond("False", "WaitingForNode", c.waiting_node), info
    if c.ready is not None:
        total = int(c.ready.get("bytesTotal") or 0)
        info.update(phase="Ready", bytesDone=total, bytesTotal=total, percent=100.0, display="Ready")
        return _Cond("True", "Cached", f"{c.ready.get('model', 'the model')} verified on {c.pvc}"), info
    if c.job_failed:
        err = (c.last_message or {}).get("error") or c.job_failure or "the fetch Job failed"
        info.update(phase="Failed", display="Failed")
        return _Cond("False", "FetchFailed", f"cache Job {c.pvc} failed: {err}"), info
    if c.job_blocked:
        info.update(phase="FetchBlocked", display="Refused")
        return _Cond("False", "FetchBlocked", f"the cache Job {c.pvc} cannot create its pod: {c.job_blocked} (fix "
                     "what it names: spec.scheduling.runtimeClassName or priorityClassName, or the chart's "
                     "runtime.runtimeClassName and priorityClassName, must name classes the cluster has; or the "
                     "namespace's quota or Pod Security)"), info
    if c.pvc_phase == "Pending":
        info.update(phase="VolumePending", display="Pending")
        return _Cond("False", "VolumePending", f"PVC {c.pvc} is Pending: waiting for a volume to bind (check "
                                              "spec.cache.storageClassName and the cluster's provisioner)"), info
    p = c.progress or c.last_message or {}
    done, total = int(p.get("bytesDone") or 0), int(p.get("bytesTotal") or 0)
    if c.job_active or p:
        pct = _pct(done, total)
        info.update(phase=p.get("phase", "downloading"), bytesDone=done, bytesTotal=total, percent=pct,
                    display=f"{pct:g}%" if total else "Fetching")
        msg = f"fetching {d.plan['variant'] if d.plan else ''} into {c.pvc}"
        if total:
            msg += f": {done / GiB:.1f} of {total / GiB:.1f} GiB ({pct:g}%)"
        failed = c.last_message or {}
        moving = (c.progress or {}).get("phase") not in (None, "starting", "listing")  # the hub answers again
        # a pod failed for want of a hub; the Job retries (between its pods, in backoff, none is active)
        if failed.get("phase") == "hub-unreachable" and not moving:
            info.update(phase="HubUnreachable", display="NoHub")
            return _Cond("False", "HubUnreachable", f"{failed.get('error')} (the fetch Job {c.pvc} retries)"), info
        limited = p.get("rateLimited")
        if limited:
            info["rateLimited"] = limited
            msg += (f"; {limited.get('by', 'the hub')} rate-limits it: waiting {limited.get('waitSeconds')} s "
                    f"({limited.get('source')})")
        return _Cond("False", "Downloading", msg), info
    info.update(phase="Pending", display="Pending")
    return _Cond("False", "Pending", f"waiting for the cache Job {c.pvc} to start"), info


def build_status(d: Desired, cache: CacheObservation, rt: RuntimeObservation, old: dict[str, Any] | None,
                 now: str) -> StatusResult:
    conds: dict[str, _Cond] = {}
    status: dict[str, Any] = {"observedGeneration": d.generation, "replicas": rt.replicas,
                              "readyReplicas": rt.ready_replicas, "ready": f"{rt.ready_replicas}/{d.replicas}",
                              "selector": d.selector}
    plan = d.plan
    if d.plan_error:
        conds["Planned"] = _Cond("False", "InvalidSpec", d.plan_error)
    elif plan is None:
        conds["Planned"] = _Cond("Unknown", "Planning", "reading the node inventory")
    elif not plan.get("fits"):
        conds["Planned"] = _Cond("False", "NoFeasiblePlan", "; ".join(plan.get("reasons") or ["nothing fits"]))
    else:
        head, why = (plan.get("reasons") or [""])[0], plan.get("why", "")
        replanned = why.startswith("re-planned")
        conds["Planned"] = _Cond("True", "Replanned" if replanned else "Planned", f"{why}; {head}" if replanned else head)
    if plan is not None:
        status["plan"] = plan
    planned = conds["Planned"].status == "True"

    if planned:
        conds["CacheReady"], status["cache"] = _cache(d, cache)
    else:
        conds["CacheReady"] = _Cond("False", "NotPlanned", "no plan yet, so no variant to fetch")
        status["cache"] = {"phase": "NotPlanned", "display": "-"}
    cached = conds["CacheReady"].status == "True"

    if not planned:
        conds["Ready"] = _Cond("False", "NotPlanned", conds["Planned"].message)
    elif not cached:
        conds["Ready"] = _Cond("False", "WaitingForCache", conds["CacheReady"].message)
    elif d.replicas == 0:
        conds["Ready"] = _Cond("False", "ScaledToZero", "spec.replicas is 0")
    elif rt.up_to_date and rt.updated_replicas >= d.replicas and rt.ready_replicas >= d.replicas:
        conds["Ready"] = _Cond("True", "RuntimeReady", f"{rt.ready_replicas}/{d.replicas} runtime pods ready at {d.endpoint}")
        short = offload_shortfall(plan, rt)
        if short:  # serving, but not as planned: never plain Ready
            conds["Ready"] = _Cond("True", "ReadySimulatedGPUs" if d.simulated_gpus else "ReadyOffloadMismatch",
                                   f"{conds['Ready'].message}; {short}")
    else:
        why = f": {rt.waiting}" if rt.waiting else ""
        conds["Ready"] = _Cond("False", "RuntimeStarting", f"{rt.ready_replicas}/{d.replicas} runtime pods ready{why}")

    degraded = [(c.reason, c.message) for c in (conds["Planned"], conds["CacheReady"])
                if c.reason in ("InvalidSpec", "NoFeasiblePlan", "FetchFailed", "HubUnreachable", "FetchBlocked")]
    if d.apply_error:
        degraded.insert(0, ("ApplyFailed", d.apply_error))
    if rt.failing and cached:
        degraded.append((rt.failing_reason, rt.failing))
    if planned and d.replicas and plan.get("shortfall"):
        degraded.append(("InsufficientCapacity", f"{plan['shortfall']}; add nodes or GPUs, or lower spec.replicas"))
    elif rt.unschedulable and cached:
        degraded.append(("InsufficientCapacity", f"{rt.unschedulable}; the plan's nodes have less room than it "
                         "counted (other pods took it): free it, or lower spec.replicas"))
    if conds["Ready"].reason == "ReadyOffloadMismatch":
        degraded.append(("OffloadMismatch", offload_shortfall(plan, rt) + ": a CPU-only runtime image on a GPU "
                         "node, or no GPU driver in the pod; the model runs slower than planned"))
    if d.autoscaling is not None:
        a = d.autoscaling
        conds["Autoscaling"] = _Cond("True" if a.available else "False", a.reason, a.message)
        if not a.available:
            degraded.append(("AutoscalingUnavailable", f"spec.autoscaling is not in effect: {a.message}"))
    conds["Degraded"] = (_Cond("True", degraded[0][0], degraded[0][1]) if degraded
                         else _Cond("False", "AsExpected", "no failure observed"))

    if degraded or conds["Ready"].status == "True" or conds["Ready"].reason == "ScaledToZero":
        conds["Progressing"] = _Cond("False", "Idle" if not degraded else "Stalled",
                                     "nothing to roll out" if not degraded else degraded[0][1])
    else:
        conds["Progressing"] = _Cond("True", conds["Ready"].reason, conds["Ready"].message)

    if planned and cached:
        status["endpoint"] = d.endpoint
    if rt.offloaded_layers is not None:
        status["runtime"] = {"offloadedLayers": rt.offloaded_layers}
    prev = {c["type"]: c for c in (old or {}).get("conditions") or []}
    out, events = [], []
    for type_ in (*CONDITIONS, *(c for c in OPTIONAL_CONDITIONS if c in conds)):
        c = conds[type_]
        p = prev.get(type_)
        changed = p is None or p.get("status") != c.status
        out.append({"type": type_, "status": c.status, "reason": c.reason, "message": c.message[:32000],
                    "lastTransitionTime": now if changed else p.get("lastTransitionTime", now),
                    "observedGeneration": d.generation})
        if changed or p.get("reason") != c.reason:
            events.append(_event(type_, c))
    status["conditions"] = out
    return StatusResult(status, events)


def _event(type_: str, c: _Cond) -> Event:
    bad = (type_ == "Degraded" and c.status == "True") or c.reason in ("FetchFailed", "NoFeasiblePlan", "InvalidSpec",
                                                                     "ApplyFailed")
    quiet = type_ == "Progressing" or (type_ == "Degraded" and c.status == "False")
    return Event("Warning" if bad else "Normal", c.reason if not quiet else f"{type_}{c.status}",
                 f"{type_}={c.status}: {c.message}"[:1024])


def offload_shortfall(plan: dict[str, Any] | None, rt: RuntimeObservation) -> str:
    """"" when the runtimes offloaded what the plan said, else a sentence with both figures."""
    want = rt.planned_layers if rt.planned_layers is not None else (plan or {}).get("nGpuLayers")
    if rt.offloaded_layers is None or not want or rt.offloaded_layers >= want:
        return ""
    of = (plan or {}).get("nLayers")
    return f"llama.cpp offloaded {rt.offloaded_layers} layers to GPU where the plan has {want}" + \
        (f" ({want}/{of + 1})" if of else "")
