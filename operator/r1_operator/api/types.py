"""R1Deployment spec types. The CRD schema in crds/ is generated from these (r1ctl crd)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from r1_operator.api.contract import CACHE_TYPES, FETCH_FLAGS, MIN_TOKENS_PER_SEQUENCE, SERVE_FLAGS, \
    UNQUANTIZED_CACHE_TYPES, \
    Flag

GROUP = "r1.inference.dev"
VERSION = "v1alpha1"
KIND = "R1Deployment"
PLURAL = "r1deployments"
SINGULAR = "r1deployment"
SHORT_NAMES = ["r1d"]
# Status conditions: always present, then those present only while the spec asks for what they report on.
CONDITIONS = ("Ready", "Planned", "CacheReady", "Progressing", "Degraded")
OPTIONAL_CONDITIONS = ("Autoscaling",)

CacheType = Literal[tuple(CACHE_TYPES)]  # type: ignore[valid-type]
QUANTITY = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"


def _cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict:
    r = {"rule": rule, "message": message}
    if field_path:
        r["fieldPath"] = field_path
    if reason:
        r["reason"] = reason
    return r


def _bounded(dest: str, default=None, alias: str | None = None, **kw):
    """A spec field with the runtime flag's default and bounds (r1_operator.api.contract)."""
    f: Flag = SERVE_FLAGS[dest]
    if f.lo is not None:
        kw["gt" if f.lo_open else "ge"] = f.lo
    if f.hi is not None:
        kw["le"] = f.hi
    return Field(f.default if default is None else default, alias=alias, **kw)


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class ModelSpec(_Model):
    repo: str = Field("unsloth/DeepSeek-R1-GGUF", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      max_length=200, description="Hugging Face repo holding the GGUF variants.")
    revision: str = Field("main", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_./-]+$",
                          description="Branch, tag or commit of the repo.")
    variant: str = Field("auto", pattern=r"^[A-Za-z0-9_.-]+$", max_length=64,
                         description="'auto' lets the planner choose; otherwise a variant name such as UD-IQ1_S.")
    min_variant: str | None = Field(None, alias="minVariant", pattern=r"^[A-Za-z0-9_.-]+$", max_length=64,
                                    description="With variant auto: never choose a variant smaller than this.")
    policy: Literal["auto", "quality"] = Field("auto", description="auto: largest variant fully on GPU, else the "
                                               "largest in GPU+RAM; quality: the largest that fits in GPU+RAM.")
    offload: Literal["estimate", "formula"] = Field("estimate", description="How GPU layers are counted: the "
                                                    "memory model, or the blog's formula.")


class Sampling(_Model):
    temperature: float = _bounded("temperature")
    min_p: float = _bounded("min_p", alias="minP")
    top_p: float = _bounded("top_p", alias="topP")
    top_k: int = _bounded("top_k", alias="topK")


class InferenceSpec(_Model):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", json_schema_extra={
        "x-kubernetes-validations": [
            _cel(f"self.cacheTypeV in {list(UNQUANTIZED_CACHE_TYPES)} || self.flashAttention",
                 f"a quantized cacheTypeV (not {', '.join(UNQUANTIZED_CACHE_TYPES)}) requires flashAttention: true",
                 ".cacheTypeV"),
            _cel(f"self.ctxSize / self.parallel >= {MIN_TOKENS_PER_SEQUENCE}",
                 f"ctxSize / parallel must leave at least {MIN_TOKENS_PER_SEQUENCE} tokens per sequence", ".parallel"),
        ]})
    ctx_size: int = _bounded("ctx_size", alias="ctxSize", description="Whole KV cache in tokens, shared by the "
                             "parallel sequences.")
    cache_type_k: CacheType = Field(SERVE_FLAGS["cache_type_k"].default, alias="cacheTypeK")
    cache_type_v: CacheType = Field(SERVE_FLAGS["cache_type_v"].default, alias="cacheTypeV")
    flash_attention: bool = Field(False, alias="flashAttention")
    threads: int = _bounded("threads", description="CPU threads; 0: the CPUs the runtime container may use "
                            "(its CPU limit, else the node's). Non-zero also sets the pod's CPU request.")
    parallel: int = _bounded("parallel", description="Sequences decoded together (continuous batching).")
    sampling: Sampling = Field(default_factory=Sampling)
    stop_on_loop: bool = Field(False, alias="stopOnLoop", description="Stop generations that loop.")
    load_bytes_per_second: int | None = Field(
        None, alias="loadBytesPerSecond", ge=1_000_000, le=100_000_000_000,
        description="Slowest expected model load from the cache volume, bytes/s; sizes the startup probe "
        "(model bytes / this + startupGraceSeconds). Default: the chart's runtime.loadBytesPerSecond (100 MB/s).")
    startup_grace_seconds: int = Field(300, alias="startupGraceSeconds", ge=0, le=86400,
                                       description="Added to the load's time in the startup probe's budget: warm-up "
                                       "and the canary.")
    canary: bool = Field(True, description="Fail readiness when a fixed prompt's output loops.")


