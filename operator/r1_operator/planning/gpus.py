"""A node's GPUs from its labels and allocatable resources (pure): how many a pod may take, the memory of each,
where that figure came from, and how they are shared (MIG, time-slicing).

Clusters label GPUs differently, so the memory figure is read from the first of:
1. NVIDIA GPU Feature Discovery (the GPU Operator): `nvidia.com/gpu.memory`, or for a MIG resource of the mixed
   strategy `nvidia.com/mig-<profile>.memory`;
2. a MIG partition without GFD (GKE's `cloud.google.com/gke-gpu-partition-size`): the profile's memory;
3. the operator's own setting (chart value `gpuMemoryByLabel`: a label `key=value` → MiB);
4. the built-in tables below: GKE's `cloud.google.com/gke-accelerator`, the cloud instance type
   (`node.kubernetes.io/instance-type`: EC2, Azure), or a product name (GFD's, Karpenter's, AMD's);
5. Karpenter's AWS label `karpenter.k8s.aws/instance-gpu-memory` (MiB per GPU, EC2's nominal figure, a few
   percent above what the card offers: hence after the tables).
Figures in the tables are a card's total as nvidia-smi (or rocm-smi) reports it, in MiB.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

MiB = 1 << 20
GPU_RESOURCE = "nvidia.com/gpu"
GFD_MEMORY = "nvidia.com/gpu.memory"
GFD_PRODUCT = "nvidia.com/gpu.product"
GFD_COUNT = "nvidia.com/gpu.count"
GFD_REPLICAS = "nvidia.com/gpu.replicas"
GFD_SHARING = "nvidia.com/gpu.sharing-strategy"
MIG_STRATEGY = "nvidia.com/mig.strategy"
MIG_PREFIX = "nvidia.com/mig-"
GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
GKE_PARTITION = "cloud.google.com/gke-gpu-partition-size"
GKE_SHARING = "cloud.google.com/gke-gpu-sharing-strategy"
GKE_SHARED_CLIENTS = "cloud.google.com/gke-max-shared-clients-per-gpu"
INSTANCE_TYPE = "node.kubernetes.io/instance-type"
KARPENTER_AWS_GPU_MEMORY = "karpenter.k8s.aws/instance-gpu-memory"
KARPENTER_AWS_GPU_NAME = "karpenter.k8s.aws/instance-gpu-name"
AMD_PRODUCT = "amd.com/gpu.product-name"
SETTING = "gpuMemoryByLabel"  # the chart value (R1_GPU_MEMORY_BY_LABEL)

# Product names, most specific first: matched as a case-insensitive substring of a product label.
PRODUCT_MIB: tuple[tuple[str, int], ...] = (
    ("GB200", 189471), ("B200", 183359), ("GH200", 97871), ("H200", 143771), ("H100-NVL", 95830),
    ("H100 NVL", 95830), ("H100", 81559), ("A100-SXM4-80GB", 81920), ("A100-PCIE-80GB", 81920),
    ("A100-80GB", 81920), ("A100 80GB", 81920), ("A100", 40960), ("L40S", 46068), ("L40", 46068),
    ("A10G", 23028), ("A10", 23028), ("L4", 23034), ("V100-SXM2-32GB", 32768), ("V100", 16384), ("T4", 15360),
    ("P100", 16384), ("MI300X", 196608), ("MI250", 65536),
)
# GKE's cloud.google.com/gke-accelerator values.
GKE_MIB = {
    "nvidia-gb200": 189471, "nvidia-b200": 183359, "nvidia-h200-141gb": 143771, "nvidia-h100-mega-80gb": 81559,
    "nvidia-h100-80gb": 81559, "nvidia-a100-80gb": 81920, "nvidia-tesla-a100": 40960, "nvidia-l4": 23034,
    "nvidia-tesla-t4": 15360, "nvidia-tesla-v100": 16384, "nvidia-tesla-p100": 16384, "nvidia-tesla-p4": 7680,
}
# Cloud instance types (node.kubernetes.io/instance-type): a regular expression over the whole name → MiB per GPU.
INSTANCE_MIB: tuple[tuple[str, str, int], ...] = (
    (r"p5\.48xlarge", "H100", 81559), (r"p5e\.48xlarge|p5en\.48xlarge", "H200", 143771),
    (r"p4d\.24xlarge", "A100-40GB", 40960), (r"p4de\.24xlarge", "A100-80GB", 81920), (r"g6e\.\w+", "L40S", 46068),
    (r"gr?6\.\w+", "L4", 23034), (r"g5\.\w+", "A10G", 23028), (r"g4dn\.\w+", "T4", 15360),
    (r"p3dn\.24xlarge", "V100-32GB", 32768), (r"p3\.\w+", "V100", 16384),
    (r"Standard_ND\w+_H200_v5", "H200", 143771), (r"Standard_ND\w+_H100_v5", "H100", 81559),
    (r"Standard_NC\w+_H100_v5", "H100-NVL", 95830), (r"Standard_ND96asr_v4", "A100-40GB", 40960),
    (r"Standard_N[CD]\w+_A100_v4", "A100-80GB", 81920), (r"Standard_NC\w+_T4_v3", "T4", 15360),
    (r"Standard_ND\w+_MI300X_v5", "MI300X", 196608),
)
# MIG profiles → the memory of one instance, as nvidia-smi lists it (A100 40/80 GB, H100, H200).
MIG_MIB = {
    "1g.5gb": 4864, "1g.10gb": 9856, "1g.12gb": 11008, "1g.18gb": 16384, "1g.20gb": 19968, "1g.23gb": 21760,
    "2g.10gb": 9984, "2g.20gb": 19968, "2g.24gb": 22784, "2g.35gb": 32768, "3g.20gb": 19968, "3g.40gb": 40192,
    "3g.47gb": 46592, "3g.71gb": 69632, "4g.20gb": 19968, "4g.40gb": 40192, "4g.47gb": 46592, "4g.71gb": 69632,
    "7g.40gb": 40192, "7g.80gb": 80896, "7g.94gb": 95232, "7g.141gb": 143360,
}
_MIG_PROFILE = re.compile(r"^(\d+)g\.(\d+)gb$")


@dataclass(frozen=True)
class GpuFacts:
    count: int  # allocatable devices of the resource (MIG instances, time-sliced replicas)
    memory_bytes: int  # per device (a time-sliced replica: the whole card's)
    product: str
    source: str  # where memory_bytes came from, for the plan's reasons
    per_pod: int = 0  # most devices one pod can use (MIG: a process sees one instance); 0: no limit
    replicas: int = 1  # time-slicing: replicas of each physical GPU (> 1: shared cards)
    problems: tuple[str, ...] = ()


def parse_memory_by_label(text: str) -> dict[str, int]:
    """The operator setting: JSON {"key=value": MiB, ...}. Raises ValueError naming the setting."""
    if not text.strip():
        return {}
    what = f"R1_GPU_MEMORY_BY_LABEL (chart value {SETTING})"
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{what}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{what}: expected a mapping of \"label-key=value\" to MiB, got {type(doc).__name__}")
    out = {}
    for k, v in doc.items():
        if "=" not in k or not k.partition("=")[0]:
            raise ValueError(f"{what}: key {k!r} must be label-key=value")
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{what}: {k!r} must map to a positive integer of MiB, got {v!r}")
        out[k] = v
    return out


def gpu_taint_keys(resource: str) -> frozenset[str]:
    """Taint keys that keep pods without this GPU resource off a GPU node (GKE: nvidia.com/gpu=present:NoSchedule,
    also on MIG pools); a pod using the resource tolerates them, as Kubernetes' ExtendedResourceToleration does."""
    keys = {resource}
    if resource.startswith("nvidia.com/"):
        keys.add(GPU_RESOURCE)
    return frozenset(keys)


