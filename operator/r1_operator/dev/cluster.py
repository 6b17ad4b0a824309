"""`r1ctl dev up/down/status`: a real local Kubernetes control plane with simulated (kwok) GPU nodes.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run from the
multi-call binary ``r1-cluster`` built by ``make setup`` from Go modules;
``kwok`` simulates the nodes and the lifecycles of their pods. Everything
listens on 127.0.0.1 on free ports. The processes outlive the command that
started them; ``down`` stops them and checks that none is left.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from r1_operator.dev import karpenter, keda, provisioner, realnode
from r1_operator.dev.adminapi import AdminApi, get_url
from r1_operator.dev.nodes import NodeShape, load_shapes
from r1_operator.dev.pki import FRONT_PROXY_CN, admin_ssl_context, kubeconfig, write_pki
from r1_operator.dev.processes import ClusterError, alive, find_binary, free_ports, log_tail, spawn, stop_group

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "provisioner")


def dev_home() -> Path:
    return Path(os.environ.get("R1_DEV_HOME", Path.home() / ".cache" / "r1-operator" / "dev"))


@dataclass
class ClusterState:
    name: str
    root: str
    kubeconfig: str
    server: str
    etcd_dir: str
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    real_nodes: list[str] = field(default_factory=list)
    host: dict = field(default_factory=dict)  # what real nodes changed on the host (sysctls), to restore

    @property
    def logs(self) -> Path:
        return Path(self.root) / "logs"

    def save(self) -> None:
        path = Path(self.root) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, name: str) -> ClusterState | None:
        path = dev_home() / name / "state.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


class ComponentExited(ClusterError):
    """A component died while the cluster started; `tail` is the end of its log."""

    def __init__(self, message: str, tail: str):
        super().__init__(message)
        self.tail = tail


# A component whose port another process took between choosing it and binding it: start again on new ports.
PORT_TAKEN = "address already in use"
START_ATTEMPTS = 3


def _wait(what: str, state: ClusterState, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for comp, pid in state.pids.items():
            if not alive(pid):
                log = state.logs / f"{comp}.log"
                raise ComponentExited(f"{comp} exited while waiting for {what}; the end of {log}:\n{log_tail(log)}",
                                      log_tail(log))
        try:
            if check():
                return
        except (OSError, ValueError) as exc:  # connection refused, TLS not ready yet, …
            last = str(exc)
        time.sleep(0.2)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} ({last}); logs in {state.logs}")


def _running(state: ClusterState) -> bool:
    real = [f"{kind}-{n}" for n in state.real_nodes for kind in ("containerd", "kubelet")]
    extra = [c for c in (*keda.COMPONENTS, *karpenter.COMPONENTS) if c in state.pids]
    return all(c in state.pids and alive(state.pids[c]) for c in (*COMPONENTS, *real, *extra))


def _grant_network_policy(api: AdminApi) -> None:
    """What the NetworkPolicy firewall reads (realnode.NETWORK_POLICY): pods, namespaces, nodes, policies, and the
    Services and endpoints its informers start with."""
    role = "r1-dev-network-policy"
    for path, obj in (
        ("clusterroles", {"metadata": {"name": role}, "rules": [
            {"apiGroups": [""], "resources": ["pods", "namespaces", "nodes", "services", "endpoints"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch"]}]}),
        ("clusterrolebindings", {"metadata": {"name": role}, "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": realnode.NETWORK_POLICY_USER}]})):
        code, body = api.request("POST", f"/apis/rbac.authorization.k8s.io/v1/{path}",
                                 {"apiVersion": "rbac.authorization.k8s.io/v1",
                                  "kind": "ClusterRole" if path == "clusterroles" else "ClusterRoleBinding", **obj})
        if code not in (200, 201, 409):
            raise ClusterError(f"granting the NetworkPolicy firewall its {path} failed: HTTP {code}: "
                               f"{body.get('message')}")


def up(name: str = "dev", nodes: list[NodeShape] | None = None, timeout: float = 90.0, real_nodes: int = 0,
       real_gpus: int = 0, keda: bool = False, autoscaler: bool = False) -> ClusterState:
    """Start the cluster (or return the running one of this name) and create its nodes; with keda, KEDA too; with
    autoscaler, Karpenter's kwok provider and its GPU NodePools (dev.karpenter)."""
    existing = ClusterState.load(name)
    if existing and _running(existing) and len(existing.real_nodes) == real_nodes:
        if keda and "keda" not in existing.pids:
            start_keda(existing, timeout)
        if autoscaler and "karpenter" not in existing.pids:
            start_autoscaler(existing, timeout)
        return existing
    if existing:
        down(name)
    shapes = nodes if nodes is not None else load_shapes()
    for s in shapes:
        s.to_node()  # validate before starting anything
    binary = find_binary("r1-cluster")
    kwok = find_binary("kwok")

    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            state = _up_once(name, binary, kwok, shapes, timeout, real_nodes, real_gpus)
            break
        except ComponentExited as exc:
            if PORT_TAKEN not in exc.tail.lower() or attempt == START_ATTEMPTS:
                raise
    try:
        if keda:
            start_keda(state, timeout)
        if autoscaler:
            start_autoscaler(state, max(timeout, 120.0))
    except BaseException:
        down(name)
        raise
    return state


