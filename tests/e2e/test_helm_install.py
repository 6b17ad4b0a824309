"""helm install into the real cluster; the operator then runs with the chart's RBAC (its ServiceAccount's token).

The operator process runs here, not in the (simulated) pod: it gets the args and
env the chart rendered into its Deployment and a kubeconfig holding a token for
the chart's ServiceAccount, so every API call it makes is checked against the
chart's Roles, not admin.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from r1_devtools.kit import REPO, drop_namespace, keda_crd, make_namespace, start_operator
from r1_devtools.waiting import wait_for

HELM = str(Path(sys.executable).parent / "helm")
RELEASE = "r1-operator"


def helm(kube, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([HELM, "--kubeconfig", kube.kubeconfig, *args], capture_output=True, text=True, timeout=180)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def sa_kubeconfig(kube, namespace: str, sa: str, path: Path) -> str:
    token = kube.run("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(Path(kube.kubeconfig).read_text())
    cfg = {"apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
           "users": [{"name": sa, "user": {"token": token}}],
           "contexts": [{"name": sa, "context": {"cluster": admin["clusters"][0]["name"], "user": sa}}],
           "current-context": sa}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@contextmanager
def installed(kube, hub, tmp_path, *sets: str):
    """The chart installed (with `sets`) into a new system namespace, watching a new namespace, and an operator
    process running with the chart's args, env and ServiceAccount token; yields (watched namespace, operator).
    KEDA's CRD alone is installed, so ScaledObjects are checked by the API server."""
    suffix = uuid.uuid4().hex[:6]
    system = make_namespace(kube, f"r1-system-{suffix}")
    watched = make_namespace(kube, f"helm-{suffix}")
    op = None
    try:
        kube.run("apply", "--server-side", "-f", str(keda_crd()))
        helm(kube, "install", RELEASE, str(REPO / "charts" / "r1-operator"), "-n", system, "--wait", "--timeout=90s",
             "--set", f"watch.namespaces={{{watched}}}", "--set", f"runtime.hubEndpoint={hub}", *sets)
        dep = kube.json("get", "deploy", RELEASE, "-n", system)
        container = dep["spec"]["template"]["spec"]["containers"][0]
        args = [a for a in container["args"] if not a.startswith(("--liveness", "--readiness", "--metrics-port"))]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        assert env["R1_HUB_ENDPOINT"] == hub and f"--namespace={watched}" in args

        kubeconfig = sa_kubeconfig(kube, system, dep["spec"]["template"]["spec"]["serviceAccountName"],
                                   tmp_path / "sa.kubeconfig")
        # the token really is restricted: no reads outside what the chart grants
        denied = subprocess.run([str(Path(sys.executable).parent / "kubectl"), "--kubeconfig", kubeconfig,
                                 "get", "secrets", "-n", watched], capture_output=True, text=True)
        assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()

        op = start_operator(kubeconfig, tmp_path / "operator.log", *args, env={**env, "R1_REPLAN_INTERVAL_S": "2"})
        yield system, watched, op
    finally:
        if op is not None:
            op.stop()
        helm(kube, "uninstall", RELEASE, "-n", system, check=False)
        drop_namespace(kube, watched)
        kube.run("delete", "crd", "scaledobjects.keda.sh", "--ignore-not-found", check=False)
        kube.run("delete", "namespace", system, "--wait=false", check=False)


