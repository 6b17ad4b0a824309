"""The Helm chart, rendered and linted by the real helm binary; alerts checked and unit-tested by promtool."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "r1-operator"
HELM = str(Path(sys.executable).parent / "helm")
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)


def render(*args: str) -> list[dict]:
    r = helm("template", "r1", str(CHART), "--namespace", "r1-system", *args)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def test_ci_values_cover_the_five_setups():
    assert {p.name for p in CI_VALUES} == {"default-values.yaml", "monitoring-values.yaml", "ha-values.yaml",
                                          "namespaced-values.yaml", "gpu-cluster-values.yaml"}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_lint_strict_and_template(values):
    r = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert r.returncode == 0, r.stdout + r.stderr
    docs = render("-f", str(values))
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "Service"} <= kinds


def _pod_specs(docs: list[dict]):
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_pods_meet_the_restricted_profile(values):
    for name, pod in _pod_specs(render("-f", str(values))):
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert c["resources"]["limits"]["memory"], name


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rbac_has_no_wildcards_and_writes_only_what_the_operator_creates(values):
    docs = render("-f", str(values))
    writes = set()
    for d in docs:
        if d["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in d["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), (d["metadata"]["name"], rule)
            if set(rule["verbs"]) & {"create", "patch", "update", "delete"}:
                writes.update(rule["resources"])
    assert writes <= {"r1deployments", "r1deployments/status", "persistentvolumeclaims", "jobs", "deployments",
                      "services", "configmaps", "servicemonitors", "networkpolicies", "events", "kopfpeerings",
                      "clusterkopfpeerings", "scaledobjects"}
    inventory = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-inventory"))
    nodes = next(r for r in inventory["rules"] if "nodes" in r["resources"])
    assert set(nodes["verbs"]) == {"get", "list", "watch"}


def _workload_rules(docs: list[dict]) -> list[dict]:
    return next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-workloads"))["rules"]


def test_scaled_objects_are_granted_only_with_autoscaling_enabled():
    """KEDA is optional: without autoscaling.enabled the operator may not touch keda.sh at all."""
    off = render()
    assert not any("keda.sh" in r["apiGroups"] for d in off if d["kind"] in ("ClusterRole", "Role") for r in d["rules"])
    on = render("--set", "autoscaling.enabled=true", "--set", "autoscaling.prometheusAddress=http://prom.mon.svc:9090")
    (rule,) = [r for r in _workload_rules(on) if "keda.sh" in r["apiGroups"]]
    assert rule["resources"] == ["scaledobjects"] and set(rule["verbs"]) == {"get", "create", "patch", "delete"}
    env = {e["name"]: e.get("value") for e in
           next(d for d in on if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["R1_PROMETHEUS_ADDRESS"] == "http://prom.mon.svc:9090"
    bad = helm("template", "r1", str(CHART), "--set", "autoscaling.prometheusAddress=prom:9090")
    assert bad.returncode != 0 and "prometheusAddress" in bad.stderr


def test_the_operator_may_delete_what_it_retires():
    """Shrinking replicas deletes a placement's Deployment, and a cache no placement uses: the chart allows both."""
    rules = _workload_rules(render())
    for resource in ("deployments", "jobs", "persistentvolumeclaims"):
        (rule,) = [r for r in rules if resource in r["resources"]]
        assert "delete" in rule["verbs"], resource


def test_namespaced_watch_binds_writes_only_in_those_namespaces():
    docs = render("-f", str(CHART / "ci" / "namespaced-values.yaml"))
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    workload = [b for b in bindings if b["roleRef"]["name"].endswith("-workloads")]
    assert {b["kind"] for b in workload} == {"RoleBinding"}
    assert sorted(b["metadata"]["namespace"] for b in workload) == ["team-a", "team-b"]
    inventory = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-inventory"))
    # GPUs held anywhere count: pods are listed and watched cluster-wide, read-only, and nothing else of them
    (pods,) = [r for r in inventory["rules"] if "pods" in r["resources"]]
    assert pods["resources"] == ["pods"] and sorted(pods["verbs"]) == ["list", "watch"]
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--peering=r1-operator" in args
    assert {d["kind"] for d in docs if d["kind"].endswith("KopfPeering")} == {"KopfPeering"}


