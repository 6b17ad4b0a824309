"""spec.autoscaling (pure): its bounds, the KEDA ScaledObject it becomes, the query, and the Autoscaling condition."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from r1_operator.api import contract
from r1_operator.api.types import R1DeploymentSpec, wanted_replicas
from r1_operator.builders import manifests as mf
from r1_operator.builders.status import Autoscaling, CacheObservation, Desired, RuntimeObservation, build_status


def spec(**kw) -> R1DeploymentSpec:
    return R1DeploymentSpec.model_validate(kw)


@pytest.mark.parametrize("replicas,bounds,want", [
    (1, None, 1), (5, None, 5), (0, None, 0),
    (1, (2, 4), 2),  # below minReplicas (before KEDA acts, or without KEDA): the minimum serves
    (3, (2, 4), 3),  # what the autoscaler wrote
    (9, (2, 4), 4),  # above maxReplicas: the maximum
])
def test_wanted_replicas_stay_within_the_autoscaling_bounds(replicas, bounds, want):
    auto = {"minReplicas": bounds[0], "maxReplicas": bounds[1]} if bounds else None
    assert wanted_replicas(spec(replicas=replicas, **({"autoscaling": auto} if auto else {}))) == want


def test_max_replicas_is_required_and_fields_are_bounded():
    with pytest.raises(ValidationError, match="maxReplicas"):
        spec(autoscaling={"minReplicas": 1})
    with pytest.raises(ValidationError, match="targetQueuePerReplica"):
        spec(autoscaling={"maxReplicas": 2, "targetQueuePerReplica": 0})
    with pytest.raises(ValidationError, match="prometheusAddress"):
        spec(autoscaling={"maxReplicas": 2, "prometheusAddress": "prometheus:9090"})


def test_scaled_object_targets_the_r1deployment_on_the_queue_with_the_spec_bounds():
    s = spec(autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetQueuePerReplica": 2.5,
                          "scaleDownDelaySeconds": 120, "pollingIntervalSeconds": 5})
    so = mf.build_scaled_object("r1", "team", "uid-1", s, "http://prom:9090")
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment",
                                            "name": "r1"}
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"], so["spec"]["pollingInterval"]) == (1, 3, 5)
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 120
    assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": mf.SCALE_UP_PERIOD_S}]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {"serverAddress": "http://prom:9090", "query": mf.queue_query("r1", "team"),
                                   "threshold": "2.5"}


def test_the_queue_query_sums_waiting_and_running_of_this_r1deployment_only():
    q = mf.queue_query("r1", "team")
    assert contract.METRIC_REQUESTS_DEFERRED in q and contract.METRIC_REQUESTS_PROCESSING in q
    assert 'namespace="team"' in q and 'service="r1"' in q
    assert q.startswith("sum(") and q.endswith(" or vector(0)")  # no series yet reads as an empty queue


_PLAN = {"fits": True, "variant": "UD-IQ1_S", "nGpuLayers": 0, "reasons": ["cpu"], "why": "planned"}
_READY = RuntimeObservation(exists=True, replicas=1, ready_replicas=1, updated_replicas=1, up_to_date=True)


def _status(autoscaling):
    d = Desired(generation=1, replicas=1, plan=_PLAN, endpoint="http://r1.ns.svc:8080/v1", selector="x=y",
                autoscaling=autoscaling)
    return build_status(d, CacheObservation(pvc="c", ready={"bytesTotal": 1}), _READY, None, "t0")


def test_autoscaling_condition_is_absent_when_off_and_says_why_when_unavailable():
    off = _status(None)
    assert "Autoscaling" not in {c["type"] for c in off.status["conditions"]}
    on = _status(Autoscaling(True, "KEDA", "KEDA ScaledObject r1 scales 1 to 3 replicas"))
    assert on.condition("Autoscaling")["status"] == "True" and on.condition("Degraded")["status"] == "False"
    missing = _status(Autoscaling(False, "KEDAMissing", "the scaledobjects.keda.sh CRD is not installed"))
    assert missing.condition("Autoscaling")["reason"] == "KEDAMissing"
    # still serving spec.replicas, but what was asked for is not in effect: said where an SRE looks
    assert missing.condition("Ready")["status"] == "True"
    deg = missing.condition("Degraded")
    assert (deg["status"], deg["reason"]) == ("True", "AutoscalingUnavailable")
    assert "scaledobjects.keda.sh" in deg["message"]
    d = Desired(generation=1, replicas=1, plan=_PLAN, endpoint="e", selector="x=y",
                autoscaling=Autoscaling(False, "KEDAMissing", "m"))
    again = build_status(d, CacheObservation(pvc="c", ready={"bytesTotal": 1}), _READY, missing.status, "t1")
    assert again.condition("Autoscaling")["lastTransitionTime"] == "t0"  # no flapping while nothing changes


def test_every_condition_the_status_writes_is_one_the_crd_admits():
    from r1_operator.api.crd import crd

    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    admitted = set(schema["properties"]["conditions"]["items"]["properties"]["type"]["enum"])
    written = {c["type"] for c in _status(Autoscaling(False, "KEDAMissing", "m")).status["conditions"]}
    assert written == admitted
