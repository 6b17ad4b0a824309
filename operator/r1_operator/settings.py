"""The operator's settings: read once at start-up from the environment (the chart's values set them).

Every field is overridden by R1_<FIELD> in upper case (R1_RUNTIME_IMAGE, R1_HUB_ENDPOINT, ...),
except pod_name, which is the Downward API's POD_NAME.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from typing import Any

MB = 10**6
GiB = 1 << 30


@dataclass(frozen=True)
class OperatorSettings:
    runtime_image: str = "r1-operator/runtime:0.1.0"
    runtime_gpu_image: str = ""  # the CUDA build, for plans with GPUs (chart runtime.gpuImage); empty: runtime_image
    image_pull_policy: str = "IfNotPresent"
    hub_endpoint: str = ""  # HF_ENDPOINT for cache Jobs; empty: huggingface.co
    default_storage_class: str = ""  # empty: the cluster's default StorageClass
    runtime_port: int = 8080
    runtime_metrics_port: int = 9090  # /metrics alone, so a NetworkPolicy can open it without the API
    monitoring_namespace: str = "monitoring"  # where Prometheus runs: its pods may scrape the metrics port
    shutdown_grace_s: int = 60  # runtime drain window after SIGTERM
    prestop_sleep_s: int = 5  # lets Service endpoints drop the pod before SIGTERM
    load_bytes_per_second: int = 100 * MB  # slowest expected model load, sizes the startup probe
    # GPU memory for nodes no label or built-in table describes: JSON {"label-key=value": MiB} (planning.gpus)
    gpu_memory_by_label: str = ""
    # Node pools an autoscaler grows (planning.pools): a JSON list of {name, labels, gpus, gpuMemoryMiB, cpu,
    # memory, taints, maxNodes}; planned on when no existing node places every replica.
    node_pools: str = ""
    # Pod defaults of the runtime and fetch pods; each spec.scheduling field of the same name overrides them.
    runtime_class_name: str = ""
    priority_class_name: str = ""
    image_pull_secrets: str = ""  # comma-separated Secret names
    pod_annotations: str = ""  # JSON object
    pod_labels: str = ""  # JSON object
    extra_env: str = ""  # JSON list of {"name", "value"}
    # The runtime process beyond the plan's buffers (Python, llama.cpp, the HTTP server, a CUDA runtime's host
    # memory): added to the plan's resident bytes for the runtime's memory request and limit. A container
    # OOMKilled at that limit raises it for its node (planning.corrections).
    runtime_memory_margin_bytes: int = 2 * GiB
    fetch_backoff_limit: int = 6
    run_as_user: int = 65532  # the image's user (Dockerfile)
    dashboard_label: str = "grafana_dashboard=1"
    replan_interval_s: float = 60.0  # how often the inventory is compared; plans are re-checked when it changed
    resync_interval_s: float = 600.0  # every plan re-checked at least this often
    prometheus_address: str = ""  # the Prometheus KEDA queries for spec.autoscaling, unless the spec names one
    workers: int = 16  # kopf's thread pool for the synchronous handlers
    peering_lifetime: int = 30  # seconds without a heartbeat before another replica takes over
    kubeconfig: str = ""  # empty: in-cluster credentials, else the default kubeconfig
    pod_name: str = "r1-operator"  # reporting instance of Events (POD_NAME)
    # DEV CLUSTERS ONLY: the nodes' GPUs are simulated (an extended resource), so a runtime that offloads fewer
    # layers than planned is expected (Ready reason ReadySimulatedGPUs) rather than Degraded (OffloadMismatch).
    dev_simulated_gpus: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        """R1_<FIELD> (upper case) overrides each field, e.g. R1_RUNTIME_IMAGE, R1_HUB_ENDPOINT."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get("POD_NAME" if f.name == "pod_name" else "R1_" + f.name.upper())
            if raw is None:
                continue
            kind = type(getattr(cls, f.name))
            if kind is bool:
                if raw.lower() not in ("1", "true", "yes", "0", "false", "no", ""):
                    raise ValueError(f"R1_{f.name.upper()}={raw!r}: expected true or false")
                values[f.name] = raw.lower() in ("1", "true", "yes")
                continue
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(f"R1_{f.name.upper()}={raw!r}: expected {kind.__name__}") from None
        s = cls(**values)
        if "=" not in s.dashboard_label:
            raise ValueError(f"R1_DASHBOARD_LABEL={s.dashboard_label!r}: expected key=value")
        s.memory_by_label()
        s.pools()
        s.pod_defaults()
        return s

    def memory_by_label(self) -> dict[str, int]:
        from r1_operator.planning.gpus import parse_memory_by_label

        return parse_memory_by_label(self.gpu_memory_by_label)

    def pools(self) -> tuple:
        """The declared node pools (planning.pools.NodePool). Raises ValueError naming R1_NODE_POOLS."""
        from r1_operator.planning.pools import parse_pools

        try:
            return parse_pools(json.loads(self.node_pools) if self.node_pools.strip() else None)
        except ValueError as exc:
            raise ValueError(f"R1_NODE_POOLS: {exc}") from None

    def pod_defaults(self) -> dict[str, Any]:
        """The chart's pod defaults, parsed: annotations, labels, env, imagePullSecrets. Raises ValueError naming
        the variable."""
        out: dict[str, Any] = {}
        for key, raw, kind in (("annotations", self.pod_annotations, dict), ("labels", self.pod_labels, dict),
                               ("env", self.extra_env, list)):
            try:
                value = json.loads(raw) if raw.strip() else kind()
            except ValueError as exc:
                raise ValueError(f"R1_{'EXTRA_ENV' if key == 'env' else 'POD_' + key.upper()}: not JSON ({exc})") \
                    from None
            if not isinstance(value, kind) or (kind is dict and not all(isinstance(v, str) for v in value.values())) \
                    or (kind is list and not all(isinstance(e, dict) and isinstance(e.get("name"), str) and
                                                 isinstance(e.get("value", ""), str) for e in value)):
                raise ValueError(f"R1_{'EXTRA_ENV' if key == 'env' else 'POD_' + key.upper()}: expected "
                                 + ("a JSON object of strings" if kind is dict else 'a JSON list of {"name", "value"}'))
            out[key] = value
        out["imagePullSecrets"] = [n.strip() for n in self.image_pull_secrets.split(",") if n.strip()]
        return out
