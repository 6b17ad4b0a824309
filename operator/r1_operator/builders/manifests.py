"""Desired children of an R1Deployment (pure): cache PVC and fetch Job, runtime Deployment, Service, monitors.

The runtime's command line is the contract between the planes: `runtime_command`
and `fetch_command` render it from r1_operator.api.contract, whose tables also build
the runtime's parser; tests/e2e runs exactly what they render.
"""

from __future__ import annotations

import json
import math
from typing import Any

from r1_operator.api import contract
from r1_operator.api.types import GROUP, KIND, VERSION, R1DeploymentSpec
from r1_operator.builders import names
from r1_operator.builders.pods import CACHE_MOUNT, MOUNTS, container_security, place_pod, pod_security, volumes
from r1_operator.planning.corrections import memory_extra
from r1_operator.planning.decide import placement_plans, plan_hash
from r1_operator.planning.inventory import parse_quantity
from r1_operator.settings import OperatorSettings

GiB = 1 << 30
MiB = 1 << 20
PROBE_PERIOD_S = 10
DEFAULT_CPU_REQUEST = 2  # without spec.inference.threads


def owner_reference(name: str, uid: str, controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name, "uid": uid,
            "controller": controller, "blockOwnerDeletion": True}


def cache_size(spec: R1DeploymentSpec, plan: dict[str, Any]) -> str:
    """spec.cache.size, or for auto a volume whose filesystem holds the fetch's peak (contract.cache_volume_gib)."""
    if spec.cache.size != "auto":
        return spec.cache.size
    return f"{contract.cache_volume_gib(plan['diskBytes'])}Gi"


def cache_node(spec: R1DeploymentSpec, plan: dict[str, Any]) -> str | None:
    """The node a cache belongs to: a ReadWriteOnce volume is bound to one node, so each node gets its own;
    a ReadWriteMany one serves every node."""
    if spec.cache.access_mode == "ReadWriteMany":
        return None
    return plan.get("node") or None


def cache_ref(spec: R1DeploymentSpec, plan: dict[str, Any]) -> tuple[str, str, str]:
    """(PVC and Job name, label key, source) of the cache this plan uses."""
    m, node = spec.model, cache_node(spec, plan)
    return (names.cache_name(m.repo, m.revision, plan["variant"], node),
            names.cache_key(m.repo, m.revision, plan["variant"], node),
            names.cache_source(m.repo, m.revision, plan["variant"], node))


def build_cache_pvc(namespace: str, spec: R1DeploymentSpec, plan: dict[str, Any], s: OperatorSettings) -> dict[str, Any]:
    """The shared cache volume, without owners: each R1Deployment using it adds its own (k8s.apply.own_shared)."""
    name, key, source = cache_ref(spec, plan)
    pvc_spec: dict[str, Any] = {"accessModes": [spec.cache.access_mode],
                                "resources": {"requests": {"storage": cache_size(spec, plan)}}}
    storage_class = spec.cache.storage_class_name or s.default_storage_class
    if storage_class:
        pvc_spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace, "labels": names.cache_labels(key),
                     "annotations": {names.ANN_CACHE_SOURCE: source}},
        "spec": pvc_spec,
    }


def fetch_command(spec: R1DeploymentSpec, variant: str) -> list[str]:
    m = spec.model
    return ["r1-runtime", "fetch", *contract.render(contract.FETCH_FLAGS, {
        "repo": m.repo, "variant": variant, "dest": CACHE_MOUNT, "revision": m.revision, "merge": True,
        "keep_shards": spec.cache.keep_shards, "connections": spec.cache.connections, "progress_interval": 10.0})]


