"""Driving the operator on a dev cluster, for the e2e and real-node tests and the demo: kubectl, an r1-operator process, namespaces."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from r1_devtools.waiting import wait_for
from r1_operator.dev.processes import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HUB_REPO = "unsloth/DeepSeek-R1-GGUF"
RUNTIME_IMAGE = "docker.io/r1-operator/runtime:0.1.0"  # as `make images` tags it, imported by the real nodes
MONITORING_NS = f"r1-monitoring-{os.getpid()}"  # the real tier operator's monitoring namespace


@dataclass
class Kube:
    kubeconfig: str

    def run(self, *args: str, input: str | None = None, check: bool = True, as_user: str | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """kubectl with this kubeconfig. Its own time limit is `timeout`, else 30 s beyond a `--timeout=Ns` among the
        arguments (kubectl wait's), else 120 s, so a wait fails with kubectl's message and the state it saw."""
        if timeout is None:
            asked = [float(a[len("--timeout="):-1]) for a in args if re.fullmatch(r"--timeout=\d+(\.\d+)?s", a)]
            timeout = asked[0] + 30 if asked else 120
        cmd = [str(BIN / "kubectl"), *args] + ([f"--as={as_user}"] if as_user else [])
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "KUBECONFIG": self.kubeconfig})
        if check and res.returncode != 0:
            detail = ""
            if args and args[0] == "wait":  # say where it stood: the R1Deployments' conditions and pods
                ns = args[args.index("-n") + 1] if "-n" in args else "default"
                detail = "\n" + self.run("get", "r1d,pods,jobs,deploy,pvc", "-n", ns, "-o", "wide", check=False).stdout
                detail += self.run("get", "r1d", "-n", ns, "-o",
                                   "jsonpath={range .items[*].status.conditions[*]}{.type}={.status} {.reason}: "
                                   "{.message}{'\\n'}{end}", check=False).stdout
            raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}): {res.stderr}{detail}")
        return res

    def json(self, *args: str) -> dict:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(self, manifest: dict | str, namespace: str) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.run("apply", "-n", namespace, "-f", "-", input=text)

    def r1d(self, namespace: str, name: str) -> dict:
        return self.json("get", "r1d", name, "-n", namespace)

    def condition(self, namespace: str, name: str, type_: str) -> dict:
        conds = (self.r1d(namespace, name).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), {})

    def wait_condition(self, namespace: str, name: str, type_: str, status: str = "True", timeout: float = 60,
                       reason: str | None = None) -> dict:
        def ok():
            c = self.condition(namespace, name, type_)
            return c if c.get("status") == status and (reason is None or c.get("reason") == reason) else None
        return wait_for(ok, timeout, f"{type_}={status} on r1d/{name} in {namespace}", interval=0.3)

    def service_url(self, namespace: str, name: str, port: str = "http", path: str = "/health",
                    timeout: float = 60) -> str:
        """http://CLUSTER-IP:PORT of a Service's named port, once it answers `path` through it. The host reaches
        ClusterIPs through the dev cluster's kube-proxy (a real node's), as a node of a real cluster does."""
        svc = self.json("get", "service", name, "-n", namespace)["spec"]
        number = next(p["port"] for p in svc["ports"] if p.get("name") == port)
        url = f"http://{svc['clusterIP']}:{number}"

        def answers():
            try:
                with urllib.request.urlopen(url + path, timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(answers, timeout, f"{url}{path} (service/{name} in {namespace} through kube-proxy)", interval=0.3)
        return url


@dataclass
class OperatorProc:
    proc: subprocess.Popen
    log: Path
    metrics_port: int
    liveness_port: int
    env: dict = field(default_factory=dict)
    readiness_port: int = 0

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_operator(kubeconfig: str, log: Path, *args: str, env: dict | None = None) -> OperatorProc:
    """An r1-operator process; its liveness endpoint answers before this returns."""
    import httpx

    metrics_port, liveness_port, readiness_port = free_port(), free_port(), free_port()
    full_env = {**os.environ, "KUBECONFIG": kubeconfig, "R1_REPLAN_INTERVAL_S": "2", "PYTHONUNBUFFERED": "1",
                **(env or {})}
    out = open(log, "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen([str(BIN / "r1-operator"), "--metrics-port", str(metrics_port),
                             "--liveness", f"http://127.0.0.1:{liveness_port}/healthz",
                             "--readiness", f"http://127.0.0.1:{readiness_port}/readyz", *args],
                            stdout=out, stderr=subprocess.STDOUT, env=full_env)
    op = OperatorProc(proc, log, metrics_port, liveness_port, full_env, readiness_port)

    def live():
        if proc.poll() is not None:
            raise AssertionError(f"r1-operator exited {proc.returncode}:\n{op.tail()}")
        try:
            return httpx.get(f"http://127.0.0.1:{liveness_port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(live, 60, "the operator's liveness endpoint")
    return op


def ns_name(request, prefix: str) -> str:
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:30].strip("-")
    return f"{prefix}-{base}-{uuid.uuid4().hex[:6]}"


def make_namespace(kube: Kube, name: str, labels: dict | None = None) -> str:
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}, "default")
    wait_for(lambda: kube.run("get", "sa", "default", "-n", name, check=False).returncode == 0, 30,
             f"default ServiceAccount in {name}")
    return name


def drop_namespace(kube: Kube, name: str) -> None:
    """Delete the R1Deployments first and wait for their pods, so the next test sees the GPUs free."""
    kube.run("delete", "r1d", "--all", "-n", name, "--wait=true", check=False, timeout=60)
    wait_for(lambda: not kube.json("get", "pods", "-n", name)["items"], 60, f"pods of {name} to go")
    kube.run("delete", "namespace", name, "--wait=false", check=False)


def keda_crd(kind: str = "scaledobjects") -> Path:
    """KEDA's CRD file as `make setup` leaves it (hack/build-cluster.sh builds KEDA from its Go module)."""
    from r1_operator.dev.keda import crd_dir

    return crd_dir() / f"keda.sh_{kind}.yaml"