def start_autoscaler(state: ClusterState, timeout: float = 120.0) -> None:
    """Karpenter's kwok provider on a running dev cluster (dev.karpenter): GPU NodePools that grow on demand."""
    karpenter.start(state, AdminApi(state.server, Path(state.root) / "pki"), timeout)


def start_keda(state: ClusterState, timeout: float = 120.0) -> None:
    """KEDA on a running dev cluster (dev.keda): what spec.autoscaling needs, with the controller manager's HPA."""
    keda.start(state, AdminApi(state.server, Path(state.root) / "pki"), realnode.host_ip(), timeout)


def _up_once(name: str, binary: Path, kwok: Path, shapes: list[NodeShape], timeout: float, real_nodes: int,
             real_gpus: int) -> ClusterState:
    root = dev_home() / name
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    pki = root / "pki"
    ip = realnode.host_ip() if real_nodes else None
    if real_nodes:
        realnode.check_host()
    clients = [(f"node-{realnode.node_name(i)}", f"system:node:{realnode.node_name(i)}", "system:nodes")
               for i in range(real_nodes)]
    if real_nodes:
        clients.append((realnode.KUBE_PROXY, "system:kube-proxy", None))
        clients.append((realnode.NETWORK_POLICY, realnode.NETWORK_POLICY_USER, None))
    write_pki(pki, host_ip=ip, clients=tuple(clients))
    etcd_dir = tempfile.mkdtemp(prefix=f"r1-dev-{name}-etcd-", dir=_etcd_parent())
    ports = dict(zip(("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler"), free_ports(5), strict=True))
    server = f"https://127.0.0.1:{ports['apiserver']}"
    config = root / "kubeconfig"
    config.write_text(kubeconfig(server, pki))
    config.chmod(0o600)
    state = ClusterState(name=name, root=str(root), kubeconfig=str(config), server=server, etcd_dir=etcd_dir, ports=ports)
    state.save()
    try:
        _start(state, binary, kwok, pki, shapes, timeout, ip, real_nodes, real_gpus)
    except BaseException:
        down(name)
        raise
    return state


# etcd preallocates 64 MiB write-ahead-log segments; a container's default /dev/shm is 64 MiB in all.
ETCD_SHM_MIN_FREE = 1 << 30


def _etcd_parent() -> Path:
    """Memory-backed /dev/shm for etcd's data (fsync is what makes etcd slow on a busy disk) when it is writable
    and has room, else the temporary directory."""
    shm = Path("/dev/shm")
    try:
        roomy = os.access(shm, os.W_OK) and shutil.disk_usage(shm).free >= ETCD_SHM_MIN_FREE
    except OSError:
        roomy = False
    return shm if roomy else Path(tempfile.gettempdir())


