"""Real worker nodes: kubelet + containerd + runc on this host run the pods in real containers.

The session's cluster (tests/real/conftest.py) has two real nodes beside its kwok nodes. The
node's GPU count is simulated (an extended resource; no physical GPU exists here); its CPU,
memory, cgroups, network and containers are real. The teardown test starts a cluster of its
own, runs a pod on it, takes it down and checks that nothing is left on the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from r1_devtools.kit import RUNTIME_IMAGE, Kube
from r1_devtools.waiting import wait_for

from r1_operator.dev import cluster as dev
from r1_operator.dev import netfilter, realnode

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


def kubectl(state, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "kubectl"), "--kubeconfig", state.kubeconfig, *args], input=input,
                       capture_output=True, text=True, timeout=120)
    if check and r.returncode:
        raise AssertionError(f"kubectl {' '.join(args)}: {r.stderr}")
    return r


def test_the_real_node_is_ready_on_containerd_with_its_simulated_gpus(real_cluster):
    state = real_cluster
    node = json.loads(kubectl(state, "get", "node", "real-0", "-o", "json").stdout)
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    labels = node["metadata"]["labels"]
    assert labels[realnode.REAL_LABEL] == "true" and labels["nvidia.com/gpu.count"] == "2"
    wait_for(lambda: json.loads(kubectl(state, "get", "node", "real-0", "-o", "json").stdout)["status"]
             ["allocatable"].get("nvidia.com/gpu") == "2", 30, "the simulated GPUs in allocatable")
    # its CPU and memory are the host's
    assert int(node["status"]["capacity"]["cpu"]) == os.cpu_count()
    wide = kubectl(state, "get", "nodes", "-o", "wide").stdout
    assert "real-0" in wide and "containerd://" in wide and "gpu-80g" in wide  # kwok nodes stay


RESTRICTED_POD = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sandbox"},
    "spec": {
        "nodeSelector": {realnode.REAL_LABEL: "true", "kubernetes.io/hostname": "real-0"},
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "pause", "image": realnode.PAUSE_IMAGE, "imagePullPolicy": "Never",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "16Mi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}}],
    },
}


def test_a_restricted_pod_runs_in_a_real_container(real_cluster):
    state = real_cluster
    kubectl(state, "create", "namespace", "locked")
    kubectl(state, "label", "namespace", "locked", "pod-security.kubernetes.io/enforce=restricted")
    kubectl(state, "apply", "-n", "locked", "-f", "-", input=json.dumps(RESTRICTED_POD))
    try:
        _sandbox_runs(state)
    finally:  # its CPU request would stay on real-0 for the tests after this one
        kubectl(state, "delete", "namespace", "locked", "--wait=true", "--timeout=60s")


def _sandbox_runs(state) -> None:
    def running():
        pod = json.loads(kubectl(state, "get", "pod", "sandbox", "-n", "locked", "-o", "json").stdout)
        return pod if pod["status"].get("phase") == "Running" else None

    pod = wait_for(running, 90, "the pod to run on the real node")
    assert pod["spec"]["nodeName"] == "real-0"
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["ready"] and cs["containerID"].startswith("containerd://") and len(cs["containerID"]) > 20
    assert pod["status"]["podIP"].startswith(f"10.246.{state.host['slots']['real-0']}.")
    # the container really is a process of the node's cgroup, running as the pod's user
    pids = realnode.cgroup_pids(realnode.cgroup_name(state.host["slots"]["real-0"]))
    uids = {Path(f"/proc/{p}/status").read_text().split("Uid:")[1].split()[0] for p in pids
            if Path(f"/proc/{p}/status").exists()}
    assert "65532" in uids


def _python_pod(name: str, node: str, code: str, labels: dict | None = None, restart: str = "Always") -> dict:
    pod = json.loads(json.dumps(RESTRICTED_POD))
    pod["metadata"] = {"name": name, "labels": labels or {}}
    pod["spec"]["nodeSelector"]["kubernetes.io/hostname"] = node
    pod["spec"]["restartPolicy"] = restart
    (c,) = pod["spec"]["containers"]
    c.update(name="py", image=RUNTIME_IMAGE, command=["python3", "-c", code])
    c["resources"] = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}
    return pod


def test_a_cluster_ip_service_routes_from_the_host_and_from_a_pod_on_the_other_node(real_cluster):
    """The host's one kube-proxy routes ClusterIPs: from the host, and from a pod on real-1 to a pod on real-0."""
    state = real_cluster
    kubectl(state, "create", "namespace", "routed")
    serve = "import http.server as h; h.ThreadingHTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()"
    kubectl(state, "apply", "-n", "routed", "-f", "-", input=json.dumps(_python_pod("web", "real-0", serve, {"app": "web"})))
    kubectl(state, "apply", "-n", "routed", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
    kubectl(state, "wait", "--for=condition=Ready", "pod/web", "-n", "routed", "--timeout=90s")
    url = Kube(state.kubeconfig).service_url("routed", "web", path="/")
    assert url.startswith("http://10.96.")
    ask = f"import urllib.request as u; print(u.urlopen('{url}/', timeout=10).status)"
    kubectl(state, "apply", "-n", "routed", "-f", "-", input=json.dumps(_python_pod("client", "real-1", ask, restart="Never")))
    wait_for(lambda: kubectl(state, "get", "pod", "client", "-n", "routed", "-o", "jsonpath={.status.phase}").stdout
             in ("Succeeded", "Failed"), 90, "the client pod on real-1")
    assert kubectl(state, "logs", "client", "-n", "routed").stdout.strip() == "200"
    kubectl(state, "delete", "namespace", "routed", "--wait=false")


def test_down_leaves_nothing_on_the_host(tmp_path, monkeypatch):
    monkeypatch.setenv("R1_IMAGES_DIR", str(tmp_path))  # the pause image is enough here
    sysctls = {k: Path("/proc/sys", k).read_text() for k in realnode.SYSCTLS}
    name = f"realdown-{os.getpid()}"
    state = dev.up(name, nodes=[], real_nodes=1, timeout=120)
    try:
        kubectl(state, "apply", "-f", "-", input=json.dumps({**RESTRICTED_POD, "metadata": {"name": "held"}}))
        wait_for(lambda: kubectl(state, "get", "pod", "held", "-o", "jsonpath={.status.phase}").stdout == "Running",
                 90, "a pod to hold a container, a shim, a network namespace and a mount")
        state = dev.ClusterState.load(name)
        slot = state.host["slots"]["real-0"]
        assert realnode.cgroup_pids(realnode.cgroup_name(slot))
        assert Path("/sys/class/net", realnode.bridge_name(slot)).exists()
        # the pod's masquerade chain, which only a CNI DEL would remove: down removes it
        assert netfilter.leftovers({realnode.network_name(slot)}, kube=False)
    finally:
        dev.down(name)
    assert realnode.leftovers(state) == []  # includes the node network's iptables rules and chains
    assert not Path("/sys/class/net", realnode.bridge_name(slot)).exists()
    assert {k: Path("/proc/sys", k).read_text() for k in realnode.SYSCTLS} == sysctls
    assert not any(line.split()[4].startswith(state.root) for line in Path("/proc/self/mountinfo").read_text().splitlines())
    assert not any(p.read_bytes().startswith(b"/") and state.root.encode() in p.read_bytes()
                   for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists())
    assert dev.ClusterState.load(name) is None
