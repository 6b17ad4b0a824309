"""GPU-holding pods of every namespace, kept current by a list and watch in a thread of its own.

An operator that serves some namespaces has kopf watch only those, but a GPU held by a pod in any namespace is
not free: this keeps the cluster-wide view the planner counts GPUs from (the chart grants list and watch of pods
cluster-wide for it, and nothing more).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from r1_operator.planning.inventory import gpu_pod, holds_gpu

log = logging.getLogger("r1_operator")


class NotListed(RuntimeError):
    pass
WATCH_TIMEOUT_S = 300
RETRY_S = 5.0


class GpuPodWatch:
    def __init__(self, api: Any) -> None:
        self.api = api
        self._pods: dict[str, dict[str, Any]] = {}  # uid -> gpu_pod()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None

    def pods(self) -> list[dict[str, Any]]:
        """The GPU-holding pods; raises NotListed until the first list succeeded (GPUs must never look free for
        want of a list: a reconcile then fails and kopf retries it)."""
        if not self._synced.is_set():
            raise NotListed("GPU-holding pods of the cluster not listed yet (the API server, or the chart's "
                            "cluster-wide list/watch of pods, refused): plans wait for it")
        with self._lock:
            return list(self._pods.values())

    def start(self, wait_s: float = 10.0) -> bool:
        """Follow the pods in a thread (it lists first, and again after any failure); wait up to wait_s for the
        first list. True when listed."""
        self._thread = threading.Thread(target=self._run, name="gpu-pod-watch", daemon=True)
        self._thread.start()
        return self._synced.wait(wait_s)

    def stop(self) -> None:
        self._stop.set()

    def _list(self) -> str:
        from kubernetes import client

        raw = client.CoreV1Api(self.api).list_pod_for_all_namespaces(_preload_content=False, _request_timeout=60)
        doc = json.loads(raw.data)
        pods = {}
        for p in doc.get("items") or []:
            if holds_gpu(p.get("spec") or {}):
                pods[p["metadata"]["uid"]] = gpu_pod(p)
        with self._lock:
            self._pods = pods
        self._synced.set()
        return doc["metadata"]["resourceVersion"]

    def _run(self) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.api)
        version = self._relist()
        while not self._stop.is_set():
            try:
                w = watch.Watch()
                for event in w.stream(core.list_pod_for_all_namespaces, resource_version=version,
                                      timeout_seconds=WATCH_TIMEOUT_S, allow_watch_bookmarks=True):
                    if self._stop.is_set():
                        w.stop()
                        return
                    obj = event.get("raw_object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    self._apply(event.get("type", ""), obj)
            except ApiException as exc:
                if exc.status == 410:  # the version expired: list again
                    version = self._relist()
                    continue
                log.warning("GPU pod watch: %s %s; listing again in %.0f s", exc.status, exc.reason, RETRY_S)
                self._stop.wait(RETRY_S)
                version = self._relist()
            except Exception as exc:  # noqa: BLE001 - a dropped connection must never end the watch
                log.warning("GPU pod watch: %s; listing again in %.0f s", exc, RETRY_S)
                self._stop.wait(RETRY_S)
                version = self._relist()

    def _relist(self) -> str:
        while not self._stop.is_set():
            try:
                return self._list()
            except Exception as exc:  # noqa: BLE001
                log.warning("GPU pod list failed: %s; again in %.0f s", exc, RETRY_S)
                self._stop.wait(RETRY_S)
        return ""

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "BOOKMARK":
            return
        uid = (obj.get("metadata") or {}).get("uid")
        if not uid:
            return
        with self._lock:
            if kind == "DELETED" or not holds_gpu(obj.get("spec") or {}):
                self._pods.pop(uid, None)
            else:
                self._pods[uid] = gpu_pod(obj)