def _start(state: ClusterState, binary: Path, kwok: Path, pki: Path, shapes: list[NodeShape], timeout: float,
           ip: str | None = None, real_nodes: int = 0, real_gpus: int = 0) -> None:
    p = state.ports
    etcd_url = f"http://127.0.0.1:{p['etcd']}"
    spawn(state, "etcd", [
        str(binary), "etcd", "--name=r1-dev", f"--data-dir={state.etcd_dir}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
        f"--initial-cluster=r1-dev=http://127.0.0.1:{p['etcd-peer']}",
        "--unsafe-no-fsync=true", "--quota-backend-bytes=4294967296", "--log-level=warn",
    ])
    _wait("etcd", state, lambda: get_url(etcd_url + "/health")[0] == 200, timeout)

    spawn(state, "kube-apiserver", [
        str(binary), "kube-apiserver",
        f"--etcd-servers={etcd_url}",
        # Real nodes: pods reach the API through the kubernetes Service, whose endpoint is the advertised address,
        # and `kubectl logs` reaches kubelets by their InternalIP.
        *(["--bind-address=0.0.0.0", f"--advertise-address={ip}", "--kubelet-preferred-address-types=InternalIP,Hostname"]
          if ip else ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"]),
        f"--secure-port={p['apiserver']}", f"--cert-dir={pki}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}", "--service-cluster-ip-range=10.96.0.0/16",
        "--authorization-mode=RBAC", "--allow-privileged=true",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--enable-priority-and-fairness=false", "--profiling=false", "--v=0",
        # The aggregation layer, for KEDA's external metrics API (dev.keda): the API server proxies to it
        # straight at its endpoint's address, with the front-proxy client certificate and the caller in headers.
        f"--requestheader-client-ca-file={pki / 'ca.crt'}", f"--requestheader-allowed-names={FRONT_PROXY_CN}",
        "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={pki / 'front-proxy-client.key'}", "--enable-aggregator-routing=true",
    ])
    ctx = admin_ssl_context(pki)
    _wait("kube-apiserver /readyz", state, lambda: get_url(state.server + "/readyz", ctx)[0] == 200, timeout)

    spawn(state, "kube-controller-manager", [
        str(binary), "kube-controller-manager",
        f"--kubeconfig={state.kubeconfig}", f"--authentication-kubeconfig={state.kubeconfig}",
        f"--authorization-kubeconfig={state.kubeconfig}", "--leader-elect=false",
        f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
        "--bind-address=127.0.0.1", f"--secure-port={p['controller-manager']}",
        "--controllers=*,-nodeipam,-bootstrap-signer-controller,-token-cleaner-controller",
        "--concurrent-gc-syncs=5", "--profiling=false",
        # the HPA (KEDA's, for spec.autoscaling) evaluates every 5 s rather than 15 s, so tests wait less
        "--horizontal-pod-autoscaler-sync-period=5s",
    ])
    sched_cfg = Path(state.root) / "scheduler.yaml"
    sched_cfg.write_text(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
        f"clientConnection:\n  kubeconfig: {state.kubeconfig}\nleaderElection:\n  leaderElect: false\n"
    )
    spawn(state, "kube-scheduler", [
        str(binary), "kube-scheduler", f"--config={sched_cfg}",
        f"--authentication-kubeconfig={state.kubeconfig}", f"--authorization-kubeconfig={state.kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={p['scheduler']}", "--profiling=false",
    ])
    stages = Path(state.root) / "kwok-stages.yaml"
    stages.write_text(resources.files("r1_operator.dev").joinpath("data/kwok-stages.yaml").read_text())
    spawn(state, "kwok", [
        str(kwok), f"--kubeconfig={state.kubeconfig}", f"--config={stages}",
        "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        "--cidr=10.244.0.0/16", "--node-ip=10.250.0.1", "--node-lease-duration-seconds=40",
    ])

    spawn(state, "provisioner", [sys.executable, "-m", "r1_operator.dev.provisioner", f"--server={state.server}",
                                  f"--pki={pki}", f"--root={Path(state.root) / 'volumes'}"])
    api = AdminApi(state.server, pki)
    for shape in shapes:
        code, body = api.request("POST", "/api/v1/nodes", shape.to_node())
        if code not in (200, 201, 409):
            raise ClusterError(f"creating node {shape.name} failed: HTTP {code}: {body.get('message')}")
        state.nodes.append(shape.name)
    state.save()

    def nodes_ready() -> bool:
        _, body = api.request("GET", "/api/v1/nodes")
        ready = {
            n["metadata"]["name"]
            for n in body.get("items", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        }
        return set(state.nodes) <= ready

    if real_nodes:
        # Node credentials: the system:node role for the system:nodes group (the API server runs RBAC only).
        code, body = api.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "r1-dev-nodes"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]})
        if code not in (200, 201, 409):
            raise ClusterError(f"binding system:node for the real nodes failed: HTTP {code}: {body.get('message')}")
        _grant_network_policy(api)
        code, body = api.request("POST", "/apis/node.k8s.io/v1/runtimeclasses", {
            "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": realnode.ALT_HANDLER},
            "handler": realnode.ALT_HANDLER})
        if code not in (200, 201, 409):
            raise ClusterError(f"creating the RuntimeClass {realnode.ALT_HANDLER} failed: HTTP {code}: "
                               f"{body.get('message')}")
        realnode.start(state, pki, lambda user: kubeconfig(state.server, pki, user), real_nodes, real_gpus,
                       lambda what, check: _wait(what, state, check, timeout))
        state.nodes.extend(state.real_nodes)
        state.save()
        for n in state.real_nodes:
            _wait(f"real node {n} to register", state, lambda n=n: api.request("GET", f"/api/v1/nodes/{n}")[0] == 200,
                  timeout)
            if real_gpus:  # simulated GPUs: an extended resource in the node's capacity (no physical GPU here)
                code, body = api.request("PATCH", f"/api/v1/nodes/{n}/status",
                                         {"status": {"capacity": {"nvidia.com/gpu": str(real_gpus)}}},
                                         content_type="application/merge-patch+json")
                if code != 200:
                    raise ClusterError(f"advertising simulated GPUs on {n} failed: HTTP {code}: {body.get('message')}")
        realnode.start_network_policy(state, lambda user: kubeconfig(state.server, pki, user))
        if real_gpus:  # kubelet copies capacity into allocatable at its next status update (up to 10 s)
            for n in state.real_nodes:
                _wait(f"real node {n} to show its simulated GPUs as allocatable", state,
                      lambda n=n: api.request("GET", f"/api/v1/nodes/{n}")[1].get("status", {})
                      .get("allocatable", {}).get("nvidia.com/gpu") == str(real_gpus), timeout)
    _wait("the nodes to become Ready", state, nodes_ready, timeout)
    _wait(
        "the default ServiceAccount (controller manager)",
        state,
        lambda: api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
        timeout,
    )


