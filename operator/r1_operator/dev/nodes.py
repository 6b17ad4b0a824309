"""Node shapes of the dev cluster → Node objects for kwok (pure)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

KWOK_ANNOTATION = "kwok.x-k8s.io/node"


class NodeShape(BaseModel):
    """One simulated node. Quantities use Kubernetes notation (64Gi, 2Ti)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=63)
    gpus: int = Field(default=0, ge=0, le=64)
    gpu_memory_mib: int | None = Field(default=None, alias="gpuMemoryMiB", ge=1)
    gpu_product: str = Field(default="NVIDIA-Simulated", alias="gpuProduct")
    cpu: str = "16"
    memory: str = "64Gi"
    ephemeral_storage: str = Field(default="1Ti", alias="ephemeralStorage")
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[dict[str, str]] = Field(default_factory=list)
    unschedulable: bool = False

    def to_node(self) -> dict[str, Any]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
        }
        resources_ = {
            "cpu": self.cpu,
            "memory": self.memory,
            "ephemeral-storage": self.ephemeral_storage,
            "pods": "110",
        }
        if self.gpus:
            if self.gpu_memory_mib is None:
                raise ValueError(f"node {self.name}: gpuMemoryMiB is required when gpus > 0")
            labels |= {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": self.gpu_product,
                "nvidia.com/gpu.memory": str(self.gpu_memory_mib),
                "nvidia.com/gpu.count": str(self.gpus),
            }
            resources_["nvidia.com/gpu"] = str(self.gpus)
        labels |= self.labels
        spec: dict[str, Any] = {}
        if self.taints:
            spec["taints"] = self.taints
        if self.unschedulable:
            spec["unschedulable"] = True
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
            "spec": spec,
            "status": {"capacity": dict(resources_), "allocatable": dict(resources_)},
        }


def load_shapes(path: str | Path | None = None) -> list[NodeShape]:
    """Read node shapes from a YAML file ({nodes: [...]}); the built-in four when path is None."""
    if path is None:
        text = resources.files("r1_operator.dev").joinpath("data/nodes.yaml").read_text()
        source = "built-in nodes.yaml"
    else:
        text = Path(path).read_text()
        source = str(path)
    doc = yaml.safe_load(text) or {}
    items = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{source}: expected a mapping with a non-empty 'nodes' list")
    shapes = [NodeShape.model_validate(item) for item in items]
    names = [s.name for s in shapes]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: node names must be unique, got {names}")
    return shapes
