"""Read the children of an R1Deployment into the observations the status builder takes."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from kubernetes.client.exceptions import ApiException

from r1_operator.api.contract import PROGRESS_MARK, Exit
from r1_operator.builders import names
from r1_operator.builders.status import CacheObservation, RuntimeObservation
from r1_operator.k8s import apply as k
from r1_operator.planning.inventory import parse_quantity

_STUCK = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "InvalidImageName")


def _pods(api, namespace: str, selector: str) -> list[dict[str, Any]]:
    return k._call(api, "GET", f"/api/v1/namespaces/{namespace}/pods", query=[("labelSelector", selector)]).get("items", [])


def _termination(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term and term.get("message"):
            try:
                return json.loads(term["message"])
            except ValueError:
                return {"error": term["message"].strip()[-500:]}
    return None


def progress_from_log(text: str) -> dict[str, Any] | None:
    """The last progress object a fetch printed, or None."""
    for line in reversed(text.splitlines()):
        _, mark, tail = line.rpartition(PROGRESS_MARK)
        if mark:
            try:
                return json.loads(tail)
            except ValueError:
                continue
    return None


def _pod_log(api, namespace: str, pod: dict[str, Any], query: list[tuple[str, str]]) -> str | None:
    """A pod's log ("" when the API server answers without one), or None when it cannot be read (no reachable
    kubelet: kwok nodes have none)."""
    path = f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/log"
    try:
        args = api.param_serialize("GET", path, query_params=query, auth_settings=["BearerToken"])
        resp = api.call_api(*args, _request_timeout=3)
        return resp.read().decode(errors="replace") if resp.status == 200 else ""
    except Exception:  # noqa: BLE001 - best effort: the status just lacks the figure
        return None


def _fetch_progress(api, namespace: str, job_name: str) -> dict[str, Any] | None:
    """Progress of a running fetch from its pod's log; best effort (no log, no figure)."""
    for pod in _pods(api, namespace, f"job-name={job_name}"):
        if (pod.get("status") or {}).get("phase") == "Running":
            text = _pod_log(api, namespace, pod, [("tailLines", "20")])
            return progress_from_log(text) if text else None
    return None


def cache(api, namespace: str, pvc_name: str, pvc: dict[str, Any] | None, job: dict[str, Any] | None) -> CacheObservation:
    """The cache as its live PVC and Job show it (the Job's pods are read only once it has finished)."""
    ready = None
    if pvc is not None:
        raw = ((pvc.get("metadata") or {}).get("annotations") or {}).get(names.ANN_CACHE_READY)
        ready = json.loads(raw) if raw else None
    active, failed, failure, succeeded, message = 0, False, "", False, None
    if job is not None:
        st = job.get("status") or {}
        active = int(st.get("active") or 0)
        for c in st.get("conditions") or []:
            if c.get("type") == "Failed" and c.get("status") == "True":
                failed, failure = True, f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
            if c.get("type") == "Complete" and c.get("status") == "True":
                succeeded = True
        # once recorded on the PVC, the pods have nothing new; a retrying Job's failed pods say why they failed
        if (failed or succeeded or int(st.get("failed") or 0)) and ready is None:
            for pod in sorted(_pods(api, namespace, f"job-name={pvc_name}"),
                              key=lambda p: p["metadata"].get("creationTimestamp", "")):
                message = _termination(pod) or message
    if succeeded and ready is None:
        ready = {**(message or {}), "job": pvc_name}
    progress = _fetch_progress(api, namespace, pvc_name) if active and ready is None else None
    blocked = _refused_pod(api, namespace, pvc_name) \
        if job is not None and not (active or failed or succeeded) and ready is None else ""
    return CacheObservation(pvc=pvc_name, pvc_phase=((pvc or {}).get("status") or {}).get("phase", ""), ready=ready,
                            job_active=active, job_failed=failed and ready is None, job_failure=failure,
                            last_message=message, progress=progress, job_blocked=blocked)


def _refused_pod(api, namespace: str, job: str) -> str:
    """Why the API server refuses the Job's pod (its latest FailedCreate event: a RuntimeClass or PriorityClass
    that does not exist, a quota, Pod Security), or "" while none was refused. A Job has no condition for it."""
    sel = f"involvedObject.kind=Job,involvedObject.name={job},reason=FailedCreate"
    try:
        items = k._call(api, "GET", f"/api/v1/namespaces/{namespace}/events",
                        query=[("fieldSelector", sel)]).get("items", [])
    except ApiException:  # events not readable (RBAC): the status says only that the Job has not started
        return ""
    latest = max(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "", default=None)
    return (latest or {}).get("message", "")[:1000]


