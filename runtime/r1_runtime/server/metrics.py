"""Prometheus metrics of the runtime.

The ``llamacpp:*`` names and meanings are those of llama.cpp's llama-server, so
dashboards built for it work unchanged. The ``r1_*`` metrics add latency
histograms, outcomes, KV usage, load time, degenerate generations and an info
metric. Labels are bounded: no prompt text, no request ids.
"""

from __future__ import annotations

import prometheus_client as pc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from r1_operator.api import contract

pc.disable_created_metrics()

OUTCOMES = ("success", "length", "cancelled", "rejected", "invalid", "timeout", "degenerate", "error")
ENDPOINTS = ("chat", "completions")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self._totals = [0.0, 0.0, 0.0, 0.0]  # prompt tokens, prompt s, predicted tokens, predicted s
        self.prompt_tokens = Counter("llamacpp:prompt_tokens", "Number of prompt tokens processed.", registry=r)
        self.prompt_seconds = Counter("llamacpp:prompt_seconds", "Prompt process time.", registry=r)
        self.prompt_cached = Counter("r1_prompt_cached_tokens", "Prompt tokens taken from a slot's cached prefix "
                                     "instead of evaluated (llamacpp:prompt_tokens counts the evaluated ones).",
                                     registry=r)
        self.tokens_predicted = Counter("llamacpp:tokens_predicted", "Number of generation tokens processed.",
                                        registry=r)
        self.tokens_predicted_seconds = Counter("llamacpp:tokens_predicted_seconds", "Predict process time.",
                                                registry=r)
        self.n_decode = Counter("llamacpp:n_decode", "Number of llama_decode() calls.", registry=r)
        self.prompt_tps = Gauge("llamacpp:prompt_tokens_seconds", "Average prompt throughput in tokens/s.",
                                registry=r)
        self.predicted_tps = Gauge("llamacpp:predicted_tokens_seconds", "Average generation throughput in tokens/s.",
                                   registry=r)
        self.processing = Gauge(contract.METRIC_REQUESTS_PROCESSING, "Number of requests processing.", registry=r)
        self.deferred = Gauge(contract.METRIC_REQUESTS_DEFERRED, "Number of requests deferred (queued).", registry=r)
        self.kv_usage_llamacpp = Gauge("llamacpp:kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.",
                                       registry=r)
        self.kv_tokens = Gauge("llamacpp:kv_cache_tokens", "KV-cache tokens.", registry=r)

        self.ttft = Histogram("r1_time_to_first_token_seconds", "Time from arrival to the first generated token.",
                              ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("r1_inter_token_latency_seconds", "Time between consecutive generated tokens.",
                             buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram("r1_request_duration_seconds", "Time from arrival to the last token.",
                             ["endpoint"], buckets=_E2E_BUCKETS, registry=r)
        self.requests = Counter("r1_requests", "Requests by endpoint and outcome.", ["endpoint", "outcome"],
                                registry=r)
        self.kv_usage = Gauge("r1_kv_cache_usage_ratio", "Fraction of the KV cache holding tokens.", registry=r)
        self.load_seconds = Gauge("r1_model_load_seconds", "Seconds spent loading the model.", registry=r)
        self.degenerate = Counter("r1_degenerate_generations", "Generations detected as repeating loops.",
                                  ["action"], registry=r)
        self.ready = Gauge("r1_ready", "1 when the model is loaded, warmed up and the canary passed.", registry=r)
        self.slots = Gauge("r1_slots", "Parallel sequence slots.", registry=r)
        self.info = Info("r1_runtime", "Model and runtime settings.", registry=r)
        self.buffer_bytes = Gauge("r1_llamacpp_buffer_bytes", "Bytes llama.cpp allocated at load, by device and kind "
                                  "(weights, kv_cache, compute).", ["device", "kind"], registry=r)
        self.offloaded_layers = Gauge("r1_llamacpp_offloaded_layers", "Layers llama.cpp offloaded to GPUs at load "
                                      "(the output layer counts as one).", registry=r)
        for e in ENDPOINTS:  # pre-create the bounded label sets so dashboards see zeros, not gaps
            self.ttft.labels(e)
            self.e2e.labels(e)
            for o in OUTCOMES:
                self.requests.labels(e, o)
        for a in ("counted", "stopped", "canary"):
            self.degenerate.labels(a)

    def loaded(self, report) -> None:
        """What llama.cpp reported at load (llamalog.LoadReport)."""
        for device, kinds in report.by_device.items():
            for kind, n in kinds.items():
                self.buffer_bytes.labels(device, kind).set(n)
        self.offloaded_layers.set(report.offloaded or 0)

    def finished(self, n_prompt: int, t_prompt: float, n_gen: int, t_gen: float, cached: int = 0) -> None:
        """One request done: `n_prompt` prompt tokens evaluated (beyond `cached` reused ones) in `t_prompt`."""
        self.prompt_tokens.inc(n_prompt)
        self.prompt_cached.inc(cached)
        self.prompt_seconds.inc(t_prompt)
        self.tokens_predicted.inc(n_gen)
        self.tokens_predicted_seconds.inc(t_gen)
        t = self._totals
        for i, v in enumerate((n_prompt, t_prompt, n_gen, t_gen)):
            t[i] += v
        # averages over the lifetime, as llama-server reports them
        if t[1] > 0:
            self.prompt_tps.set(t[0] / t[1])
        if t[3] > 0:
            self.predicted_tps.set(t[2] / t[3])

    def render(self) -> bytes:
        return pc.generate_latest(self.registry)
