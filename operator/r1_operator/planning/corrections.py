"""Plan corrections (pure): a runtime load that ran out of GPU memory becomes bytes the planner keeps free there.

The runtime's termination message (exit OUT_OF_MEMORY) names the device, the bytes it asked for, the plan's
prediction and, when llama.cpp logged it, the device's free memory. The bytes missing are what the plan put on
that device beyond what was free (or, without the free figure, what the failed allocation asked beyond its
prediction), plus a margin; the next plan puts at most what is left of the failed plan's bytes on each GPU of
that node (`limitBytes`), so it offloads fewer layers. Corrections are kept in status.plan.corrections, so an operator restart keeps them and every re-plan
starts from them. After MAX_PER_NODE on one node the operator stops correcting and the R1Deployment stays
Degraded, reason OutOfMemory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from r1_operator.planning.inventory import NodeCapacity

MiB = 1 << 20
MAX_PER_NODE = 3
MARGIN = 0.05  # of the bytes the plan put on the device: a correction always takes something off
MIN_MARGIN = MiB


def correction(oom: dict[str, Any], placement: dict[str, Any], now: str) -> dict[str, Any] | None:
    """The correction for a load that ran out of memory on a GPU of `placement` (None for a CPU-side failure:
    fewer GPU layers would put more there, not less)."""
    device = str(oom.get("planDevice") or "")
    if not device.startswith("gpu"):
        return None
    on_device = next((int(d.get("total") or 0) for d in placement.get("memory") or [] if d.get("device") == device), 0)
    free, asked, predicted = oom.get("freeBytes"), oom.get("requestedBytes"), oom.get("plannedBytes")
    if isinstance(free, int) and on_device:
        missing = on_device - free
    else:
        missing = (asked or 0) - (predicted or 0)
    less = max(missing, 0) + max(int(MARGIN * on_device), MIN_MARGIN)
    return {"node": placement.get("node") or "", "placement": int(placement.get("id", 0)), "device": device,
            "what": str(oom.get("what") or "a buffer"), "bytes": less, "limitBytes": max(on_device - less, 0),
            "requestedBytes": asked if isinstance(asked, int) else None,
            "freeBytes": free if isinstance(free, int) else None, "plannedBytes": on_device,
            "planHash": str(oom.get("planHash") or ""), "at": now}


def apply(nodes: Iterable[NodeCapacity], corrections: Iterable[dict[str, Any]], headroom: int) -> list[NodeCapacity]:
    """The nodes as the planner should see them: each GPU of a corrected node no larger than its lowest limit
    plus the headroom the planner keeps free anyway."""
    limit: dict[str, int] = {}
    for c in corrections:
        limit[c["node"]] = min(limit.get(c["node"], 1 << 62), int(c.get("limitBytes") or 0))
    return [replace(n, gpu_memory_bytes=min(n.gpu_memory_bytes, limit[n.name] + headroom)) if n.name in limit else n
            for n in nodes]


def describe(c: dict[str, Any]) -> str:
    said = f", {c['freeBytes'] / MiB:.0f} MiB free" if c.get("freeBytes") is not None else ""
    return (f"the runtime on {c['node']} ran out of GPU memory loading ({c['what']} on {c['device']}: the plan put "
            f"{c['plannedBytes'] / MiB:.0f} MiB there{said}); at most {c['limitBytes'] / MiB:.0f} MiB on each GPU "
            "there from now on")
