"""The R1Deployment CustomResourceDefinition, generated from the pydantic types.

pydantic's JSON schema is turned into a Kubernetes structural schema: $refs
inlined, titles dropped, optional (``X | None``) fields made plain optional,
OpenAPI v3.0 exclusive bounds, ``default: {}`` on nested objects so the API
server fills their defaults, and the CEL rules (``x-kubernetes-validations``)
the types carry. ``r1ctl crd`` prints it; crds/ holds the committed copy and a
test keeps the two equal.
"""

from __future__ import annotations

import copy

import yaml

from r1_operator.api import types as t

CONDITION_TYPES = [*t.CONDITIONS, *t.OPTIONAL_CONDITIONS]

_MEMORY = {"type": "array", "items": {"type": "object", "properties": {
    "device": {"type": "string"}, "layers": {"type": "integer"},
    "weights": {"type": "integer", "format": "int64"}, "kvCache": {"type": "integer", "format": "int64"},
    "compute": {"type": "integer", "format": "int64"}, "total": {"type": "integer", "format": "int64"}}}}

_STATUS = {
    "type": "object",
    "properties": {
        "observedGeneration": {"type": "integer", "format": "int64"},
        "conditions": {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
            "items": {
                "type": "object",
                "required": ["type", "status"],
                "properties": {
                    "type": {"type": "string", "enum": CONDITION_TYPES},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "reason": {"type": "string", "maxLength": 1024},
                    "message": {"type": "string", "maxLength": 32768},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                    "observedGeneration": {"type": "integer", "format": "int64"},
                },
            },
        },
        "plan": {
            "type": "object",
            "description": "The plan the runtime is built from (planning.plan.Plan.as_dict).",
            "properties": {
                "variant": {"type": "string"},
                "variantLabel": {"type": "string"},
                "nLayers": {"type": "integer", "description": "The model's repeating blocks."},
                "nGpuLayers": {"type": "integer", "description": "llama.cpp --n-gpu-layers: layers on GPU, the "
                               "output head counting as one (offloaded first)."},
                "gpuLayers": {"type": "string", "description": "nGpuLayers/(nLayers+1), as llama.cpp logs it."},
                "mode": {"type": "string", "description": "gpu, hybrid (GPU and CPU), cpu, mmap or none."},
                "node": {"type": "string"},
                "gpus": {"type": "integer"},
                "gpuProduct": {"type": "string"},
                "tensorSplit": {"type": "array", "items": {"type": "integer"},
                                "description": "llama.cpp --tensor-split proportions per GPU."},
                "modelBytes": {"type": "integer", "format": "int64", "description": "The variant's files."},
                "diskBytes": {"type": "integer", "format": "int64",
                              "description": "The cache volume's peak during fetch and merge."},
                "cpuMemoryBytes": {"type": "integer", "format": "int64"},
                "memory": _MEMORY,
                "offload": {"type": "string"},
                "replicas": {"type": "integer", "description": "Replicas wanted (spec.replicas; at least one is "
                             "planned)."},
                "placedReplicas": {"type": "integer", "description": "Replicas the placements hold."},
                "nodes": {"type": "string", "description": "The one node, or how many, for kubectl get."},
                "shortfall": {"type": "string", "description": "Why fewer replicas than wanted were placed."},
                "placements": {"type": "array", "description": "Where the replicas run, each node with its own "
                               "offload (planning.placement); the first is the plan's own node.", "items": {
                    "type": "object", "properties": {
                        "id": {"type": "integer", "description": "Stable; names the placement's Deployment."},
                        "node": {"type": "string"}, "replicas": {"type": "integer"}, "gpus": {"type": "integer"},
                        "gpuProduct": {"type": "string"}, "nGpuLayers": {"type": "integer"},
                        "gpuLayers": {"type": "string"}, "tensorSplit": {"type": "array", "items": {"type": "integer"}},
                        "mode": {"type": "string"}, "cpuMemoryBytes": {"type": "integer", "format": "int64"},
                        "memory": _MEMORY}}},
                "corrections": {"type": "array", "description": "Runtimes that ran out of memory, and what the "
                                "plans of their node allow since (planning.corrections): for a load out of GPU "
                                "memory, the most each GPU holds; for a container OOMKilled at its memory limit, "
                                "the bytes each runtime there gets beyond its plan.", "items": {
                    "type": "object", "properties": {
                        "kind": {"type": "string", "description": "gpu (also when absent) or memory."},
                        "node": {"type": "string"}, "placement": {"type": "integer"}, "device": {"type": "string"},
                        "what": {"type": "string"},
                        "bytes": {"type": "integer", "format": "int64",
                                  "description": "What the correction takes off the GPU, or adds to the memory."},
                        "limitBytes": {"type": "integer", "format": "int64",
                                       "description": "gpu: the most any later plan puts on each GPU of the node."},
                        "memoryBytes": {"type": "integer", "format": "int64",
                                        "description": "memory: the runtime's memory request and limit after it."},
                        "requestedBytes": {"type": "integer", "format": "int64", "nullable": True},
                        "freeBytes": {"type": "integer", "format": "int64", "nullable": True},
                        "plannedBytes": {"type": "integer", "format": "int64", "description": "gpu: what the plan "
                                         "put on the device; memory: the limit the container was killed at."},
                        "planHash": {"type": "string"},
                        "at": {"type": "string"}}}},
                "settings": {"type": "object", "properties": {
                    "ctxSize": {"type": "integer"}, "cacheTypeK": {"type": "string"}, "cacheTypeV": {"type": "string"},
                    "flashAttention": {"type": "boolean"}, "parallel": {"type": "integer"}}},
                "fits": {"type": "boolean"},
                "generation": {"type": "integer", "format": "int64", "description": "The spec generation planned."},
                "why": {"type": "string", "description": "planned, or why it was re-planned."},
                "reasons": {"type": "array", "items": {"type": "string"}},
                "warnings": {"type": "array", "items": {"type": "string"}},
            },
        },
        "cache": {
            "type": "object",
            "properties": {
                "pvc": {"type": "string"},
                "phase": {"type": "string"},
                "bytesDone": {"type": "integer", "format": "int64"},
                "bytesTotal": {"type": "integer", "format": "int64"},
                "percent": {"type": "number"},
                "display": {"type": "string", "description": "percent, or Ready, for kubectl get."},
                "rateLimited": {"type": "object", "description": "the hub's current rate-limit wait",
                                "properties": {"waitSeconds": {"type": "integer"}, "source": {"type": "string"},
                                               "by": {"type": "string"}, "until": {"type": "string"}}},
            },
        },
        "endpoint": {"type": "string"},
        "runtime": {
            "type": "object", "description": "What the ready runtime pods' llama.cpp reported at load.",
            "properties": {"offloadedLayers": {"type": "integer", "description": "Layers offloaded to GPUs "
                                               "(the output layer counts as one); the fewest of the ready pods."}},
        },
        "replicas": {"type": "integer"},
        "readyReplicas": {"type": "integer"},
        "ready": {"type": "string", "description": "readyReplicas/spec.replicas, for kubectl get."},
        "selector": {"type": "string"},
    },
}

