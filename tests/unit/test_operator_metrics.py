"""Per-deployment operator series: one plan series per R1Deployment, replaced when the plan changes, gone on delete."""

from __future__ import annotations

from prometheus_client import REGISTRY

from r1_operator import metrics


def _plan_series(ns: str) -> list[dict]:
    return [s.labels for m in metrics.PLAN.collect() for s in m.samples if s.labels["namespace"] == ns]


def _status(variant: str, layers: str, ready: bool) -> dict:
    return {"plan": {"variant": variant, "gpuLayers": layers, "node": "n1", "mode": "gpu"},
            "cache": {"percent": 50.0, "bytesDone": 7, "phase": "downloading"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}


def test_plan_series_follow_the_status_and_go_with_the_deployment():
    ns = "metrics-test"
    metrics.record_status(ns, "r1", _status("UD-IQ1_S", "10/61", False))
    metrics.record_status(ns, "r1", _status("UD-IQ1_S", "10/61", True))
    assert [s["gpu_layers"] for s in _plan_series(ns)] == ["10/61"]
    metrics.record_status(ns, "r1", _status("UD-IQ1_M", "8/61", True))
    assert [(s["variant"], s["gpu_layers"]) for s in _plan_series(ns)] == [("UD-IQ1_M", "8/61")]
    get = REGISTRY.get_sample_value
    assert get("r1_operator_cache_progress_ratio", {"namespace": ns, "r1deployment": "r1", "variant": "UD-IQ1_M"}) == 0.5
    assert get("r1_operator_cache_progress_ratio", {"namespace": ns, "r1deployment": "r1", "variant": "UD-IQ1_S"}) is None
    assert get("r1_operator_deployment_ready", {"namespace": ns, "r1deployment": "r1"}) == 1
    metrics.forget(ns, "r1")
    assert _plan_series(ns) == []
    assert get("r1_operator_deployment_ready", {"namespace": ns, "r1deployment": "r1"}) is None