@pytest.mark.cluster
def test_helm_install_operator_with_chart_rbac_then_helm_test_and_uninstall(kube, hub, tmp_path):
    with installed(kube, hub, tmp_path, "--set", "autoscaling.enabled=true",
                   "--set", "autoscaling.prometheusAddress=http://prometheus.monitoring:9090") as (system, watched, op):
        sample = yaml.safe_load((REPO / "examples" / "cpu-only.yaml").read_text())
        kube.apply(sample, watched)
        kube.wait_condition(watched, "r1-cpu", "Planned", timeout=30)
        kube.wait_condition(watched, "r1-cpu", "CacheReady", timeout=60)
        kube.run("wait", "--for=condition=Ready", "r1d/r1-cpu", "-n", watched, "--timeout=60s")
        # with the chart's RBAC: a ScaledObject for spec.autoscaling, and the deletes that shrinking replicas makes
        kube.run("patch", "r1d/r1-cpu", "-n", watched, "--type=merge", "-p",
                 '{"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 2}}}')
        kube.wait_condition(watched, "r1-cpu", "Autoscaling", timeout=60, reason="KEDA")
        assert kube.json("get", "scaledobject", "r1-cpu", "-n", watched)["spec"]["maxReplicaCount"] == 2
        two = yaml.safe_load((REPO / "examples" / "auto-2x80g.yaml").read_text())
        two["spec"].pop("scheduling")
        two["spec"]["replicas"] = 2
        kube.apply(two, watched)
        name = two["metadata"]["name"]
        kube.run("wait", "--for=condition=Ready", f"r1d/{name}", "-n", watched, "--timeout=120s")
        assert kube.r1d(watched, name)["status"]["plan"]["nodes"] == "2 nodes"
        kube.run("scale", f"r1d/{name}", "-n", watched, "--replicas=1")
        wait_for(lambda: [d["metadata"]["name"] for d in kube.json("get", "deploy", "-n", watched, "-l",
                                                                   f"r1.inference.dev/deployment={name}")["items"]]
                 == [name], 60, "the retired placement's Deployment to be deleted")
        log = op.log.read_text()
        assert "403" not in log and "orbidden" not in log, op.tail(40)

        helm(kube, "test", RELEASE, "-n", system, "--timeout=90s")

        kube.run("delete", "r1d", "--all", "-n", watched, "--wait=true")
        op.stop()
        helm(kube, "uninstall", RELEASE, "-n", system, "--wait", "--timeout=90s")
        sel = f"app.kubernetes.io/instance={RELEASE}"
        left = kube.json("get", "deploy,svc,sa,configmap,rolebinding", "-n", system, "-l", sel)["items"]
        left += kube.json("get", "clusterrole,clusterrolebinding", "-l", sel)["items"]
        left += kube.json("get", "rolebinding", "-n", watched, "-l", sel)["items"]
        assert not left, [f"{i['kind']}/{i['metadata']['name']}" for i in left]
        # the CRD policy: CRDs come from the chart's crds/ directory and stay (R1Deployments would go with them)
        kube.run("get", "crd", "r1deployments.r1.inference.dev")


@pytest.mark.cluster
def test_spec_autoscaling_without_the_charts_scaledobject_grant_says_forbidden_and_serves_spec_replicas(
        kube, hub, tmp_path):
    """The chart's default (autoscaling.enabled=false) grants no ScaledObjects while KEDA is installed: the API
    server answers 403. The R1Deployment still serves its replicas, the Autoscaling condition says why and how to
    mend it, and turning spec.autoscaling off again (the ScaledObject it may not even read) reconciles cleanly."""
    with installed(kube, hub, tmp_path) as (_system, watched, op):
        sample = yaml.safe_load((REPO / "examples" / "cpu-only.yaml").read_text())
        sample["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 2,
                                         "prometheusAddress": "http://prometheus.monitoring:9090"}
        kube.apply(sample, watched)
        cond = kube.wait_condition(watched, "r1-cpu", "Autoscaling", status="False", timeout=60, reason="Forbidden")
        assert "autoscaling.enabled=true" in cond["message"] and "scaledobjects" in cond["message"], cond
        kube.wait_condition(watched, "r1-cpu", "Degraded", timeout=30, reason="AutoscalingUnavailable")
        # spec.replicas (minReplicas here) is served all the same
        kube.wait_condition(watched, "r1-cpu", "CacheReady", timeout=60)
        wait_for(lambda: kube.r1d(watched, "r1-cpu").get("status", {}).get("readyReplicas") == 1, 60,
                 "one ready replica")
        assert kube.json("get", "scaledobject", "-n", watched)["items"] == []  # read as admin: none was made
        kube.run("patch", "r1d/r1-cpu", "-n", watched, "--type=json", "-p",
                 '[{"op": "remove", "path": "/spec/autoscaling"}]')
        wait_for(lambda: "Autoscaling" not in {c["type"] for c in kube.r1d(watched, "r1-cpu")["status"]["conditions"]},
                 30, "the Autoscaling condition to go")
        kube.wait_condition(watched, "r1-cpu", "Degraded", status="False", timeout=30)
        kube.run("wait", "--for=condition=Ready", "r1d/r1-cpu", "-n", watched, "--timeout=60s")
        log = op.log.read_text()
        assert "Traceback" not in log, op.tail(60)
