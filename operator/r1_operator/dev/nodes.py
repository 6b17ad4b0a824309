"""Node shapes of the dev cluster → Node objects for kwok (pure)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

KWOK_ANNOTATION = "kwok.x-k8s.io/node"


class NodeShape(BaseModel):
    """One simulated node. Quantities use Kubernetes notation (64Gi, 2Ti). With gfd (the default) the GPUs carry
    GPU Feature Discovery's labels, as the GPU Operator sets them; without it only the labels given, as a cloud's
    own device plugin leaves them (GKE, EKS, AKS)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=63)
    gpus: int = Field(default=0, ge=0, le=64)
    gpu_memory_mib: int | None = Field(default=None, alias="gpuMemoryMiB", ge=1)
    gpu_product: str = Field(default="NVIDIA-Simulated", alias="gpuProduct")
    cpu: str = "16"
    memory: str = "64Gi"
    ephemeral_storage: str = Field(default="1Ti", alias="ephemeralStorage")
    gfd: bool = True
    gpu_resource: str = Field(default="nvidia.com/gpu", alias="gpuResource")
    resources: dict[str, str] = Field(default_factory=dict, description="further allocatable resources (MIG)")
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
        if self.gpus and self.gfd:
            if self.gpu_memory_mib is None:
                raise ValueError(f"node {self.name}: gpuMemoryMiB is required when gpus > 0 (gfd: true)")
            labels |= {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": self.gpu_product,
                "nvidia.com/gpu.memory": str(self.gpu_memory_mib),
                "nvidia.com/gpu.count": str(self.gpus),
            }
        if self.gpus:
            resources_[self.gpu_resource] = str(self.gpus)
        resources_ |= self.resources
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


BUILTIN_SHAPES = {"default": "nodes.yaml", "clouds": "cloud-nodes.yaml"}


def load_shapes(path: str | Path | None = None) -> list[NodeShape]:
    """Read node shapes from a YAML file ({nodes: [...]}), or a built-in set by name (BUILTIN_SHAPES: "default",
    the four of the dev cluster; "clouds", GKE, EKS, AKS and GPU Operator shapes); "default" when path is None."""
    if path is None or str(path) in BUILTIN_SHAPES:
        file = BUILTIN_SHAPES[str(path or "default")]
        text = resources.files("r1_operator.dev").joinpath(f"data/{file}").read_text()
        source = f"built-in {file}"
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
