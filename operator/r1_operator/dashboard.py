"""The Grafana dashboard (pure): one source for the chart's ConfigMap and the per-deployment ConfigMaps.

Runtime series carry the scrape labels `namespace`, `service` (the R1Deployment's
name: its Service is named after it) and `pod`; operator series carry
`namespace` and `r1deployment`. tests/e2e/test_dashboard_queries.py runs every query against a real
Prometheus scraping a real runtime.
"""

from __future__ import annotations

import functools
import json
from typing import Any

RT = 'namespace=~"$namespace", service=~"$deployment", pod=~"$pod"'
OP = 'namespace=~"$namespace", r1deployment=~"$deployment"'
RATE = "$__rate_interval"

# (title, unit, [(expr, legend)], kind)
PANELS: list[tuple[str, str, list[tuple[str, str]], str]] = [
    ("Generated tokens/s", "short", [
        (f'sum by (service, pod) (rate(llamacpp:tokens_predicted_total{{{RT}}}[{RATE}]))', "{{service}} {{pod}}")],
     "timeseries"),
    ("Prompt tokens/s", "short", [
        (f'sum by (service, pod) (rate(llamacpp:prompt_tokens_total{{{RT}}}[{RATE}]))', "{{service}} {{pod}}")],
     "timeseries"),
    ("Time to first token", "s", [
        (f'histogram_quantile(0.5, sum by (le, service) (rate(r1_time_to_first_token_seconds_bucket{{{RT}}}[{RATE}])))',
         "p50 {{service}}"),
        (f'histogram_quantile(0.95, sum by (le, service) (rate(r1_time_to_first_token_seconds_bucket{{{RT}}}[{RATE}])))',
         "p95 {{service}}")], "timeseries"),
    ("Inter-token latency", "s", [
        (f'histogram_quantile(0.5, sum by (le, service) (rate(r1_inter_token_latency_seconds_bucket{{{RT}}}[{RATE}])))',
         "p50 {{service}}"),
        (f'histogram_quantile(0.95, sum by (le, service) (rate(r1_inter_token_latency_seconds_bucket{{{RT}}}[{RATE}])))',
         "p95 {{service}}")], "timeseries"),
    ("End-to-end latency", "s", [
        (f'histogram_quantile(0.5, sum by (le, service) (rate(r1_request_duration_seconds_bucket{{{RT}}}[{RATE}])))',
         "p50 {{service}}"),
        (f'histogram_quantile(0.95, sum by (le, service) (rate(r1_request_duration_seconds_bucket{{{RT}}}[{RATE}])))',
         "p95 {{service}}")], "timeseries"),
    ("Requests processing and deferred", "short", [
        (f'sum by (service) (llamacpp:requests_processing{{{RT}}})', "processing {{service}}"),
        (f'sum by (service) (llamacpp:requests_deferred{{{RT}}})', "deferred {{service}}")], "timeseries"),
    ("Requests by outcome", "reqps", [
        (f'sum by (service, outcome) (rate(r1_requests_total{{{RT}}}[{RATE}]))', "{{service}} {{outcome}}")],
     "timeseries"),
    ("KV cache usage", "percentunit", [
        (f'max by (service, pod) (r1_kv_cache_usage_ratio{{{RT}}})', "{{service}} {{pod}}")], "timeseries"),
    ("Degenerate generations", "short", [
        (f'sum by (service, action) (increase(r1_degenerate_generations_total{{{RT}}}[{RATE}]))',
         "{{service}} {{action}}")], "timeseries"),
    ("Model: variant, GPU layers, context", "short", [
        (f'max by (service, pod, variant, n_gpu_layers, ctx, parallel) (r1_runtime_info{{{RT}}})',
         "{{variant}} ngl={{n_gpu_layers}} ctx={{ctx}}")], "table"),
    ("Model load seconds", "s", [(f'max by (service, pod) (r1_model_load_seconds{{{RT}}})', "{{pod}}")], "stat"),
    ("Cache download progress", "percentunit", [
        (f'max by (r1deployment, variant) (r1_operator_cache_progress_ratio{{{OP}}})', "{{r1deployment}} {{variant}}")],
     "bargauge"),
    ("Operator reconcile errors", "short", [
        (f'sum by (kind) (increase(r1_operator_reconcile_errors_total[{RATE}]))', "{{kind}}")], "timeseries"),
]


def _variable(name: str, query: str, label: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": f"{name}-var"}, "definition": query, "refresh": 2, "includeAll": True,
            "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "sort": 1}


def build() -> dict[str, Any]:
    panels = []
    for i, (title, unit, targets, kind) in enumerate(PANELS):
        w = 12 if kind != "stat" else 6
        panels.append({
            "id": i + 1, "title": title, "type": kind,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": w, "x": (i % 2) * 12, "y": (i // 2) * 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"expr": e, "legendFormat": legend, "refId": chr(65 + j),
                         **({"format": "table", "instant": True} if kind == "table" else {})}
                        for j, (e, legend) in enumerate(targets)],
        })
    return {
        "uid": "r1-operator", "title": "DeepSeek-R1 (r1-operator)", "tags": ["r1-operator", "llama.cpp"],
        "schemaVersion": 39, "version": 1, "editable": True, "timezone": "browser", "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {"text": "Prometheus", "value": "prometheus"}},
            _variable("namespace", "label_values(llamacpp:requests_processing, namespace)", "Namespace"),
            _variable("deployment", 'label_values(llamacpp:requests_processing{namespace=~"$namespace"}, service)',
                      "R1Deployment"),
            _variable("pod", 'label_values(llamacpp:requests_processing{namespace=~"$namespace", service=~"$deployment"}, pod)',
                      "Pod"),
        ]},
        "panels": panels,
    }


@functools.cache
def dashboard_json() -> str:
    return json.dumps(build(), indent=1, sort_keys=True)