def _secret_env(env_name: str, ref) -> dict[str, Any]:
    return {"name": env_name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _quantity_mib(n: int) -> str:
    return f"{max(math.ceil(n / MiB), 1)}Mi"


# The fetch's working set is bounded: a 1 MiB chunk per download connection and an 8 MiB hashing buffer, the
# merge's four 8 MiB chunks mapped for hashing and one window of dirty pages (contract.MERGE_WINDOW_BYTES) before
# each fdatasync, and Python (about 150 MiB).
FETCH_MEMORY_REQUEST = "512Mi"
FETCH_MEMORY_LIMIT = "2Gi"


def fetch_resources(spec: R1DeploymentSpec) -> dict[str, Any]:
    """The fetch container's CPU and memory, with a limit over its bounded buffers; spec.cache.resources overrides
    key by key, and a memory request raised above the limit raises the limit with it."""
    return _overridden({"cpu": "500m", "memory": FETCH_MEMORY_REQUEST}, {"memory": FETCH_MEMORY_LIMIT},
                       spec.cache.resources)


def _overridden(requests: dict[str, str], limits: dict[str, str], override) -> dict[str, Any]:
    if override:
        requests, limits = {**requests, **override.requests}, {**limits, **override.limits}
        if "memory" not in override.limits and \
                parse_quantity(requests["memory"], "memory") > parse_quantity(limits["memory"], "memory"):
            limits["memory"] = requests["memory"]
    return {"requests": requests, "limits": limits}


def build_fetch_job(namespace: str, spec: R1DeploymentSpec, plan: dict[str, Any], s: OperatorSettings) -> dict[str, Any]:
    """The shared fetch Job, without owners, like the volume it fills."""
    name, key, _ = cache_ref(spec, plan)
    env = [{"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"}, {"name": "HOME", "value": "/tmp"}]
    if s.hub_endpoint:
        env.append({"name": "HF_ENDPOINT", "value": s.hub_endpoint})
    if spec.hf_token_secret_ref:
        env.append(_secret_env("HF_TOKEN", spec.hf_token_secret_ref))
    container = {
        "name": "fetch", "image": s.runtime_image, "imagePullPolicy": s.image_pull_policy,
        "command": fetch_command(spec, plan["variant"]), "env": env, "volumeMounts": MOUNTS,
        "securityContext": container_security(s),
        "resources": fetch_resources(spec),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod = {"restartPolicy": "Never", "securityContext": pod_security(s), "automountServiceAccountToken": False,
           "containers": [container], "volumes": volumes(name)}
    meta: dict[str, Any] = {"labels": names.cache_labels(key)}
    # On the planned node: a ReadWriteOnce volume binds where its first pod runs, and the runtime goes there.
    place_pod(pod, meta, spec, plan, s)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": names.cache_labels(key)},
        "spec": {
            "backoffLimit": s.fetch_backoff_limit,
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
                "containerName": "fetch", "operator": "In", "values": [int(c) for c in contract.PERMANENT_EXITS]}}]},
            "template": {"metadata": meta, "spec": pod},
        },
    }


def runtime_command(name: str, spec: R1DeploymentSpec, plan: dict[str, Any], s: OperatorSettings,
                    dev_mocks: dict[str, int] | None = None) -> list[str]:
    """`r1-runtime serve` with every spec field the runtime takes, rendered by the contract (bounds checked).
    dev_mocks: DEV CLUSTERS ONLY, the runtime's mocks (names.DEV_MOCKS: flag -> value), rendered only with
    OperatorSettings.dev_simulated_gpus."""
    inf, smp = spec.inference, spec.inference.sampling
    values: dict[str, Any] = {
        "model": CACHE_MOUNT, "host": "0.0.0.0", "port": s.runtime_port, "metrics_port": s.runtime_metrics_port,
        "alias": name, "variant": plan["variant"],
        "n_gpu_layers": plan["nGpuLayers"], "ctx_size": inf.ctx_size, "cache_type_k": inf.cache_type_k,
        "cache_type_v": inf.cache_type_v, "flash_attn": inf.flash_attention, "parallel": inf.parallel,
        "temperature": smp.temperature, "min_p": smp.min_p, "top_p": smp.top_p, "top_k": smp.top_k,
        "shutdown_grace": float(s.shutdown_grace_s), "stop_on_loop": inf.stop_on_loop, "canary": inf.canary,
    }
    if inf.threads:  # 0: the runtime counts the CPUs its container may use
        values["threads"] = inf.threads
    if plan.get("memory"):  # a failed allocation is reported against these (the termination message)
        values["planned_memory"] = planned_memory(plan)
    if plan.get("tensorSplit"):
        values["tensor_split"] = ",".join(str(x) for x in plan["tensorSplit"])
    if plan.get("gpus") and plan.get("nGpuLayers"):  # the runtime checks llama.cpp sees them before loading
        values["gpu_devices"] = plan["gpus"]
    if s.dev_simulated_gpus:
        values.update({flag: n for flag, n in (dev_mocks or {}).items() if n})
        values["dev_simulated_gpus"] = bool(plan.get("gpus"))
    return ["r1-runtime", "serve", *contract.render(contract.SERVE_FLAGS, values)]


