"""The operator's own Prometheus metrics (reconciles, errors, durations, per-deployment cache and readiness)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("r1_operator_reconciles", "Reconciles by kind (reconcile: re-plan and apply; refresh: status "
                     "from children) and result.", ["kind", "result"])
ERRORS = Counter("r1_operator_reconcile_errors", "Reconciles that raised, by kind.", ["kind"])
DURATION = Histogram("r1_operator_reconcile_duration_seconds", "Time per reconcile, by kind.", ["kind"],
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
TRANSITIONS = Counter("r1_operator_condition_transitions", "Condition transitions, by reason.", ["reason"])
CACHE_PROGRESS = Gauge("r1_operator_cache_progress_ratio", "Fraction of the variant fetched into the cache volume.",
                       ["namespace", "r1deployment", "variant"])
CACHE_BYTES = Gauge("r1_operator_cache_bytes", "Bytes fetched into the cache volume.", ["namespace", "r1deployment"])
CACHE_FAILED = Gauge("r1_operator_cache_failed", "1 when the model download failed for good.",
                     ["namespace", "r1deployment"])
READY = Gauge("r1_operator_deployment_ready", "1 when the R1Deployment's Ready condition is True.",
              ["namespace", "r1deployment"])
for _kind in ("reconcile", "refresh"):  # present from the start, so rates and alerts see zeros, not gaps
    ERRORS.labels(_kind)
    RECONCILES.labels(_kind, "ok")
    RECONCILES.labels(_kind, "error")
PLAN = Gauge("r1_operator_plan_info", "The plan of each R1Deployment (value 1).",
             ["namespace", "r1deployment", "variant", "gpu_layers", "node", "mode"])


@contextmanager
def timed(kind: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        ERRORS.labels(kind).inc()
        RECONCILES.labels(kind, "error").inc()
        raise
    else:
        RECONCILES.labels(kind, "ok").inc()
    finally:
        DURATION.labels(kind).observe(time.perf_counter() - start)


def transition(reason: str) -> None:
    TRANSITIONS.labels(reason).inc()


_PLAN_LABELS: dict[tuple[str, str], tuple[str, ...]] = {}  # (namespace, name) → labels of its PLAN series


def record_status(namespace: str, name: str, status: dict) -> None:
    plan, cache = status.get("plan") or {}, status.get("cache") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
    READY.labels(namespace, name).set(1 if ready else 0)
    CACHE_BYTES.labels(namespace, name).set(cache.get("bytesDone") or 0)
    CACHE_FAILED.labels(namespace, name).set(1 if cache.get("phase") == "Failed" else 0)
    labels = ((namespace, name, plan["variant"], plan.get("gpuLayers", ""), plan.get("node", ""), plan.get("mode", ""))
              if plan.get("variant") else None)
    if _PLAN_LABELS.get((namespace, name)) != labels:
        _forget_plan(namespace, name)
        if labels:
            PLAN.labels(*labels).set(1)
            _PLAN_LABELS[(namespace, name)] = labels
    if labels:
        CACHE_PROGRESS.labels(namespace, name, plan["variant"]).set((cache.get("percent") or 0) / 100)


def _forget_plan(namespace: str, name: str) -> None:
    old = _PLAN_LABELS.pop((namespace, name), None)
    if old:
        PLAN.remove(*old)
        CACHE_PROGRESS.remove(namespace, name, old[2])


def forget(namespace: str, name: str) -> None:
    _forget_plan(namespace, name)
    for gauge in (READY, CACHE_BYTES, CACHE_FAILED):
        try:
            gauge.remove(namespace, name)
        except KeyError:
            pass


def serve(port: int) -> None:
    start_http_server(port, registry=REGISTRY)