def down(name: str = "dev", grace: float = 10.0) -> list[str]:
    """Stop every process of the cluster and remove its state; return what had to be killed hard."""
    state = ClusterState.load(name)
    if state is None:
        return []
    killed: list[str] = realnode.stop(state, grace) if state.real_nodes else []
    if state.pids.get("provisioner") and stop_group(state.pids["provisioner"], grace):
        killed.append("provisioner")
    provisioner.release_all(Path(state.root) / "volumes")  # unmount and detach the real nodes' volumes
    left = realnode.leftovers(state) + provisioner.leftovers(Path(state.root) / "volumes")
    if left:  # never delete the state directory through a mount that is still there
        raise ClusterError(f"real nodes left {', '.join(left[:8])} behind; run 'r1ctl dev down --name {name}' again")
    # Clients first, etcd last, one at a time: the API server shuts down quickly while etcd is still up.
    for comp in (*karpenter.COMPONENTS, *reversed(keda.COMPONENTS), *reversed(COMPONENTS)):
        pid = state.pids.get(comp)
        if pid and stop_group(pid, grace):
            killed.append(comp)
    shutil.rmtree(state.etcd_dir, ignore_errors=True)
    shutil.rmtree(state.root, ignore_errors=True)
    return killed


def status(name: str = "dev") -> dict:
    state = ClusterState.load(name)
    if state is None:
        return {"name": name, "running": False}
    return {
        "name": name,
        "running": _running(state),
        "kubeconfig": state.kubeconfig,
        "server": state.server,
        "processes": {c: {"pid": pid, "alive": alive(pid)} for c, pid in state.pids.items()},
        "nodes": state.nodes,
    }