_COLUMNS = [
    {"name": "Variant", "type": "string", "jsonPath": ".status.plan.variant"},
    {"name": "GPU-Layers", "type": "string", "jsonPath": ".status.plan.gpuLayers"},
    {"name": "Cache", "type": "string", "jsonPath": ".status.cache.display"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
    {"name": "Status", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"},
    {"name": "Node", "type": "string", "jsonPath": ".status.plan.nodes", "priority": 1},
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.plan.gpus", "priority": 1},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


_NULLABLE = "x-r1-optional"  # internal marker: the field was `X | None = None`


def _structural(node: dict, defs: dict) -> dict:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[1]]
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _structural({**copy.deepcopy(target), **extra}, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", 0) is None:
            del rest["default"]
        return {**_structural({**branches[0], **rest}, defs), _NULLABLE: True}
    out: dict = {}
    for k, v in node.items():
        if k in ("title", "$defs"):
            continue
        if k == "properties":
            out[k] = {name: _structural(p, defs) for name, p in v.items()}
        elif k == "items":
            out[k] = _structural(v, defs)
        elif k == "additionalProperties" and isinstance(v, dict):
            out[k] = _structural(v, defs)
        elif k in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(v, bool):
            out["minimum" if k == "exclusiveMinimum" else "maximum"] = v
            out[k] = True
        elif k == "additionalProperties" and isinstance(v, bool):
            continue  # structural schemas allow properties or additionalProperties; unknown fields are pruned
        else:
            out[k] = v
    if out.get("type") == "object" and "properties" in out:
        for name, p in out["properties"].items():
            # a nested object with a non-None default gets `default: {}`, so the API server fills its fields
            if p.get("type") == "object" and "properties" in p and "default" not in p and not p.get(_NULLABLE):
                p["default"] = {}
            p.pop(_NULLABLE, None)
    return out


def _fill_defaults(node: dict, value: dict) -> None:
    """Replace `default: {}` of nested objects by their full default (CEL rules are checked against defaults)."""
    for name, p in node.get("properties", {}).items():
        if p.get("type") == "object" and "properties" in p and name in value:
            if p.get("default") == {}:
                p["default"] = value[name]
            _fill_defaults(p, value[name])


def spec_schema() -> dict:
    raw = t.R1DeploymentSpec.model_json_schema(by_alias=True)
    schema = _structural(raw, raw.get("$defs", {}))
    defaults = t.R1DeploymentSpec().model_dump(by_alias=True, exclude_none=True)
    _fill_defaults(schema, defaults)
    schema["default"] = defaults
    return schema


def crd() -> dict:
    schema = {
        "type": "object",
        "description": "A DeepSeek-R1 GGUF deployment: planned onto GPU nodes, cached on a volume, served by llama.cpp.",
        "x-kubernetes-validations": [{
            # The name becomes a Service name (a DNS-1035 label) and prefixes pod and ConfigMap names.
            "rule": "self.metadata.name.size() <= 50 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
            "message": "metadata.name must be a DNS label of at most 50 characters starting with a letter "
                       "(it names the runtime Service)",
        }],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": _STATUS,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{t.PLURAL}.{t.GROUP}", "labels": {"app.kubernetes.io/part-of": "r1-operator"}},
        "spec": {
            "group": t.GROUP,
            "scope": "Namespaced",
            "names": {"kind": t.KIND, "plural": t.PLURAL, "singular": t.SINGULAR, "shortNames": t.SHORT_NAMES,
                      "listKind": f"{t.KIND}List", "categories": ["r1"]},
            "versions": [{
                "name": t.VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                                                         "statusReplicasPath": ".status.replicas",
                                                         "labelSelectorPath": ".status.selector"}},
                "additionalPrinterColumns": _COLUMNS,
            }],
        },
    }


def crd_yaml() -> str:
    header = "# Generated from operator/r1_operator/api/types.py by `r1ctl crd`; do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)