def test_runtime_defaults_reach_the_operator():
    docs = render("-f", str(CHART / "ci" / "namespaced-values.yaml"))
    env = {e["name"]: e.get("value") for e in
           next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["R1_DEFAULT_STORAGE_CLASS"] == "fast-nvme"
    assert env["R1_HUB_ENDPOINT"] == "http://hf-mirror.models.svc:8080"
    assert env["R1_RUNTIME_IMAGE"] == "r1-operator/runtime:0.1.0"
    from r1_operator.settings import OperatorSettings

    s = OperatorSettings.from_env({k: v for k, v in env.items() if k.startswith("R1_") and v is not None})
    assert s.default_storage_class == "fast-nvme" and s.hub_endpoint == "http://hf-mirror.models.svc:8080"
    assert s.runtime_memory_margin_bytes == OperatorSettings().runtime_memory_margin_bytes  # the chart's default
    # a large margin renders as an integer the operator reads (not YAML's float notation)
    docs = render("--set", "runtime.memoryMarginBytes=17179869184")
    env = {e["name"]: e.get("value") for e in
           next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert OperatorSettings.from_env({"R1_RUNTIME_MEMORY_MARGIN_BYTES": env["R1_RUNTIME_MEMORY_MARGIN_BYTES"]}) \
        .runtime_memory_margin_bytes == 16 << 30


def test_the_operator_is_ready_only_when_its_readiness_endpoint_says_so():
    """The readiness probe reads the operator's own /readyz (started, reaching the API server), on the port and
    path its --readiness argument serves; the liveness probe reads kopf's /healthz."""
    from r1_operator.main import build_parser

    dep = next(d for d in render() if d["kind"] == "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    args = build_parser().parse_args([a for a in c["args"] if a.startswith("--")])
    for probe, endpoint in ((c["readinessProbe"], args.readiness), (c["livenessProbe"], args.liveness)):
        assert endpoint == f"http://0.0.0.0:{ports[probe['httpGet']['port']]}{probe['httpGet']['path']}"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("args,message", [
    (["--set", "replicaCount=0"], "/replicaCount"),
    (["--set", "colour=blue"], "'colour'"),
    (["--set", "watch.namespaces[0]=Bad_NS"], "/watch/namespaces/0"),
    (["--set", "prometheusRule.tokenRateDropRatio=2"], "/prometheusRule/tokenRateDropRatio"),
    (["--set", "runtime.hubEndpoint=ftp://mirror"], "/runtime/hubEndpoint"),
    (["--set", "runtime.memoryMarginBytes=-1"], "/runtime/memoryMarginBytes"),
    (["--set", "replicaCount=2"], "needs ha.enabled=true"),
])
def test_bad_values_are_rejected_naming_the_key(args, message):
    r = helm("template", "r1", str(CHART), *args)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_chart_crds_and_dashboard_are_the_generated_ones():
    for f in ("r1deployments.yaml", "kopf-peering.yaml"):
        assert (CHART / "crds" / f).read_text() == (REPO / "crds" / f).read_text(), f"copy crds/{f} into the chart"
    from r1_operator.dashboard import dashboard_json

    assert (CHART / "files" / "dashboard.json").read_text() == dashboard_json() + "\n", \
        "regenerate with: r1ctl dashboard > charts/r1-operator/files/dashboard.json"


def _rules(tmp_path: Path) -> Path:
    (rule,) = [d for d in render("-f", str(CHART / "ci" / "monitoring-values.yaml")) if d["kind"] == "PrometheusRule"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def _promtool() -> str:
    p = shutil.which("promtool")
    assert p, "promtool is not installed; run 'make setup' (Debian package prometheus)"
    return p


def test_promtool_checks_the_rendered_rules(tmp_path):
    r = subprocess.run([_promtool(), "check", "rules", str(_rules(tmp_path))], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 7 rules found" in r.stdout


def _fill(template: str, labels: dict) -> str:
    for k, v in labels.items():
        template = template.replace(f"{{{{ $labels.{k} }}}}", v)
    return template


def test_promtool_unit_tests_fire_and_resolve_each_alert(tmp_path):
    rules = _rules(tmp_path)
    tests = yaml.safe_load((Path(__file__).parent / "alerts_test.yaml").read_text())
    tests["rule_files"] = [str(rules)]
    fired = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    by_name = {r["alert"]: r for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert fired == set(by_name), f"alerts without a firing test: {set(by_name) - fired}"
    for case in tests["tests"]:
        for t in case["alert_rule_test"]:
            for exp in t["exp_alerts"]:
                exp["exp_annotations"] = {k: _fill(v, exp["exp_labels"])
                                          for k, v in by_name[t["alertname"]]["annotations"].items()}
    path = tmp_path / "alerts_test.yaml"
    path.write_text(yaml.safe_dump(tests))
    r = subprocess.run([_promtool(), "test", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _operator_env(docs: list[dict]) -> dict:
    c = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in c["env"] if e["name"].startswith("R1_") and e.get("value") is not None}


def test_gpu_cluster_values_reach_the_operator_settings():
    from r1_operator.settings import OperatorSettings

    default = OperatorSettings.from_env(_operator_env(render()))
    assert default.runtime_gpu_image == "" and default.memory_by_label() == {} and default.pools() == ()
    assert default.pod_defaults() == {"annotations": {}, "labels": {}, "env": [], "imagePullSecrets": []}
    assert default.load_bytes_per_second == OperatorSettings().load_bytes_per_second
    values = CHART / "ci" / "gpu-cluster-values.yaml"
    s = OperatorSettings.from_env(_operator_env(render("-f", str(values))))
    assert s.runtime_gpu_image == "registry.example.com/r1/runtime:0.1.0-cuda"
    assert s.memory_by_label() == {"example.com/gpu-type=big": 81920}
    (pool,) = s.pools()
    assert (pool.name, pool.gpus, pool.memory, dict(pool.labels)["karpenter.sh/nodepool"]) == \
        ("gpu", 4, "393206Mi", "gpu")
    assert (s.runtime_class_name, s.priority_class_name, s.load_bytes_per_second) == ("nvidia", "llm", 50_000_000)
    assert s.pod_defaults() == {"annotations": {"team": "ml"}, "labels": {"cost-center": "gpu"},
                                "env": [{"name": "HTTPS_PROXY", "value": "http://proxy.example.com:3128"}],
                                "imagePullSecrets": ["registry-creds"]}


@pytest.mark.parametrize("args, key", [
    (("--set", "gpuMemoryByLabel.nokey=1"), "gpuMemoryByLabel"),
    (("--set-json", 'gpuMemoryByLabel={"a=b": 0}'), "gpuMemoryByLabel"),
    (("--set", "runtime.runtimeClassName=Not_Valid"), "runtimeClassName"),
    (("--set-json", 'runtime.extraEnv=[{"value": "x"}]'), "extraEnv"),
    (("--set-json", 'nodePools=[{"name": "gpu", "cpu": "8", "memory": "64Gi"}]'), "nodePools"),
    (("--set-json", 'nodePools=[{"name": "gpu", "labels": {"a": "b"}, "cpu": "8", "memory": "lots"}]'), "nodePools"),
])
def test_bad_gpu_cluster_values_are_rejected_naming_the_key(args, key):
    r = helm("template", "r1", str(CHART), *args)
    assert r.returncode != 0 and key in r.stderr, r.stderr
