"""Pods for real clusters: pinned by node name, the GPU taint tolerated, no GPU visible to a pod without one, the
chart's pod defaults under spec.scheduling, the GPU image for GPU plans, and the startup probe's budget."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from r1_operator.api.types import R1DeploymentSpec
from r1_operator.builders import manifests as mf
from r1_operator.builders.pods import pinned_affinity
from r1_operator.planning.decide import decide
from r1_operator.settings import OperatorSettings
from test_gpus import cloud_nodes

S = OperatorSettings()
GKE = "gke-a3-h100x8"


def _plan(scheduling=None, node=GKE, **kw):
    spec = R1DeploymentSpec.model_validate({"scheduling": {"nodeSelector": {"kubernetes.io/hostname": node},
                                                           **(scheduling or {})}, **kw})
    plan = decide(spec, 1, list(cloud_nodes().values()), None).plan
    assert plan["fits"] and plan["node"] == node, plan["reasons"]
    return spec, plan


def _pods(spec, plan, s=S):
    dep = mf.build_deployment("r1", "ns", "u", spec, plan, s, cache_ready=True)["spec"]["template"]
    job = mf.build_fetch_job("ns", spec, plan, s)["spec"]["template"]
    return dep, job


def _env(pod):
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def test_pods_are_pinned_by_node_name_and_the_pin_joins_each_required_term_of_the_spec():
    assert pinned_affinity(None, "n-1") == {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n-1"]}]}]}}}
    user = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    got = pinned_affinity(user, "n-1")
    terms = got["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert [t["matchExpressions"][0]["values"] for t in terms] == [["a"], ["b"]]
    assert all(t["matchFields"] == [{"key": "metadata.name", "operator": "In", "values": ["n-1"]}] for t in terms)
    assert "podAntiAffinity" in got and "matchFields" not in str(user)  # the spec's own object is left alone
    spec, plan = _plan()
    dep, job = _pods(spec, plan)
    for pod in (dep, job):
        assert "kubernetes.io/hostname" not in pod["spec"]["nodeSelector"] or \
            pod["spec"]["nodeSelector"] == spec.scheduling.node_selector  # only what the spec asked for
        assert GKE in str(pod["spec"]["affinity"]["nodeAffinity"])


def test_gpu_pods_and_the_fetch_job_on_a_gpu_node_tolerate_the_gpu_taint_and_a_cpu_plan_does_not():
    spec, plan = _plan()
    assert plan["gpus"] > 0
    for pod in _pods(spec, plan):
        assert {"key": "nvidia.com/gpu", "operator": "Exists"} in pod["spec"]["tolerations"]
    cpu_spec = R1DeploymentSpec.model_validate({"scheduling": {"nodeSelector": {"kubernetes.io/hostname": "aks-nc-a100"},
                                                               "tolerations": [{"key": "sku", "operator": "Exists"}]}})
    cpu_plan = {**decide(cpu_spec, 1, list(cloud_nodes().values()), None).plan, "gpus": 0}
    dep, _ = _pods(cpu_spec, cpu_plan)
    assert dep["spec"]["tolerations"] == [{"key": "sku", "operator": "Exists"}]


def test_a_container_without_a_gpu_sees_none():
    spec, plan = _plan()
    dep, job = _pods(spec, plan)
    assert "NVIDIA_VISIBLE_DEVICES" not in _env(dep)  # the device plugin sets it for the GPUs it allocated
    assert _env(job)["NVIDIA_VISIBLE_DEVICES"] == "void"
    cpu, _ = _pods(spec, {**plan, "gpus": 0, "nGpuLayers": 0, "tensorSplit": []})
    assert _env(cpu)["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_chart_defaults_and_spec_scheduling_reach_both_pods_the_spec_winning_and_the_operator_own_fields_kept():
    s = OperatorSettings(runtime_class_name="nvidia", priority_class_name="gpu-low", image_pull_secrets="reg-a, reg-b",
                         pod_annotations='{"team": "ml", "cost": "a"}', pod_labels='{"tier": "gpu"}',
                         extra_env='[{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}, {"name": "NO_PROXY", '
                                   '"value": ".svc"}]')
    spec, plan = _plan({"runtimeClassName": "kata-nvidia", "imagePullSecrets": [{"name": "reg-b"}, {"name": "reg-c"}],
                        "podAnnotations": {"cost": "b"}, "podLabels": {"owner": "me"},
                        "env": [{"name": "NO_PROXY", "value": ".cluster.local"},
                                {"name": "SSL_CERT_FILE", "value": "/etc/ca/ca.pem"}]})
    for pod in _pods(spec, plan, s):
        ps, meta = pod["spec"], pod["metadata"]
        assert ps["runtimeClassName"] == "kata-nvidia" and ps["priorityClassName"] == "gpu-low"
        assert ps["imagePullSecrets"] == [{"name": "reg-a"}, {"name": "reg-b"}, {"name": "reg-c"}]
        assert meta["annotations"]["team"] == "ml" and meta["annotations"]["cost"] == "b"
        assert meta["labels"]["tier"] == "gpu" and meta["labels"]["owner"] == "me"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "r1-operator"
        env = _env(pod)
        assert env["HTTPS_PROXY"] == "http://proxy:3128" and env["NO_PROXY"] == ".cluster.local"
        assert env["SSL_CERT_FILE"] == "/etc/ca/ca.pem" and env["HOME"] == "/tmp"
    dep, _ = _pods(spec, plan, s)
    assert mf.names.ANN_PLAN_HASH in dep["metadata"]["annotations"]


@pytest.mark.parametrize("scheduling, field", [
    ({"env": [{"name": "HF_TOKEN", "value": "x"}]}, "env"),
    ({"runtimeClassName": "Not_A_Name"}, "runtimeClassName"),
    ({"sharedGPUs": "sometimes"}, "sharedGPUs"),
    ({"imagePullSecrets": [{"name": ""}]}, "imagePullSecrets"),
])
def test_bad_scheduling_fields_are_refused_naming_them(scheduling, field):
    if field == "env":  # the CRD's CEL rule refuses it on the API server (tests/integration); pydantic lets it by
        spec = R1DeploymentSpec.model_validate({"scheduling": scheduling})
        assert spec.scheduling.env[0].name == "HF_TOKEN"
        return
    with pytest.raises(ValidationError) as e:
        R1DeploymentSpec.model_validate({"scheduling": scheduling})
    assert field in str(e.value)


@pytest.mark.parametrize("text, var", [("nope", "R1_POD_LABELS"), ('{"a": 1}', "R1_POD_LABELS")])
def test_bad_pod_defaults_are_refused_at_start_naming_the_variable(text, var):
    with pytest.raises(ValueError, match=var):
        OperatorSettings.from_env({"R1_POD_LABELS": text})
    with pytest.raises(ValueError, match="R1_EXTRA_ENV"):
        OperatorSettings.from_env({"R1_EXTRA_ENV": '[{"value": "x"}]'})
    with pytest.raises(ValueError, match="R1_GPU_MEMORY_BY_LABEL"):
        OperatorSettings.from_env({"R1_GPU_MEMORY_BY_LABEL": '{"x": 1}'})


def test_gpu_plans_get_the_gpu_image_and_cpu_plans_and_fetches_the_cpu_one():
    s = OperatorSettings(runtime_image="r/runtime:1", runtime_gpu_image="r/runtime:1-cuda")
    spec, plan = _plan()
    dep, job = _pods(spec, plan, s)
    assert dep["spec"]["containers"][0]["image"] == "r/runtime:1-cuda"
    assert job["spec"]["containers"][0]["image"] == "r/runtime:1"
    cpu, _ = _pods(spec, {**plan, "gpus": 0, "nGpuLayers": 0, "tensorSplit": []}, s)
    assert cpu["spec"]["containers"][0]["image"] == "r/runtime:1"
    only_cpu, _ = _pods(spec, plan, OperatorSettings(runtime_image="r/runtime:1"))
    assert only_cpu["spec"]["containers"][0]["image"] == "r/runtime:1"  # no GPU image set: the one image


def test_the_startup_budget_is_the_load_at_the_slowest_rate_plus_the_grace_and_the_spec_can_change_both():
    spec, plan = _plan()
    probe = lambda sp, s=S: _pods(sp, plan, s)[0]["spec"]["containers"][0]["startupProbe"]  # noqa: E731
    base = probe(spec)
    assert base["failureThreshold"] == math.ceil(plan["modelBytes"] / S.load_bytes_per_second / 10) + 30
    slow_disk, _ = _plan(inference={"loadBytesPerSecond": 25_000_000, "startupGraceSeconds": 900})
    slow = probe(slow_disk)
    assert slow["failureThreshold"] * slow["periodSeconds"] >= plan["modelBytes"] / 25_000_000 + 900
    assert slow["failureThreshold"] > 3 * base["failureThreshold"]
    chart = probe(spec, OperatorSettings(load_bytes_per_second=50_000_000))
    assert chart["failureThreshold"] == math.ceil(plan["modelBytes"] / 50_000_000 / 10) + 30
    dep = mf.build_deployment("r1", "ns", "u", slow_disk, plan, S, cache_ready=True)
    assert dep["spec"]["progressDeadlineSeconds"] > slow["failureThreshold"] * slow["periodSeconds"]