def _positive(labels: Mapping[str, str], key: str, problems: list[str], node: str) -> int | None:
    raw = labels.get(key)
    if raw is None:
        return None
    if not str(raw).isdigit() or int(raw) <= 0:
        problems.append(f"node {node}: label {key}={raw!r} is not a positive integer; ignored")
        return None
    return int(raw)


def _product_mib(product: str) -> tuple[str, int] | None:
    up = product.upper()
    return next(((name, mib) for name, mib in PRODUCT_MIB if name.upper() in up), None)


def _mig_mib(profile: str) -> tuple[int, str] | None:
    if profile in MIG_MIB:
        return MIG_MIB[profile], f"MIG profile {profile} (built-in table)"
    m = _MIG_PROFILE.match(profile)
    if m:  # an unlisted profile: its nominal GB, less 5% as listed profiles are
        return int(int(m.group(2)) * 10**9 * 0.95) // MiB, f"MIG profile {profile} (its nominal size less 5%)"
    return None


def _table(labels: Mapping[str, str], by_label: Mapping[str, int]) -> tuple[int, str, str] | None:
    """(MiB, where from, the product when only the table names it)."""
    for kv, mib in by_label.items():
        key, _, value = kv.partition("=")
        if labels.get(key) == value:
            return mib, f"operator setting {SETTING} {kv}", ""
    acc = labels.get(GKE_ACCELERATOR)
    if acc in GKE_MIB:
        return GKE_MIB[acc], f"{GKE_ACCELERATOR}={acc} (built-in table)", ""
    itype = labels.get(INSTANCE_TYPE, "")
    for pattern, product, mib in INSTANCE_MIB:
        if re.fullmatch(pattern, itype):
            return mib, f"{INSTANCE_TYPE}={itype} (built-in table: {product})", product
    for key in (GFD_PRODUCT, KARPENTER_AWS_GPU_NAME, AMD_PRODUCT, GKE_ACCELERATOR):
        hit = _product_mib(str(labels.get(key, "")))
        if hit:
            return hit[1], f"{key}={labels[key]} (built-in table: {hit[0]})", ""
    if str(labels.get(KARPENTER_AWS_GPU_MEMORY, "")).isdigit() and int(labels[KARPENTER_AWS_GPU_MEMORY]) > 0:
        # last: EC2's nominal figure (24576 for an A10G that nvidia-smi shows as 23028)
        return int(labels[KARPENTER_AWS_GPU_MEMORY]), f"label {KARPENTER_AWS_GPU_MEMORY} (EC2's nominal figure)", ""
    return None


