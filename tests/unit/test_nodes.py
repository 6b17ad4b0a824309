from __future__ import annotations

import pytest
from pydantic import ValidationError

from r1_operator.dev.nodes import NodeShape, load_shapes


def test_builtin_shapes_are_the_four_documented_nodes():
    shapes = {s.name: s for s in load_shapes()}
    assert set(shapes) == {"gpu-24g", "gpu-80g", "gpu-2x80g", "cpu-only"}
    assert (shapes["gpu-24g"].gpus, shapes["gpu-24g"].gpu_memory_mib, shapes["gpu-24g"].memory) == (1, 24 * 1024, "64Gi")
    assert (shapes["gpu-80g"].gpus, shapes["gpu-80g"].gpu_memory_mib, shapes["gpu-80g"].memory) == (1, 80 * 1024, "512Gi")
    assert (shapes["gpu-2x80g"].gpus, shapes["gpu-2x80g"].gpu_memory_mib, shapes["gpu-2x80g"].memory) == (2, 80 * 1024, "256Gi")
    assert (shapes["cpu-only"].gpus, shapes["cpu-only"].memory) == (0, "256Gi")


def test_gpu_node_carries_gfd_labels_and_allocatable():
    node = NodeShape(name="n", gpus=2, gpuMemoryMiB=81920, gpuProduct="H100").to_node()
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.memory"] == "81920"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/gpu.product"] == "H100"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}


def test_cpu_node_has_no_gpu_resource_or_labels():
    node = NodeShape(name="c", memory="256Gi").to_node()
    assert "nvidia.com/gpu" not in node["status"]["allocatable"]
    assert not any(k.startswith("nvidia.com/") for k in node["metadata"]["labels"])


def test_gpu_node_without_memory_is_an_error_naming_the_field():
    with pytest.raises(ValueError, match="gpuMemoryMiB"):
        NodeShape(name="g", gpus=1).to_node()


@pytest.mark.parametrize("bad", [{"name": "Bad_Name"}, {"name": "n", "gpus": -1}, {"name": "n", "colour": "red"}])
def test_invalid_shapes_are_rejected(bad):
    with pytest.raises(ValidationError):
        NodeShape.model_validate(bad)


def test_duplicate_names_in_a_file_are_rejected(tmp_path):
    f = tmp_path / "n.yaml"
    f.write_text("nodes: [{name: a}, {name: a}]\n")
    with pytest.raises(ValueError, match="unique"):
        load_shapes(f)
