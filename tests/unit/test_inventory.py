from __future__ import annotations

from decimal import Decimal

import pytest

from r1_operator.dev.nodes import load_shapes
from r1_operator.planning.inventory import (
    Taint, Toleration, gpus_in_use, hypothetical, inventory, node_capacity, parse_quantity,
)

GiB = 1 << 30


@pytest.mark.parametrize("text, value", [("64Gi", 64 * GiB), ("1Ti", 1 << 40), ("16", 16), ("500m", Decimal("0.5")),
                                         ("1G", 10**9), ("1e3", 1000), ("123456789", 123456789)])
def test_quantities(text, value):
    assert parse_quantity(text, "x") == value


def test_bad_quantity_names_the_field():
    with pytest.raises(ValueError, match="node n: allocatable memory: 'lots'"):
        node_capacity({"metadata": {"name": "n"}, "status": {"allocatable": {"memory": "lots"}}})


def _ready(node: dict) -> dict:
    node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return node


def test_dev_cluster_shapes_become_capacities():
    caps = {c.name: c for c in inventory([_ready(s.to_node()) for s in load_shapes()])}
    assert (caps["gpu-2x80g"].gpus, caps["gpu-2x80g"].gpu_memory_bytes, caps["gpu-2x80g"].ram_bytes) == (2, 80 * GiB, 256 * GiB)
    assert caps["cpu-only"].gpus == 0 and caps["cpu-only"].ram_bytes == 256 * GiB
    assert all(c.ready and c.schedulable for c in caps.values())


@pytest.mark.parametrize("label", ["abc", "-5", "80GiB", "0"])
def test_malformed_gpu_memory_label_disables_gpus_and_says_which_label(label):
    node = {"metadata": {"name": "g", "labels": {"nvidia.com/gpu.memory": label}},
            "status": {"allocatable": {"nvidia.com/gpu": "1", "memory": "64Gi"}}}
    cap = node_capacity(node)
    assert cap.gpus == 0
    assert any("nvidia.com/gpu.memory" in p and repr(label) in p for p in cap.problems)


def test_missing_gpu_memory_label():
    cap = node_capacity({"metadata": {"name": "g"}, "status": {"allocatable": {"nvidia.com/gpu": "2"}}})
    assert cap.gpus == 0 and "no nvidia.com/gpu.memory label" in cap.problems[0]


def test_gpus_requested_by_pods_count_as_used():
    pods = [
        {"metadata": {"name": "a"}, "spec": {"nodeName": "n", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
         "status": {"phase": "Running"}},
        {"metadata": {"name": "b"}, "spec": {"nodeName": "n", "containers": [{"resources": {"requests": {"nvidia.com/gpu": "1"}}}]},
         "status": {"phase": "Pending"}},
        {"metadata": {"name": "done"}, "spec": {"nodeName": "n", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}]},
         "status": {"phase": "Succeeded"}},
        {"metadata": {"name": "unbound"}, "spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}]}},
    ]
    assert gpus_in_use(pods) == {"n": 2}
    node = _ready(load_shapes()[2].to_node())  # gpu-2x80g
    node["metadata"]["name"] = "n"
    (cap,) = inventory([node], pods)
    assert cap.gpus_used == 2 and cap.gpus_free == 0


def test_tolerations():
    t = Taint("dedicated", "llm", "NoSchedule")
    assert Toleration("dedicated", "Equal", "llm").tolerates(t)
    assert Toleration("dedicated", "Exists").tolerates(t)
    assert Toleration(operator="Exists").tolerates(t)
    assert not Toleration("dedicated", "Equal", "web").tolerates(t)
    assert not Toleration("dedicated", "Exists", effect="NoExecute").tolerates(t)


@pytest.mark.parametrize("args, flag", [((-1, 80, 64), "--gpu-count"), ((1, -80, 64), "--gpu-memory-gb"),
                                        ((1, 80, -1), "--ram-gb"), ((1, 80, 1e9), "--ram-gb"), ((1, 0, 64), "--gpu-memory-gb")])
def test_hypothetical_rejects_absurd_flags(args, flag):
    with pytest.raises(ValueError, match=flag):
        hypothetical(*args)