def planned_memory(plan: dict[str, Any]) -> str:
    """The plan's bytes per device and kind, as `--planned-memory` takes them."""
    return json.dumps({d["device"]: {"weights": d["weights"], "kv_cache": d["kvCache"], "compute": d["compute"]}
                       for d in plan["memory"]}, separators=(",", ":"), sort_keys=True)


def memory_pinned(spec: R1DeploymentSpec) -> bool:
    """spec.resources sets the runtime's memory: the user sizes it, and an OOMKill there is theirs to fix."""
    r = spec.resources
    return r is not None and ("memory" in r.limits or "memory" in r.requests)


def runtime_memory_bytes(plan: dict[str, Any], s: OperatorSettings) -> int:
    """The runtime's memory request and limit unless the spec sets them: the plan's CPU-side resident bytes, the
    operator's margin for the process beyond its buffers (OperatorSettings.runtime_memory_margin_bytes), and what
    memory corrections on the plan's node added (planning.corrections). In mmap mode the resident bytes leave the
    weights out: they are pages of the model file, charged to the pod but reclaimable, so at the limit the kernel
    drops and re-reads them instead of killing the runtime."""
    return (int(plan.get("cpuMemoryBytes") or 0) + s.runtime_memory_margin_bytes
            + memory_extra(plan.get("corrections") or [], plan.get("node") or ""))


def runtime_resources(spec: R1DeploymentSpec, plan: dict[str, Any], s: OperatorSettings) -> dict[str, Any]:
    """The plan's GPUs, CPUs for the threads, and a memory request and limit both of runtime_memory_bytes, in MiB.
    spec.resources overrides key by key; a memory request raised above the limit raises the limit with it."""
    gpu = spec.scheduling.gpu_resource_name
    memory = _quantity_mib(runtime_memory_bytes(plan, s))
    requests = {"cpu": str(spec.inference.threads or DEFAULT_CPU_REQUEST), "memory": memory}
    limits: dict[str, str] = {"memory": memory}
    if plan.get("gpus"):
        requests[gpu] = limits[gpu] = str(plan["gpus"])
    return _overridden(requests, limits, spec.resources)


def startup_failure_threshold(spec: R1DeploymentSpec, plan: dict[str, Any], s: OperatorSettings) -> int:
    """Enough probe periods to read the model at the slowest expected rate (spec.inference.loadBytesPerSecond,
    else the chart's runtime.loadBytesPerSecond), plus spec.inference.startupGraceSeconds of warm-up."""
    model_bytes = plan.get("modelBytes") or GiB
    rate = spec.inference.load_bytes_per_second or s.load_bytes_per_second
    return math.ceil(model_bytes / rate / PROBE_PERIOD_S) + math.ceil(spec.inference.startup_grace_seconds
                                                                      / PROBE_PERIOD_S)


def runtime_image(plan: dict[str, Any], s: OperatorSettings) -> str:
    """The CUDA build (chart runtime.gpuImage) for a plan that uses GPUs, the CPU build otherwise."""
    return s.runtime_gpu_image if plan.get("gpus") and s.runtime_gpu_image else s.runtime_image


