"""A real local Kubernetes control plane with simulated (kwok) GPU nodes.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run from the
multi-call binary ``r1-cluster`` built by ``make setup`` from Go modules;
``kwok`` simulates the nodes and the lifecycles of their pods. Everything
listens on 127.0.0.1 on free ports. The processes outlive the command that
started them; ``down`` stops them and checks that none is left.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from r1_operator.dev.nodes import NodeShape, load_shapes

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "provisioner")


class ClusterError(RuntimeError):
    """The dev cluster could not be started or used; the message says why and where the logs are."""


def dev_home() -> Path:
    return Path(os.environ.get("R1_DEV_HOME", Path.home() / ".cache" / "r1-operator" / "dev"))


def find_binary(name: str) -> Path:
    """Look in $R1_BIN_DIR, next to the running Python (the venv), then on PATH."""
    candidates = []
    if os.environ.get("R1_BIN_DIR"):
        candidates.append(Path(os.environ["R1_BIN_DIR"]) / name)
    candidates.append(Path(sys.executable).parent / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ClusterError(f"{name} not found (looked in {', '.join(map(str, candidates))} and PATH); run 'make setup' to build it")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------- PKI

def _write_pki(pki: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=365)

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("r1-dev-ca"))
        .issuer_name(name("r1-dev-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, org: str | None, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(name(cn, org))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes"),
                        x509.DNSName("kubernetes.default"),
                        x509.DNSName("kubernetes.default.svc"),
                        x509.DNSName("kubernetes.default.svc.cluster.local"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
                    ]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            b = b.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(key_pem(ca_key))
    for base, cn, org, server in (
        ("apiserver", "kube-apiserver", None, True),
        ("admin", "r1-dev-admin", "system:masters", False),
    ):
        crt, key = leaf(cn, org, server)
        (pki / f"{base}.crt").write_bytes(crt)
        (pki / f"{base}.key").write_bytes(key)
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(key_pem(sa))
    (pki / "sa.pub").write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for p in pki.iterdir():
        if p.suffix == ".key":
            p.chmod(0o600)


def _kubeconfig(server: str, pki: Path, user: str = "admin") -> str:
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "r1-dev", "cluster": {"server": server, "certificate-authority-data": b64(pki / "ca.crt")}}],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": b64(pki / f"{user}.crt"),
                        "client-key-data": b64(pki / f"{user}.key"),
                    },
                }
            ],
            "contexts": [{"name": "r1-dev", "context": {"cluster": "r1-dev", "user": user}}],
            "current-context": "r1-dev",
        },
        indent=2,
    )


# ---------------------------------------------------------------- processes

def _spawn(state: ClusterState, component: str, argv: list[str]) -> None:
    state.logs.mkdir(parents=True, exist_ok=True)
    log = open(state.logs / f"{component}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # own process group: outlives r1ctl, killed as a group by down()
        cwd=state.root,
    )
    log.close()
    state.pids[component] = proc.pid
    state.save()


def _ssl_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def _get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait(what: str, state: ClusterState, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for comp, pid in state.pids.items():
            if not _alive(pid):
                raise ClusterError(f"{comp} exited while waiting for {what}; see {state.logs / (comp + '.log')}")
        try:
            if check():
                return
        except (OSError, ValueError) as exc:  # connection refused, TLS not ready yet, …
            last = str(exc)
        time.sleep(0.2)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} ({last}); logs in {state.logs}")


class AdminApi:
    """Minimal JSON client (admin cert) for the bootstrap and the dev provisioner; no kubernetes package import."""

    def __init__(self, server: str, pki: Path) -> None:
        self.server = server
        self.ctx = _ssl_context(pki)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.ctx) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")


def _running(state: ClusterState) -> bool:
    return all(c in state.pids and _alive(state.pids[c]) for c in COMPONENTS)


def up(name: str = "dev", nodes: list[NodeShape] | None = None, timeout: float = 90.0) -> ClusterState:
    """Start the cluster (or return the running one of this name) and create its nodes."""
    existing = ClusterState.load(name)
    if existing and _running(existing):
        return existing
    if existing:
        down(name)
    shapes = nodes if nodes is not None else load_shapes()
    for s in shapes:
        s.to_node()  # validate before starting anything
    binary = find_binary("r1-cluster")
    kwok = find_binary("kwok")

    root = dev_home() / name
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    pki = root / "pki"
    _write_pki(pki)
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    etcd_dir = tempfile.mkdtemp(prefix=f"r1-dev-{name}-etcd-", dir=shm)
    ports = {k: free_port() for k in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler")}
    server = f"https://127.0.0.1:{ports['apiserver']}"
    kubeconfig = root / "kubeconfig"
    kubeconfig.write_text(_kubeconfig(server, pki))
    kubeconfig.chmod(0o600)
    state = ClusterState(name=name, root=str(root), kubeconfig=str(kubeconfig), server=server, etcd_dir=etcd_dir, ports=ports)
    state.save()
    try:
        _start(state, binary, kwok, pki, shapes, timeout)
    except BaseException:
        down(name)
        raise
    return state


def _start(state: ClusterState, binary: Path, kwok: Path, pki: Path, shapes: list[NodeShape], timeout: float) -> None:
    p = state.ports
    etcd_url = f"http://127.0.0.1:{p['etcd']}"
    _spawn(state, "etcd", [
        str(binary), "etcd", "--name=r1-dev", f"--data-dir={state.etcd_dir}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
        f"--initial-cluster=r1-dev=http://127.0.0.1:{p['etcd-peer']}",
        "--unsafe-no-fsync=true", "--quota-backend-bytes=4294967296", "--log-level=warn",
    ])
    _wait("etcd", state, lambda: _get(etcd_url + "/health")[0] == 200, timeout)

    _spawn(state, "kube-apiserver", [
        str(binary), "kube-apiserver",
        f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        f"--secure-port={p['apiserver']}", f"--cert-dir={pki}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}", "--service-cluster-ip-range=10.96.0.0/16",
        "--authorization-mode=RBAC", "--allow-privileged=true",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--enable-priority-and-fairness=false", "--profiling=false", "--v=0",
    ])
    ctx = _ssl_context(pki)
    _wait("kube-apiserver /readyz", state, lambda: _get(state.server + "/readyz", ctx)[0] == 200, timeout)

    _spawn(state, "kube-controller-manager", [
        str(binary), "kube-controller-manager",
        f"--kubeconfig={state.kubeconfig}", f"--authentication-kubeconfig={state.kubeconfig}",
        f"--authorization-kubeconfig={state.kubeconfig}", "--leader-elect=false",
        f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
        "--bind-address=127.0.0.1", f"--secure-port={p['controller-manager']}",
        "--controllers=*,-nodeipam,-bootstrap-signer-controller,-token-cleaner-controller",
        "--concurrent-gc-syncs=5", "--profiling=false",
    ])
    sched_cfg = Path(state.root) / "scheduler.yaml"
    sched_cfg.write_text(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
        f"clientConnection:\n  kubeconfig: {state.kubeconfig}\nleaderElection:\n  leaderElect: false\n"
    )
    _spawn(state, "kube-scheduler", [
        str(binary), "kube-scheduler", f"--config={sched_cfg}",
        f"--authentication-kubeconfig={state.kubeconfig}", f"--authorization-kubeconfig={state.kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={p['scheduler']}", "--profiling=false",
    ])
    stages = Path(state.root) / "kwok-stages.yaml"
    stages.write_text(resources.files("r1_operator.dev").joinpath("data/kwok-stages.yaml").read_text())
    _spawn(state, "kwok", [
        str(kwok), f"--kubeconfig={state.kubeconfig}", f"--config={stages}",
        "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        "--cidr=10.244.0.0/16", "--node-ip=10.250.0.1", "--node-lease-duration-seconds=40",
    ])

    _spawn(state, "provisioner", [sys.executable, "-m", "r1_operator.dev.provisioner", f"--server={state.server}",
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

    _wait("simulated nodes to become Ready", state, nodes_ready, timeout)
    _wait(
        "the default ServiceAccount (controller manager)",
        state,
        lambda: api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
        timeout,
    )


def _stop_group(pid: int, grace: float) -> bool:
    """SIGTERM the process group, SIGKILL it after `grace` seconds; True when SIGKILL was needed."""
    if not _alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return False
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    for _ in range(100):
        if not _alive(pid):
            return True
        time.sleep(0.05)
    raise ClusterError(f"process {pid} survived SIGKILL")


def down(name: str = "dev", grace: float = 10.0) -> list[str]:
    """Stop every process of the cluster and remove its state; return what had to be killed hard."""
    state = ClusterState.load(name)
    if state is None:
        return []
    killed: list[str] = []
    # Clients first, etcd last, one at a time: the API server shuts down quickly while etcd is still up.
    for comp in reversed(COMPONENTS):
        pid = state.pids.get(comp)
        if pid and _stop_group(pid, grace):
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
        "processes": {c: {"pid": pid, "alive": _alive(pid)} for c, pid in state.pids.items()},
        "nodes": state.nodes,
    }
