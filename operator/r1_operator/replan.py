"""The periodic re-plan: nodes change without touching the R1Deployments, so plans are re-checked here.

Every `replan_interval_s` the inventory's digest is compared; when it changed, or every
`resync_interval_s` regardless (a safety net for missed events), each R1Deployment is
reconciled from its live object. Those with no feasible plan are re-checked every interval
whatever the digest says: they wait for a node to come back, and no change may be missed. A loop of our own rather than a kopf timer: kopf puts a
finalizer on resources with timers, and garbage collection already removes every child.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("r1_operator")


def inventory_digest(nodes: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]]) -> str:
    """What a plan depends on, without the heartbeats that change every few seconds."""
    shape = sorted(
        (n["metadata"]["name"], sorted(n["metadata"]["labels"].items()), n["spec"]["unschedulable"],
         json.dumps(n["spec"]["taints"], sort_keys=True), sorted(n["status"]["allocatable"].items()),
         [c.get("status") for c in n["status"]["conditions"]])
        for n in nodes)
    held = sorted((p["metadata"]["uid"], p["spec"]["nodeName"] or "", p["status"]["phase"] or "") for p in pods)
    return hashlib.sha256(json.dumps([shape, held], default=str).encode()).hexdigest()


def _unschedulable(nodes: Iterable[dict[str, Any]]) -> str:
    names = sorted(n["metadata"]["name"] for n in nodes if n["spec"]["unschedulable"])
    return ", ".join(names) if names else "none"


async def replan_loop(deployments: Callable[[], Iterable[tuple[str, str]]], nodes: Callable[[], Iterable[dict]],
                      pods: Callable[[], Iterable[dict]], replan: Callable[[str, str], None],
                      interval_s: float, resync_s: float,
                      waiting: Callable[[], Iterable[tuple[str, str]]] = lambda: ()) -> None:
    loop = asyncio.get_running_loop()
    last, last_full = "", loop.time()
    while True:
        await asyncio.sleep(interval_s)
        try:
            digest = inventory_digest(nodes(), pods())
        except Exception as exc:  # noqa: BLE001 - an inventory not listed yet: try again next interval
            log.warning("re-plan skipped: %s", exc)
            continue
        if digest == last and loop.time() - last_full < resync_s:
            todo = list(waiting())  # no feasible plan yet: checked every interval
            if todo:
                await _replan_all(loop, todo, replan)
            continue
        why = "the inventory changed" if digest != last else "the periodic resync"
        last, last_full = digest, loop.time()
        todo = list(deployments())
        started = loop.time()
        await _replan_all(loop, todo, replan)
        log.info("re-checked the plans of %d R1Deployment(s) (%s; unschedulable nodes: %s) in %.1f s: %s", len(todo),
                 why, _unschedulable(nodes()), loop.time() - started, ", ".join(f"{ns}/{n}" for ns, n in todo)[:2000])


async def _replan_all(loop: asyncio.AbstractEventLoop, todo: list[tuple[str, str]],
                      replan: Callable[[str, str], None]) -> None:
    for namespace, name in todo:
        try:
            await loop.run_in_executor(None, replan, namespace, name)
        except Exception as exc:  # one deployment's failure must not stop the others' checks
            log.warning("re-plan of %s/%s failed: %s", namespace, name, exc)