def _oom_killed(pod: dict[str, Any], cs: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """Why a container was OOMKilled, naming it and its memory limit, and the limit with the pod's plan hash and
    placement (what planning.corrections reads); ("", None) when it was not."""
    term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
    if term.get("reason") != "OOMKilled":
        return "", None
    spec = next((c for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") == cs["name"]), {})
    limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
    where = f"its memory limit {limit}" if limit else "no memory limit: the node ran out of memory"
    detail = {**_plan_of(pod), "kind": "memory", "container": cs["name"],
              "limitBytes": int(parse_quantity(limit, "memory limit")) if limit else None}
    return (f"pod {pod['metadata']['name']}: container {cs['name']} was OOMKilled (exit {term.get('exitCode', 137)}, "
            f"{cs.get('restartCount', 0)} restarts) at {where}"), detail


def _plan_of(pod: dict[str, Any]) -> dict[str, Any]:
    meta = pod.get("metadata") or {}
    return {"pod": meta.get("name", ""), "planHash": (meta.get("annotations") or {}).get(names.ANN_PLAN_HASH, ""),
            "placement": int((meta.get("labels") or {}).get(names.LABEL_PLACEMENT) or 0)}


def _load_out_of_memory(pod: dict[str, Any], cs: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """What a runtime's load could not allocate (its exit OUT_OF_MEMORY and termination message) in words, and the
    message with the pod's plan hash and placement (what planning.corrections reads); ("", None) when it did not."""
    term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
    if term.get("exitCode") != Exit.OUT_OF_MEMORY:
        return "", None
    try:
        m = json.loads(term.get("message") or "{}")
    except ValueError:
        m = {}
    if not isinstance(m, dict):
        m = {}
    detail = {**m, **_plan_of(pod)}
    mib = lambda n: f"{n / (1 << 20):.1f} MiB" if isinstance(n, int) else "an unknown size"  # noqa: E731
    planned = f", the plan predicted {mib(m['plannedBytes'])} there" if m.get("plannedBytes") else ""
    return (f"pod {pod['metadata']['name']}: the runtime ran out of memory loading the model: the "
            f"{m.get('what', 'a buffer')} on {m.get('device', 'a device')} could not be allocated "
            f"({mib(m.get('requestedBytes'))} asked{planned}; {cs.get('restartCount', 0)} restarts); lower "
            "spec.inference.ctxSize or parallel, or pin a smaller spec.model.variant"), detail


def _gpu_unavailable(pod: dict[str, Any], cs: dict[str, Any]) -> str:
    """Why a runtime exited GPU_UNAVAILABLE (llama.cpp saw fewer GPUs than planned), with what to do; "" if not."""
    term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
    if term.get("exitCode") != Exit.GPU_UNAVAILABLE:
        return ""
    try:
        m = json.loads(term.get("message") or "{}")
    except ValueError:
        m = {}
    if not isinstance(m, dict):
        m = {}
    return (f"pod {pod['metadata']['name']} on {(pod.get('spec') or {}).get('nodeName') or 'its node'}: the runtime "
            f"found {m.get('found', 'fewer')} of the {m.get('wanted', 'planned')} GPU(s) its plan gives it and did "
            f"not load: {m.get('cause') or 'llama.cpp saw no GPU'} ({cs.get('restartCount', 0)} restarts)")


# What ready runtime pods' llama.cpp offloaded, from their startup line. Read once per pod; a pod whose log does not
# have the line yet is asked again after RECHECK_S, and one whose log cannot be read (kwok: no kubelet) never.
RECHECK_S = 60.0
_OFFLOADED: dict[str, tuple[int | None, float]] = {}  # pod uid -> (layers or None, when to ask again)
_BY_DEPLOYMENT: dict[tuple, tuple[int | None, float]] = {}  # (uid, generation, ready, updated) -> the same, fewest
_OFFLOAD_LINE = re.compile(r"r1-runtime serve: llama.cpp offloaded (\d+)/(\d+) layers to GPU")


def _remember(memo: dict, key, value: int | None, again: float) -> int | None:
    if len(memo) > 4096:
        memo.clear()
    memo[key] = (value, again)
    return value


def _offloaded(api, namespace: str, pod: dict[str, Any]) -> int | None:
    uid, now = pod["metadata"].get("uid", ""), time.monotonic()
    hit = _OFFLOADED.get(uid)
    if hit is not None and (hit[0] is not None or now < hit[1]):
        return hit[0]
    text = _pod_log(api, namespace, pod, [("container", "runtime"), ("limitBytes", "65536")])
    if text is None:  # no reachable kubelet: nothing known, and not asked again
        return _remember(_OFFLOADED, uid, None, float("inf"))
    m = _OFFLOAD_LINE.search(text)
    return _remember(_OFFLOADED, uid, int(m.group(1)) if m else None, now + RECHECK_S)


def _own_pods(api, namespace: str, dep: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods of this Deployment (each placement's selects its own)."""
    return _pods(api, namespace, names.selector_string(dep["spec"]["selector"]["matchLabels"]))


def _ready_offload(api, namespace: str, dep: dict[str, Any]) -> int | None:
    """The fewest layers any ready pod of the Deployment offloaded; the pods are listed only when its ready pods
    changed (or, while unknown, every RECHECK_S)."""
    meta, st = dep["metadata"], dep.get("status") or {}
    if not int(st.get("readyReplicas") or 0):
        return None
    key, now = (meta.get("uid", ""), meta.get("generation"), st.get("readyReplicas"), st.get("updatedReplicas")), \
        time.monotonic()
    hit = _BY_DEPLOYMENT.get(key)
    if hit is not None and (hit[0] is not None or now < hit[1]):
        return hit[0]
    fewest = None
    for pod in _own_pods(api, namespace, dep):
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        if statuses and all(cs.get("ready") for cs in statuses):
            got = _offloaded(api, namespace, pod)
            if got is not None:
                fewest = got if fewest is None else min(fewest, got)
    return _remember(_BY_DEPLOYMENT, key, fewest, now + RECHECK_S)


def runtime(api, namespace: str, dep: dict[str, Any] | None) -> RuntimeObservation:
    """One placement's runtime as its live Deployment shows it, plus why its pods wait when they are not ready."""
    if dep is None:
        return RuntimeObservation()
    st, meta = dep.get("status") or {}, dep["metadata"]
    failing, failing_reason = "", "RuntimeFailing"
    for c in st.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            failing = f"Deployment {meta['name']}: {c.get('message', 'progress deadline exceeded')}"
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            failing = f"Deployment {meta['name']}: {c.get('message', '')}"
    ready = int(st.get("readyReplicas") or 0)
    replicas = int((dep.get("spec") or {}).get("replicas") or 0)
    waiting = unschedulable = ""
    oom_detail = None
    offloaded = _ready_offload(api, namespace, dep)
    if ready < replicas:
        for pod in _own_pods(api, namespace, dep):
            pst = pod.get("status") or {}
            for c in pst.get("conditions") or []:
                if c.get("type") == "PodScheduled" and c.get("status") == "False":
                    waiting = f"pod {pod['metadata']['name']} {c.get('reason')}: {c.get('message', '')}"
                    if c.get("reason") == "Unschedulable":
                        unschedulable = waiting
            for cs in pst.get("containerStatuses") or []:
                reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason", "")
                killed, killed_detail = _oom_killed(pod, cs)
                load_oom, detail = _load_out_of_memory(pod, cs)
                no_gpu = _gpu_unavailable(pod, cs)
                if no_gpu:  # never a plan correction: fewer layers would not bring the GPU
                    failing, failing_reason = no_gpu, "GPUUnavailable"
                elif load_oom:
                    failing, failing_reason, oom_detail = load_oom, "OutOfMemory", detail
                elif killed:
                    failing, failing_reason, oom_detail = killed, "OutOfMemory", killed_detail
                elif reason in _STUCK:
                    failing = f"pod {pod['metadata']['name']}: container {cs['name']} {reason}"
    return RuntimeObservation(
        exists=True, replicas=replicas, ready_replicas=ready, updated_replicas=int(st.get("updatedReplicas") or 0),
        up_to_date=int(st.get("observedGeneration") or 0) >= int(meta.get("generation") or 0),
        failing=failing, waiting=waiting, failing_reason=failing_reason, offloaded_layers=offloaded,
        unschedulable=unschedulable, load_oom=oom_detail)
