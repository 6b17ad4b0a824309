"""Plan corrections (pure): a runtime that ran out of memory becomes bytes the planner accounts for on its node.

Corrections are kept in status.plan.corrections, so an operator restart keeps them and every re-plan starts from
them. Two kinds share the list, told apart by `kind` (one stored without a kind is a GPU correction):
- "gpu": a load that ran out of GPU memory. The runtime's termination message (exit OUT_OF_MEMORY) names the
  device, the bytes it asked for, the plan's prediction and, when llama.cpp logged it, the device's free memory.
  The bytes missing are what the plan put on that device beyond what was free (or, without the free figure,
  what the failed allocation asked beyond its prediction), plus a margin; the next plan puts at most what is
  left of the failed plan's bytes on each GPU of that node (`limitBytes`), so it offloads fewer layers.
- "memory": a runtime container OOMKilled at the memory limit the operator gave it. The kernel kills at the
  limit, so the runtime needed more than it: the correction adds the larger of MEMORY_MARGIN of the limit and
  MIN_MEMORY_RAISE (`bytes`). Every later runtime on that node gets the corrections' bytes beyond the plan's
  resident figure and margin (`memory_extra`), and the planner sees that node's RAM less them: where the raised
  figure no longer fits, it plans memory-mapped weights or a smaller variant, as the spec allows. A memory
  figure the spec sets (spec.resources) is the user's to change, and is never corrected.
After MAX_PER_NODE of a kind on one node the operator stops correcting and the R1Deployment stays Degraded,
reason OutOfMemory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from r1_operator.planning.inventory import NodeCapacity

MiB = 1 << 20
MAX_PER_NODE = 3  # of each kind
MARGIN = 0.05  # of the bytes the plan put on the device: a correction always takes something off
MIN_MARGIN = MiB
MEMORY = "memory"
MEMORY_MARGIN = 0.10  # of the limit the container was killed at
MIN_MEMORY_RAISE = 256 * MiB


def kind(c: dict[str, Any]) -> str:
    return str(c.get("kind") or "gpu")


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
    return {"kind": "gpu", "node": placement.get("node") or "", "placement": int(placement.get("id", 0)), "device": device,
            "what": str(oom.get("what") or "a buffer"), "bytes": less, "limitBytes": max(on_device - less, 0),
            "requestedBytes": asked if isinstance(asked, int) else None,
            "freeBytes": free if isinstance(free, int) else None, "plannedBytes": on_device,
            "planHash": str(oom.get("planHash") or ""), "at": now}


def memory_correction(oom: dict[str, Any], placement: dict[str, Any], now: str) -> dict[str, Any]:
    """The correction for a runtime container OOMKilled at `oom["limitBytes"]`, the limit its pod had."""
    limit = int(oom.get("limitBytes") or 0)
    more = max(int(MEMORY_MARGIN * limit), MIN_MEMORY_RAISE)
    more = -(-more // MiB) * MiB
    return {"kind": MEMORY, "node": placement.get("node") or "", "placement": int(placement.get("id", 0)),
            "device": "cpu", "what": "runtime memory", "bytes": more, "plannedBytes": limit,
            "memoryBytes": limit + more, "planHash": str(oom.get("planHash") or ""), "at": now}


def memory_extra(corrections: Iterable[dict[str, Any]], node: str) -> int:
    """Bytes every runtime on `node` gets beyond its plan's resident figure and margin: the memory corrections'."""
    return sum(int(c.get("bytes") or 0) for c in corrections if kind(c) == MEMORY and c.get("node") == node)


def apply(nodes: Iterable[NodeCapacity], corrections: Iterable[dict[str, Any]], headroom: int) -> list[NodeCapacity]:
    """The nodes as the planner should see them: each GPU of a corrected node no larger than its lowest limit
    plus the headroom the planner keeps free anyway, and its RAM less the memory corrections' bytes."""
    corrections = list(corrections)
    limit: dict[str, int] = {}
    for c in corrections:
        if kind(c) != MEMORY:
            limit[c["node"]] = min(limit.get(c["node"], 1 << 62), int(c.get("limitBytes") or 0))
    out = []
    for n in nodes:
        if n.name in limit:
            n = replace(n, gpu_memory_bytes=min(n.gpu_memory_bytes, limit[n.name] + headroom))
        extra = memory_extra(corrections, n.name)
        out.append(replace(n, ram_bytes=max(n.ram_bytes - extra, 0)) if extra else n)
    return out


def ram_notes(corrections: Iterable[dict[str, Any]]) -> list[str]:
    """What the plan's RAM figures leave out: per node, the memory corrections taken off it."""
    corrections = list(corrections)
    nodes = sorted({c.get("node") or "" for c in corrections if kind(c) == MEMORY})
    return [f"memory corrections give each runtime on {n} {memory_extra(corrections, n) / (1 << 30):.1f} GiB more "
            "than its plan (status.plan.corrections); the RAM figures for it here are less that" for n in nodes]


def describe(c: dict[str, Any]) -> str:
    if kind(c) == MEMORY:
        return (f"the runtime on {c['node']} was OOMKilled at its memory limit of {c['plannedBytes'] / MiB:.0f} MiB; "
                f"{c['bytes'] / MiB:.0f} MiB more for each runtime there from now on "
                f"({c['memoryBytes'] / MiB:.0f} MiB for that plan)")
    said = f", {c['freeBytes'] / MiB:.0f} MiB free" if c.get("freeBytes") is not None else ""
    return (f"the runtime on {c['node']} ran out of GPU memory loading ({c['what']} on {c['device']}: the plan put "
            f"{c['plannedBytes'] / MiB:.0f} MiB there{said}); at most {c['limitBytes'] / MiB:.0f} MiB on each GPU "
            "there from now on")