def build_deployment(name: str, namespace: str, uid: str, spec: R1DeploymentSpec, plan: dict[str, Any],
                     s: OperatorSettings, cache_ready: bool, dev_mocks: dict[str, int] | None = None) -> dict[str, Any]:
    """The runtime of one placement (decide.placement_plans; a plain plan is placement 0 with spec.replicas),
    pinned to its node with its own offload; 0 replicas until its cache holds the verified model (a pod could
    only crash-loop before)."""
    cache_pvc = cache_ref(spec, plan)[0]
    placement = int(plan.get("id", 0))
    replicas = min(int(plan.get("replicas", spec.replicas)), spec.replicas) if cache_ready else 0
    env = [{"name": "HOME", "value": "/tmp"}]
    if spec.api_key_secret_ref:
        env.append(_secret_env("R1_API_KEY", spec.api_key_secret_ref))
    http = {"port": "http", "path": "/health"}
    container = {
        "name": "runtime", "image": runtime_image(plan, s), "imagePullPolicy": s.image_pull_policy,
        "command": runtime_command(name, spec, plan, s, dev_mocks), "env": env,
        "ports": [{"name": "http", "containerPort": s.runtime_port, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": s.runtime_metrics_port, "protocol": "TCP"}],
        "volumeMounts": MOUNTS, "resources": runtime_resources(spec, plan, s),
        "securityContext": container_security(s),
        "startupProbe": {"httpGet": {**http, "path": "/ready"}, "periodSeconds": PROBE_PERIOD_S,
                         "failureThreshold": startup_failure_threshold(spec, plan, s), "timeoutSeconds": 5},
        "readinessProbe": {"httpGet": {**http, "path": "/ready"}, "periodSeconds": 5, "failureThreshold": 2,
                           "timeoutSeconds": 5},
        "livenessProbe": {"httpGet": http, "periodSeconds": 10, "failureThreshold": 6, "timeoutSeconds": 5},
        "lifecycle": {"preStop": {"sleep": {"seconds": s.prestop_sleep_s}}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod: dict[str, Any] = {
        "securityContext": pod_security(s), "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": s.prestop_sleep_s + s.shutdown_grace_s + 15,
        "containers": [container], "volumes": volumes(cache_pvc),
    }
    labels = {**names.labels(name, "runtime"), names.LABEL_PLACEMENT: str(placement)}
    meta = {"labels": dict(labels), "annotations": {names.ANN_PLAN_HASH: plan_hash(plan)}}
    place_pod(pod, meta, spec, plan, s)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": names.placement_name(name, placement), "namespace": namespace, "labels": labels,
                     "ownerReferences": [owner_reference(name, uid)]},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": startup_failure_threshold(spec, plan, s) * PROBE_PERIOD_S + 600,
            # The plan holds exactly the GPUs and RAM one pod needs: a surge pod could never schedule.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": names.placement_selector(name, placement)},
            "template": {"metadata": meta, "spec": pod},
        },
    }


def build_provision(name: str, namespace: str, uid: str, spec: R1DeploymentSpec, plan: dict[str, Any],
                    s: OperatorSettings) -> dict[str, Any]:
    """A placement planned on a node pool's new node (planning.pools): pods that select the pool and hold what the
    runtime will (its GPUs, CPU and memory), so the cluster's autoscaler adds a node that fits it. They only
    sleep, in the runtime's image (the new node pulls it meanwhile), and are deleted once the plan is on the node."""
    placement = int(plan.get("id", 0))
    container = {"name": "provision", "image": runtime_image(plan, s), "imagePullPolicy": s.image_pull_policy,
                 "command": ["sleep", "infinity"], "resources": runtime_resources(spec, plan, s),
                 "securityContext": container_security(s)}
    pod: dict[str, Any] = {"securityContext": pod_security(s), "automountServiceAccountToken": False,
                           "terminationGracePeriodSeconds": 0, "containers": [container]}
    selector = names.provision_selector(name, placement)
    labels = {**names.labels(name, "provision"), **selector}
    meta: dict[str, Any] = {"labels": dict(labels)}
    place_pod(pod, meta, spec, plan, s)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": names.provision_name(name, placement), "namespace": namespace, "labels": labels,
                     "ownerReferences": [owner_reference(name, uid)]},
        "spec": {"replicas": int(plan.get("replicas", spec.replicas)), "strategy": {"type": "Recreate"},
                 "selector": {"matchLabels": selector}, "template": {"metadata": meta, "spec": pod}},
    }


def build_service(name: str, namespace: str, uid: str, s: OperatorSettings) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": names.runtime_name(name), "namespace": namespace, "labels": names.labels(name, "runtime"),
                     "ownerReferences": [owner_reference(name, uid)]},
        "spec": {"selector": names.selector(name),
                 "ports": [{"name": "http", "port": s.runtime_port, "targetPort": "http", "protocol": "TCP"},
                           {"name": "metrics", "port": s.runtime_metrics_port, "targetPort": "metrics",
                            "protocol": "TCP"}]},
    }


def endpoint(name: str, namespace: str, s: OperatorSettings) -> str:
    return f"http://{names.runtime_name(name)}.{namespace}.svc:{s.runtime_port}/v1"


