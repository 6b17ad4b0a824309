"""spec.network on real nodes, enforced: kube-router's firewall (the dev cluster runs it beside the bridge CNI)
applies the NetworkPolicies the operator writes, as a policy-enforcing CNI does.

Client pods on the other real node, in the R1Deployment's namespace, in another namespace and in the operator's
monitoring namespace, open TCP connections to the runtime pod's IP: the API port lets in only its own namespace
and spec.network.allowFrom, the metrics port only the monitoring namespace. With `policy: none` every client gets
in, so the refusals above come from the policy, not from the network. The runtime's startup and readiness probes
(the kubelet, from the host) pass throughout.
"""

from __future__ import annotations

import json

import pytest
from r1_devtools.kit import MONITORING_NS, RUNTIME_IMAGE, drop_namespace, make_namespace
from r1_devtools.waiting import wait_for

from r1_operator.builders import names
from r1_operator.dev import realnode
from r1_operator.settings import OperatorSettings

pytestmark = pytest.mark.cluster
S = OperatorSettings()
NAME = "r1-net"
R1D = {
    "apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "metadata": {"name": NAME},
    "spec": {"model": {"variant": "UD-IQ1_S"}, "inference": {"ctxSize": 1024, "parallel": 1, "canary": False},
             "resources": {"requests": {"cpu": "250m"}},  # beside the client pods on the host's CPUs
             "scheduling": {"nodeSelector": {realnode.REAL_LABEL: "true", "kubernetes.io/hostname": "real-0"}}},
}
RESTRICTED = {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
              "seccompProfile": {"type": "RuntimeDefault"}}
CONNECT = ("import socket, sys\n"
           "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close(); print('open')\n"
           "except OSError as e:\n print('refused', e)")


def _client(kube, ns: str) -> str:
    """A pod on real-1 (the runtime runs on real-0) that the test execs connection attempts in."""
    kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "labels": {"role": "client"}},
                "spec": {"nodeSelector": {"kubernetes.io/hostname": "real-1"}, "automountServiceAccountToken": False,
                         "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "c", "image": RUNTIME_IMAGE, "imagePullPolicy": "Never",
                                         "command": ["sleep", "3600"], "securityContext": RESTRICTED,
                                         "resources": {"limits": {"memory": "64Mi"}}}]}}, ns)
    kube.run("wait", "--for=condition=Ready", "pod/client", "-n", ns, "--timeout=60s")
    return ns


def _reaches(kube, ns: str, ip: str, port: int) -> bool:
    out = kube.run("exec", "-n", ns, "client", "--", "python3", "-c", CONNECT, ip, str(port)).stdout
    return out.startswith("open")


def _expect(kube, clients: dict[str, str], ip: str, want: dict[tuple[str, int], bool]) -> None:
    """Each (client, port) reaches the pod or not, as wanted, within the firewall's sync (seconds)."""
    def now() -> dict:
        return {k: _reaches(kube, clients[k[0]], ip, k[1]) for k in want}
    wait_for(lambda: now() == want, 45, f"reachability {want}", interval=1)


def test_network_policy_lets_in_the_namespace_allow_from_and_monitoring_only(real_kube, real_ns, request):
    kube, ns = real_kube, real_ns
    other = make_namespace(kube, f"{ns[:50]}-other", {"team": "web"})
    monitoring = make_namespace(kube, MONITORING_NS)

    def clean_up():
        for n in (ns, other, monitoring):
            kube.run("delete", "pod", "client", "-n", n, "--ignore-not-found", "--now", check=False)
        for n in (other, monitoring):
            drop_namespace(kube, n)
    request.addfinalizer(clean_up)
    kube.apply(R1D, ns)
    kube.run("wait", "--for=condition=Ready", f"r1d/{NAME}", "-n", ns, "--timeout=240s")

    # what the operator wrote, as the API server stored it
    runtime = kube.json("get", "networkpolicy", NAME, "-n", ns)["spec"]
    assert runtime["podSelector"]["matchLabels"] == names.selector(NAME)
    api, metrics = runtime["ingress"]
    assert api["from"] == [{"podSelector": {}}] and api["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING_NS}}}]
    fetch = kube.json("get", "networkpolicy", names.fetch_policy_name(NAME), "-n", ns)["spec"]
    job = kube.json("get", "jobs", "-n", ns, "-l", f"{names.LABEL_CACHE}")["items"][0]
    (expr,) = fetch["podSelector"]["matchExpressions"]
    assert job["spec"]["template"]["metadata"]["labels"][expr["key"]] in expr["values"]
    assert fetch["policyTypes"] == ["Ingress"] and not fetch.get("ingress")

    pods = kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector(NAME)))["items"]
    (pod,) = [p for p in pods if p["status"].get("podIP")]
    ip = pod["status"]["podIP"]
    clients = {"same": _client(kube, ns), "other": _client(kube, other), "monitoring": _client(kube, monitoring)}
    api_port, metrics_port = S.runtime_port, S.runtime_metrics_port
    _expect(kube, clients, ip, {("same", api_port): True, ("other", api_port): False,
                                ("monitoring", api_port): False, ("monitoring", metrics_port): True,
                                ("other", metrics_port): False, ("same", metrics_port): False})
    # the host (kubelet's probes, the test through the ClusterIP) is let in
    assert kube.service_url(ns, NAME, timeout=10)

    # spec.network.allowFrom: the other namespace by its label
    patch = {"spec": {"network": {"allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}]}}}
    kube.run("patch", "r1d", NAME, "-n", ns, "--type=merge", "-p", json.dumps(patch))
    _expect(kube, clients, ip, {("other", api_port): True, ("other", metrics_port): False})

    # policy none: the operator deletes both policies, and every client gets in
    kube.run("patch", "r1d", NAME, "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"network": {"policy": "none"}}}))
    wait_for(lambda: not kube.json("get", "networkpolicy", "-n", ns)["items"], 30, "the policies deleted")
    _expect(kube, clients, ip, {("other", api_port): True, ("monitoring", api_port): True,
                                ("other", metrics_port): True})
    assert kube.condition(ns, NAME, "Ready")["status"] == "True"