def gpu_facts(node: str, labels: Mapping[str, str], count: int, resource: str = GPU_RESOURCE,
              memory_by_label: Mapping[str, int] | None = None) -> GpuFacts:
    """What `count` allocatable devices of `resource` on a node with these labels are. Never raises: a figure that
    cannot be read leaves memory_bytes 0 and says why in problems."""
    problems: list[str] = []
    product = str(labels.get(GFD_PRODUCT) or labels.get(GKE_ACCELERATOR) or labels.get(AMD_PRODUCT)
                  or labels.get(KARPENTER_AWS_GPU_NAME) or "")
    per_pod, replicas = 0, 1
    mib: int | None = None
    source = ""
    if resource.startswith(MIG_PREFIX):  # the mixed strategy: one resource per MIG profile
        profile = resource[len(MIG_PREFIX):]
        per_pod = 1
        if count:
            product = f"{product}-MIG-{profile}" if product else f"MIG {profile}"
        mib = _positive(labels, f"{resource}.memory", problems, node)
        source = f"label {resource}.memory (GPU Feature Discovery)"
        if mib is None and (hit := _mig_mib(profile)):
            mib, source = hit
    else:
        mib = _positive(labels, GFD_MEMORY, problems, node)
        source = f"label {GFD_MEMORY} (GPU Feature Discovery)"
        partition = labels.get(GKE_PARTITION)
        if "-MIG-" in product.upper() or labels.get(MIG_STRATEGY) == "single" and "MIG" in product.upper():
            per_pod = 1  # the single strategy: each nvidia.com/gpu is a MIG instance
        if partition:
            per_pod = 1
            product = f"{product}-MIG-{partition}" if count else product
            if mib is None and (hit := _mig_mib(partition)):
                mib, source = hit[0], f"{GKE_PARTITION}={partition}: {hit[1]}"
        if mib is None and (hit := _table(labels, memory_by_label or {})):
            mib, source, product = hit[0], hit[1], product or hit[2]
        shared = _positive(labels, GFD_REPLICAS, problems, node) or 1
        if labels.get(GKE_SHARING) in ("time-sharing", "mps"):
            shared = max(shared, _positive(labels, GKE_SHARED_CLIENTS, problems, node) or 1)
        if shared == 1 and product.upper().endswith("-SHARED"):
            problems.append(f"node {node}: {GFD_PRODUCT}={product} is a shared GPU without {GFD_REPLICAS}; "
                            "its GPUs are counted as time-sliced replicas of unknown number")
            shared = max(count, 1)
        replicas = shared
    if not count and resource == GPU_RESOURCE and labels.get(MIG_STRATEGY) == "mixed":
        offered = sorted(k for k in labels if k.startswith(MIG_PREFIX) and k.endswith(".count"))
        problems.append(f"node {node}: its GPUs are MIG instances of the mixed strategy ("
                        f"{', '.join(k[:-len('.count')] for k in offered) or 'nvidia.com/mig-<profile>'}): set "
                        "spec.scheduling.gpuResourceName to one of them to use one")
    if count and mib is None:
        problems.append(f"node {node}: {count} {resource} but no GPU memory figure: no {GFD_MEMORY} label (GPU "
                        f"Feature Discovery), and its labels match no built-in GPU product or instance type; set the "
                        f"chart value {SETTING} (a label key=value → MiB); GPUs not used")
    return GpuFacts(count=count, memory_bytes=(mib or 0) * MiB, product=product, source=source if mib else "",
                    per_pod=per_pod, replicas=replicas, problems=tuple(problems))