class Resources(_Model):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class CacheSpec(_Model):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", json_schema_extra={
        "x-kubernetes-validations": [
            _cel("self.size == 'auto' || self.size.matches('^[0-9]+(\\\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$')",
                 "size must be 'auto' or a quantity such as 500Gi", ".size"),
        ]})
    storage_class_name: str | None = Field(None, alias="storageClassName", max_length=253)
    size: str = Field("auto", max_length=32, description="'auto': the variant size plus room for the merge.")
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = Field("ReadWriteOnce",
                                                                                       alias="accessMode")
    keep_shards: bool = Field(False, alias="keepShards")
    connections: int = Field(FETCH_FLAGS["connections"].default, ge=FETCH_FLAGS["connections"].lo,
                             le=FETCH_FLAGS["connections"].hi, description="HTTP connections the fetch uses at once "
                             "(byte ranges of large files, several files at once); 1 for a mirror that allows one.")
    resources: Resources | None = Field(None, description="The fetch Job's container, key by key over the default "
                                        "(memory 512Mi, limit 2Gi). The first R1Deployment to create a shared cache "
                                        "sets its Job.")


class Toleration(_Model):
    key: str | None = Field(None, max_length=316)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, alias="tolerationSeconds")


DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# Environment variables the operator sets on its pods: spec.scheduling.env may not replace them.
RESERVED_ENV = ("HOME", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_DISABLE_TELEMETRY", "R1_API_KEY", "NVIDIA_VISIBLE_DEVICES")
RESERVED_LABEL_PREFIXES = ("app.kubernetes.io/", "r1.inference.dev/")
SHARED_GPUS = ("refuse", "fairShare", "wholeCard")  # spec.scheduling.sharedGPUs


class EnvVar(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str = Field("", max_length=32768)


class LocalObjectReference(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


class SchedulingSpec(_Model):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", json_schema_extra={
        "x-kubernetes-validations": [
            _cel(f"!has(self.env) || self.env.all(e, !(e.name in {list(RESERVED_ENV)}))",
                 f"env may not set {', '.join(RESERVED_ENV)}: the operator sets them", ".env"),
            _cel("!has(self.podLabels) || self.podLabels.all(k, " + " && ".join(f"!k.startsWith('{p}')" for p in RESERVED_LABEL_PREFIXES)
                 + ")", f"podLabels may not use the prefixes {', '.join(RESERVED_LABEL_PREFIXES)}: the operator "
                 "selects its pods with them", ".podLabels"),
        ]})
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    affinity: dict | None = Field(None, description="A pod affinity, as in a pod spec. Its required node affinity "
                                  "is also honoured by the planner.",
                                  json_schema_extra={"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    gpu_resource_name: str = Field("nvidia.com/gpu", alias="gpuResourceName", max_length=253,
                                   pattern=r"^([a-z0-9.-]+/)?[a-z0-9A-Z._-]+$",
                                   description="The extended resource of the GPUs: nvidia.com/gpu, or a MIG profile "
                                   "of the mixed strategy such as nvidia.com/mig-3g.40gb.")
    shared_gpus: Literal[SHARED_GPUS] = Field(  # type: ignore[valid-type]
        "refuse", alias="sharedGPUs", description="Time-sliced GPUs (replicas of one card, no memory isolation): "
        "refuse plans none of them; fairShare plans one replica with the card's memory divided by its replicas; "
        "wholeCard plans one replica with the whole card's memory (when nothing else uses that card).")
    runtime_class_name: str | None = Field(None, alias="runtimeClassName", max_length=253, pattern=DNS_SUBDOMAIN,
                                           description="RuntimeClass of the runtime and fetch pods (e.g. nvidia); "
                                           "default: the chart's runtime.runtimeClassName.")
    priority_class_name: str | None = Field(None, alias="priorityClassName", max_length=253, pattern=DNS_SUBDOMAIN,
                                            description="PriorityClass of the runtime and fetch pods; default: the "
                                            "chart's runtime.priorityClassName.")
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, alias="imagePullSecrets", max_length=16,
        description="Secrets to pull the runtime image with, added to the chart's runtime.imagePullSecrets.")
    pod_annotations: dict[str, str] = Field(default_factory=dict, alias="podAnnotations",
                                            description="Annotations of the runtime and fetch pods, over the chart's.")
    pod_labels: dict[str, str] = Field(default_factory=dict, alias="podLabels",
                                       description="Labels of the runtime and fetch pods, over the chart's.")
    env: list[EnvVar] = Field(default_factory=list, max_length=64,
                              description="Environment of the runtime and fetch containers (proxies, CA bundles), "
                              "by name over the chart's runtime.extraEnv.")


class SecretRef(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    key: str = Field(min_length=1, max_length=253)


class MonitoringSpec(_Model):
    service_monitor: bool = Field(False, alias="serviceMonitor")
    dashboard: bool = False


class LabelSelectorRequirement(_Model):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", json_schema_extra={
        "x-kubernetes-validations": [
            _cel("self.operator in ['Exists', 'DoesNotExist'] ? size(self.values) == 0 : size(self.values) > 0",
                 "In and NotIn need values; Exists and DoesNotExist take none", ".values"),
        ]})
    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=64)


