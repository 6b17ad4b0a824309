"""KEDA in a dev cluster: its operator and its metrics API server as host processes, like the control plane.

hack/build-cluster.sh builds both from KEDA's Go module with its CRDs. The metrics server is an aggregated API
(external.metrics.k8s.io) that the API server reaches at the host's address through a Service without selector;
the controller manager's HPA reads it, as on any cluster. Both talk over mutual TLS with a certificate from the
dev CA. Nothing runs in a pod, so no image is needed.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from pathlib import Path

from r1_operator.dev.adminapi import AdminApi
from r1_operator.dev.pki import issue
from r1_operator.dev.processes import ClusterError, alive, find_binary, free_ports, log_tail, spawn

NAMESPACE = "keda"
SERVICE = "keda-metrics-apiserver"
APISERVICE = "v1beta1.external.metrics.k8s.io"
COMPONENTS = ("keda", "keda-adapter")  # stopped by cluster.down, the adapter first


def crd_dir() -> Path:
    d = Path(os.environ.get("R1_BIN_DIR") or Path(sys.executable).parent).parent / "share" / "keda-crds"
    if not d.is_dir():
        raise ClusterError(f"KEDA's CRDs are not in {d}: run 'make setup' (hack/build-cluster.sh builds KEDA)")
    return d


def _ok(what: str, code: int, body: dict) -> None:
    if code not in (200, 201, 409):
        raise ClusterError(f"{what} failed: HTTP {code}: {body.get('message')}")


def start(state, api: AdminApi, ip: str, timeout: float = 120.0) -> None:
    """Install KEDA's CRDs, start its operator and metrics server, register the external metrics API and wait
    until the API server serves it."""
    import yaml

    operator, adapter = find_binary("keda"), find_binary("keda-adapter")
    crds = [yaml.safe_load(f.read_text()) for f in sorted(crd_dir().glob("*.yaml"))]
    for crd in crds:
        _ok(f"installing {crd['metadata']['name']}", *api.request(
            "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd))
    deadline = time.monotonic() + timeout
    for crd in crds:  # KEDA's controllers start only on established kinds
        name = crd["metadata"]["name"]
        while not any(c["type"] == "Established" and c["status"] == "True" for c in api.request(
                "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")[1]
                .get("status", {}).get("conditions") or []):
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout:.0f}s waiting for the CRD {name} to be established")
            time.sleep(0.2)
    _ok("creating the keda namespace", *api.request("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
    pki = Path(state.root) / "pki"
    certs = Path(state.root) / "keda-certs"
    issue(pki, certs, SERVICE, dns=("localhost", f"{SERVICE}.{NAMESPACE}.svc", f"{SERVICE}.{NAMESPACE}.svc.cluster.local"),
          ips=("127.0.0.1", ip))
    grpc, metrics, probe, secure, adapter_metrics = free_ports(5)
    env = {**os.environ, "KUBECONFIG": state.kubeconfig, "WATCH_NAMESPACE": "", "POD_NAMESPACE": NAMESPACE,
           "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE}
    spawn(state, "keda", [
        str(operator), f"--metrics-bind-address=127.0.0.1:{metrics}", f"--health-probe-bind-address=127.0.0.1:{probe}",
        f"--metrics-service-bind-address=127.0.0.1:{grpc}", f"--cert-dir={certs}", "--enable-cert-rotation=false",
        "--ca-dir=" + str(certs), "--zap-log-level=info",
    ], env=env)
    spawn(state, "keda-adapter", [
        str(adapter), f"--secure-port={secure}", f"--bind-address={ip}", f"--cert-dir={certs}",
        f"--tls-cert-file={certs / 'tls.crt'}", f"--tls-private-key-file={certs / 'tls.key'}",
        f"--lister-kubeconfig={state.kubeconfig}", f"--authentication-kubeconfig={state.kubeconfig}",
        f"--authorization-kubeconfig={state.kubeconfig}", f"--metrics-service-address=127.0.0.1:{grpc}",
        f"--port={adapter_metrics}",
    ], env=env)
    # The Service the APIService names, without selector: its endpoint is the metrics server on the host.
    _ok("creating the metrics server's Service", *api.request("POST", f"/api/v1/namespaces/{NAMESPACE}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": secure}]}}))
    _ok("creating the metrics server's Endpoints", *api.request("POST", f"/api/v1/namespaces/{NAMESPACE}/endpoints", {
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": secure}]}]}))
    _ok(f"registering {APISERVICE}", *api.request("POST", "/apis/apiregistration.k8s.io/v1/apiservices", {
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": APISERVICE},
        "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                 "versionPriority": 100, "service": {"namespace": NAMESPACE, "name": SERVICE, "port": 443},
                 "caBundle": base64.b64encode((pki / "ca.crt").read_bytes()).decode()}}))
    last = ""
    while time.monotonic() < deadline:
        for comp in COMPONENTS:
            if not alive(state.pids[comp]):
                log = state.logs / f"{comp}.log"
                raise ClusterError(f"{comp} exited while starting; the end of {log}:\n{log_tail(log)}")
        _, body = api.request("GET", f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}")
        cond = next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == "Available"), {})
        if cond.get("status") == "True":
            return
        last = cond.get("message", "")
        time.sleep(0.5)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {APISERVICE} to be Available ({last}); "
                       f"logs in {state.logs}")