def build_service_monitor(name: str, namespace: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {"name": names.runtime_name(name), "namespace": namespace, "labels": names.labels(name, "runtime"),
                     "ownerReferences": [owner_reference(name, uid)]},
        "spec": {"selector": {"matchLabels": names.selector(name)},
                 "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}]},
    }


KEDA_API = "keda.sh/v1alpha1"
SCALE_UP_PERIOD_S = 60  # at most one replica added per minute: each one loads the model before it serves


def queue_query(name: str, namespace: str) -> str:
    """PromQL for the autoscaler: requests waiting plus requests running over every replica of the R1Deployment.
    The labels are those of the chart's PodMonitor and a ServiceMonitor: namespace, and service (the Service,
    which carries the R1Deployment's name)."""
    metrics = f"{contract.METRIC_REQUESTS_DEFERRED}|{contract.METRIC_REQUESTS_PROCESSING}"
    return (f'sum({{__name__=~"{metrics}", namespace="{namespace}", service="{names.runtime_name(name)}"}})'
            " or vector(0)")


def build_scaled_object(name: str, namespace: str, uid: str, spec: R1DeploymentSpec, prometheus: str) \
        -> dict[str, Any]:
    """The KEDA ScaledObject that scales the R1Deployment itself through its scale subresource: KEDA's HPA writes
    spec.replicas and the planner places that many. One replica is added at a time, at most one a minute; one is
    removed only after the queue stayed low for scaleDownDelaySeconds, and its pod drains before it stops."""
    a = spec.autoscaling
    assert a is not None
    return {
        "apiVersion": KEDA_API, "kind": "ScaledObject",
        "metadata": {"name": names.runtime_name(name), "namespace": namespace,
                     "labels": names.labels(name, "autoscaler"), "ownerReferences": [owner_reference(name, uid)]},
        "spec": {
            "scaleTargetRef": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name},
            "minReplicaCount": a.min_replicas, "maxReplicaCount": a.max_replicas,
            "pollingInterval": a.polling_interval_seconds,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": SCALE_UP_PERIOD_S}]},
                "scaleDown": {"stabilizationWindowSeconds": a.scale_down_delay_seconds,
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}}},
            "triggers": [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
                "serverAddress": prometheus, "query": queue_query(name, namespace),
                "threshold": f"{a.target_queue_per_replica:g}"}}],
        },
    }


def _namespace_peer(namespace: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


def build_network_policies(name: str, namespace: str, uid: str, spec: R1DeploymentSpec, plan: dict[str, Any],
                           s: OperatorSettings) -> list[dict[str, Any]]:
    """spec.network.policy restricted: into the runtime's API port only pods of its own namespace and
    spec.network.allowFrom, into its metrics port only the monitoring namespace's pods; into the fetch Job's pods
    and the provision pods (build_provision) nothing. (Most CNIs let the node itself, the kubelet's probes, through
    regardless.)"""
    own = [{"podSelector": {}}]
    allow = [p.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True) for p in spec.network.allow_from]
    runtime = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": names.runtime_name(name), "namespace": namespace, "labels": names.labels(name, "runtime"),
                     "ownerReferences": [owner_reference(name, uid)]},
        "spec": {"podSelector": {"matchLabels": names.selector(name)}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": own + allow, "ports": [{"port": "http", "protocol": "TCP"}]},
                             {"from": [_namespace_peer(s.monitoring_namespace)],
                              "ports": [{"port": "metrics", "protocol": "TCP"}]}]},
    }
    keys = sorted({cache_ref(spec, p)[1] for p in placement_plans(plan)})
    fetch = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": names.fetch_policy_name(name), "namespace": namespace, "labels": names.labels(name, "cache"),
                     "ownerReferences": [owner_reference(name, uid)]},
        "spec": {"podSelector": {"matchExpressions": [{"key": names.LABEL_CACHE, "operator": "In", "values": keys}]},
                 "policyTypes": ["Ingress"], "ingress": []},
    }
    provision = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": names.provision_policy_name(name), "namespace": namespace,
                     "labels": names.labels(name, "provision"), "ownerReferences": [owner_reference(name, uid)]},
        "spec": {"podSelector": {"matchLabels": {k: v for k, v in names.provision_selector(name, 0).items()
                                                 if k != names.LABEL_PLACEMENT}},
                 "policyTypes": ["Ingress"], "ingress": []},
    }
    return [runtime, fetch, provision]


def build_dashboard_configmap(name: str, namespace: str, uid: str, dashboard_json: str,
                              s: OperatorSettings) -> dict[str, Any]:
    key, _, value = s.dashboard_label.partition("=")
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": names.dashboard_name(name), "namespace": namespace,
                     "labels": {**names.labels(name, "dashboard"), key: value},
                     "ownerReferences": [owner_reference(name, uid)]},
        "data": {f"r1-{name}.json": dashboard_json},
    }