class LabelSelector(_Model):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, alias="matchExpressions",
                                                              max_length=16)


class IPBlock(_Model):
    cidr: str = Field(min_length=1, max_length=49)
    except_: list[str] = Field(default_factory=list, alias="except", max_length=32)


class NetworkPeer(_Model):
    """A NetworkPolicyPeer: pods (podSelector) in namespaces (namespaceSelector), or an ipBlock."""
    model_config = ConfigDict(populate_by_name=True, extra="forbid", json_schema_extra={
        "x-kubernetes-validations": [
            _cel("has(self.namespaceSelector) || has(self.podSelector) || has(self.ipBlock)",
                 "give namespaceSelector, podSelector or ipBlock"),
            _cel("!has(self.ipBlock) || (!has(self.namespaceSelector) && !has(self.podSelector))",
                 "ipBlock cannot be combined with namespaceSelector or podSelector", ".ipBlock"),
        ]})
    namespace_selector: LabelSelector | None = Field(None, alias="namespaceSelector")
    pod_selector: LabelSelector | None = Field(None, alias="podSelector")
    ip_block: IPBlock | None = Field(None, alias="ipBlock")


class NetworkSpec(_Model):
    policy: Literal["restricted", "none"] = Field(
        "restricted", description="restricted: a NetworkPolicy lets into the runtime's API port only the "
        "R1Deployment's own namespace and allowFrom, into its metrics port only the operator's monitoring "
        "namespace, and nothing into the fetch Job's pods. none: no NetworkPolicy (for a CNI that enforces none).")
    allow_from: list[NetworkPeer] = Field(default_factory=list, alias="allowFrom", max_length=32,
                                          description="Further clients of the API port (NetworkPolicyPeers), "
                                          "e.g. an ingress controller's namespace.")


class AutoscalingSpec(_Model):
    """Replicas driven by the runtime's queue through a KEDA ScaledObject (KEDA must be installed)."""
    model_config = ConfigDict(populate_by_name=True, extra="forbid", json_schema_extra={
        "x-kubernetes-validations": [
            _cel("self.minReplicas >= 1", "minReplicas must be at least 1: scale from zero is not supported (a "
                 "request arriving at zero replicas would fail for the minutes a 131 GB model takes to load); "
                 "set minReplicas: 1, or spec.replicas: 0 with no autoscaling to stop serving", ".minReplicas"),
            _cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas", ".minReplicas"),
        ]})
    min_replicas: int = Field(1, alias="minReplicas", ge=0, le=64,
                              description="Fewest replicas; at least 1 (scale from zero is not supported).")
    max_replicas: int = Field(alias="maxReplicas", ge=1, le=64, description="Most replicas.")
    target_queue_per_replica: float = Field(
        4, alias="targetQueuePerReplica", gt=0, le=1024,
        description="Requests waiting plus requests running, per replica, that the autoscaler holds: more adds "
        "replicas (llamacpp:requests_deferred + llamacpp:requests_processing over all replicas).")
    scale_down_delay_seconds: int = Field(
        300, alias="scaleDownDelaySeconds", ge=0, le=86400,
        description="How long the queue must stay low before a replica is removed (the HPA's scale-down "
        "stabilization window).")
    polling_interval_seconds: int = Field(15, alias="pollingIntervalSeconds", ge=1, le=600,
                                          description="How often KEDA queries Prometheus.")
    prometheus_address: str = Field(
        "", alias="prometheusAddress", max_length=500, pattern=r"^(https?://[^\s]+)?$",
        description="Prometheus that scrapes the runtime pods, e.g. http://prometheus.monitoring.svc:9090; empty: "
        "the operator's default (chart value autoscaling.prometheusAddress).")


class R1DeploymentSpec(_Model):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", json_schema_extra={
        "x-kubernetes-validations": [
            _cel("!has(self.model.minVariant) || self.model.variant == 'auto'",
                 "model.minVariant applies only with model.variant: auto", ".model.minVariant"),
        ]})
    model: ModelSpec = Field(default_factory=ModelSpec)
    replicas: int = Field(1, ge=0, le=64, description="Runtime replicas. With autoscaling, the autoscaler sets "
                          "this (through the scale subresource) between its minReplicas and maxReplicas.")
    autoscaling: AutoscalingSpec | None = None
    inference: InferenceSpec = Field(default_factory=InferenceSpec)
    cache: CacheSpec = Field(default_factory=CacheSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    resources: Resources | None = None
    hf_token_secret_ref: SecretRef | None = Field(None, alias="hfTokenSecretRef")
    api_key_secret_ref: SecretRef | None = Field(None, alias="apiKeySecretRef")
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    network: NetworkSpec = Field(default_factory=NetworkSpec)


def wanted_replicas(spec: R1DeploymentSpec) -> int:
    """The replicas to serve: spec.replicas, kept within the autoscaling bounds when autoscaling is on (the
    autoscaler keeps it there itself once it runs; before that, or without KEDA, the bounds still hold)."""
    a = spec.autoscaling
    return spec.replicas if a is None else min(max(spec.replicas, a.min_replicas), a.max_replicas)
