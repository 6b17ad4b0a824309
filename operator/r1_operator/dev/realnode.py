"""Real worker nodes of the dev cluster: per node its own containerd (runc, a CNI bridge) and a kubelet.

Settings and their reasons are in shared notes on these machines (cgroup v1 hybrid, no
CAP_SYS_RESOURCE): containerd's CRI restricts oom_score_adj, kubelet runs with the cgroupfs
driver and failCgroupV1 off, each node has its own cgroup root, sockets, ports and bridge.
The only thing simulated is the GPU: a real node may advertise a count of `nvidia.com/gpu`
as an extended resource with GPU Feature Discovery labels, because no physical GPU exists
here. Its CPU and memory are the host's.

One kube-proxy (iptables mode) serves the host, so a ClusterIP Service is reachable from the host and from pods:
the first dev cluster with real nodes on the host runs it, and a second one running at the same time routes no
Services (it says so; reach its pods with `kubectl port-forward`). Beside it the same cluster runs kube-router's
firewall alone (`NETWORK_POLICY`: no routing, no service proxy, no CNI of its own), which enforces NetworkPolicies
on the real nodes' pods with iptables and ipsets, as a policy-enforcing CNI would. The host's own traffic to a pod
(kubelet's probes, a test asking a ClusterIP from the host) is always let in, as on most CNIs.

Teardown (`stop`) leaves nothing behind: containers, shims, kube-proxy, kube-router, kubelet, containerd, mounts,
the bridge, the cgroups, the iptables chains and ipsets (module `netfilter`) and the sysctls kubelet and
kube-proxy changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from r1_operator.dev import netfilter
from r1_operator.dev.processes import ClusterError, alive, find_binary, spawn, stop_group

REAL_LABEL = "r1.inference.dev/real-node"  # real workloads select real nodes with this label
PAUSE_IMAGE = "localhost/r1-dev/pause:1"
CNI_BIN = "/usr/lib/cni"
RUNC = "/usr/sbin/runc"
# A second containerd runtime handler on each real node, as the GPU Operator adds "nvidia": runc behind a wrapper
# that edits each container's OCI spec before runc runs it, as nvidia-container-runtime does (it adds its hook;
# this one adds ALT_HANDLER_ENV, so a test sees which handler ran a container). Pods ask for it with
# runtimeClassName ALT_HANDLER (the dev cluster's RuntimeClass of that name).
ALT_HANDLER = "r1-alt"
ALT_HANDLER_ENV = "R1_DEV_RUNTIME_HANDLER"
# kubelet sets the first three; kube-proxy may set the others (those this kernel has are restored)
SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops", "net/ipv4/conf/all/route_localnet",
           "net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_tcp_timeout_established",
           "net/netfilter/nf_conntrack_tcp_timeout_close_wait")
POD_CIDR, SERVICE_CIDR = "10.246.0.0/16", "10.96.0.0/16"  # a node's pods get 10.246.<slot>.0/24
KUBE_PROXY = "kube-proxy"
NETWORK_POLICY = "network-policy"  # kube-router --run-firewall only; its client is NETWORK_POLICY_USER
NETWORK_POLICY_USER = "r1-dev:network-policy"
HOST_SYSCTLS = Path("/run/r1-dev/host-sysctls.json")  # host-wide: several dev clusters may run real nodes at once
CGROUP_ROOT = Path("/sys/fs/cgroup")


def host_ip() -> str:
    """The address pods and kubelets reach the host by (its default route's source address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent; this only picks the route
            return s.getsockname()[0]
        except OSError:
            raise ClusterError("real nodes need a non-loopback host address (no default route found)") from None


def node_name(i: int) -> str:
    return f"real-{i}"


# Host resources of a real node are numbered by a host-wide slot, so two dev clusters' nodes never share a
# cgroup root, bridge, subnet or kubelet port.
MAX_SLOTS = 4


def bridge_name(slot: int) -> str:
    return f"cni-r1-{slot}"


def cgroup_name(slot: int) -> str:
    return f"r1-node-{slot}"


def network_name(slot: int) -> str:
    return f"r1-node-{slot}"  # the CNI network; its iptables rules carry this name


def _slot_free(slot: int) -> bool:
    return not (CGROUP_ROOT / "pids" / cgroup_name(slot)).exists() and \
        not Path("/sys/class/net", bridge_name(slot)).exists()


def _take_slot(state) -> int:
    taken = set(state.host.get("slots", {}).values())
    for slot in range(MAX_SLOTS):
        if slot not in taken and _slot_free(slot):
            return slot
    raise ClusterError(f"all {MAX_SLOTS} real-node slots of this host are in use (cgroups /r1-node-N); "
                       "stop another dev cluster with 'r1ctl dev down --name NAME'")


def images_dir() -> Path:
    """Image archives `make images` left for the real nodes (R1_IMAGES_DIR, default: next to the venv's bin/)."""
    return Path(os.environ.get("R1_IMAGES_DIR") or Path(sys.executable).parent.parent / "images")


def check_host() -> None:
    """Fail before starting anything when a piece real nodes need is missing, naming it and the fix."""
    missing = [p for p in (RUNC, f"{CNI_BIN}/bridge", f"{CNI_BIN}/host-local", f"{CNI_BIN}/loopback")
               if not os.access(p, os.X_OK)]
    if missing:
        raise ClusterError(f"real nodes need {', '.join(missing)}: run 'make setup' (Debian runc and "
                           "containernetworking-plugins)")
    if os.geteuid() != 0:
        raise ClusterError("real nodes need root (kubelet, containerd and runc manage cgroups and mounts)")
    for name in ("containerd", "containerd-shim-runc-v2", "ctr", "r1-pause"):
        find_binary(name)


# ---------------------------------------------------------------- the pause image

def pause_image_tar(pause_binary: Path) -> bytes:
    """A docker-archive of one layer holding the static pause program, for `ctr images import`."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        info = tarfile.TarInfo("pause")
        data = pause_binary.read_bytes()
        info.size, info.mode = len(data), 0o755
        t.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        for name, blob in (("layer.tar", layer_bytes), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
    return out.getvalue()


# ---------------------------------------------------------------- configuration

def _containerd_config(root: Path) -> str:
    return f"""version = 3
root = "{root}/containerd/root"
state = "{root}/containerd/state"

[grpc]
  address = "{root}/containerd.sock"

[ttrpc]
  address = "{root}/containerd.sock.ttrpc"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  disable_apparmor = true
  # pod network namespaces under the node's state directory, so teardown unmounts them with the rest
  netns_mounts_under_state_dir = true
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails ("can't get final child's PID from pipe")
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN}"]
    conf_dir = "{root}/cni"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{root}/runc"
        SystemdCgroup = false
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{ALT_HANDLER}]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{ALT_HANDLER}.options]
        BinaryName = "{root}/{ALT_HANDLER}-runc"
        Root = "{root}/runc-{ALT_HANDLER}"
        SystemdCgroup = false
"""


def _alt_runtime() -> str:
    """The ALT_HANDLER wrapper: on `create`, ALT_HANDLER_ENV joins the container's environment in its bundle's
    config.json (written whole, then renamed); then runc runs with the same arguments."""
    return f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
if "create" in args:
    flag = next((f for f in ("--bundle", "-b") if f in args), None)
    bundle = args[args.index(flag) + 1] if flag else os.getcwd()
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec.setdefault("process", {{}}).setdefault("env", []).append("{ALT_HANDLER_ENV}={ALT_HANDLER}")
    with open(path + ".tmp", "w") as f:
        json.dump(spec, f)
    os.replace(path + ".tmp", path)
os.execv("{RUNC}", ["{RUNC}", *args])
"""


def _cni_config(root: Path, slot: int) -> str:
    return json.dumps({
        "cniVersion": "1.0.0", "name": network_name(slot),
        "plugins": [
            {"type": "bridge", "bridge": bridge_name(slot), "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": f"10.246.{slot}.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(root / "cni-ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2)


def _kubelet_config(root: Path, slot: int, pki: Path) -> str:
    return json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "cgroupRoot": f"/{cgroup_name(slot)}", "cgroupsPerQOS": True,
        "containerRuntimeEndpoint": f"unix://{root}/containerd.sock",
        "port": 10250 + slot, "healthzPort": 10248 + 10 * slot, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1",
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "AlwaysAllow"},
        "registerNode": True, "serializeImagePulls": False, "imageGCHighThresholdPercent": 100,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "resolvConf": "", "maxPods": 20,
        # Each node's own: a kubelet's container GC deletes the log directories of pods it does not know, so
        # with the default /var/log/pods the other nodes' kubelets would delete this node's pod logs.
        "podLogsDir": str(root / "pod-logs"),
    }, indent=2)


def _prepare_cgroups(name: str) -> None:
    """kubelet wants its cgroupRoot in every v1 hierarchy beforehand, cpuset seeded from the parent."""
    for ctrl in CGROUP_ROOT.iterdir():
        if not ctrl.is_dir() or ctrl.name == "unified":
            continue
        d = ctrl / name
        d.mkdir(exist_ok=True)
        if ctrl.name == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                (d / f).write_text((ctrl / f).read_text().strip())


def _remove_cgroups(name: str) -> None:
    for ctrl in CGROUP_ROOT.iterdir():
        d = ctrl / name
        if d.is_dir():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                try:
                    sub.rmdir()
                except OSError:
                    pass
            try:
                d.rmdir()
            except OSError:
                pass


def cgroup_pids(name: str) -> set[int]:
    """Processes in a node's cgroup: its containers and pod sandboxes."""
    pids: set[int] = set()
    d = CGROUP_ROOT / "pids" / name
    if d.is_dir():
        for procs in d.rglob("cgroup.procs"):
            pids |= {int(x) for x in procs.read_text().split()}
    return pids


def read_sysctls() -> dict[str, str]:
    return {k: Path("/proc/sys", k).read_text().strip() for k in SYSCTLS if Path("/proc/sys", k).exists()}


def _host_sysctls() -> dict[str, str]:
    try:
        return json.loads(HOST_SYSCTLS.read_text())
    except (OSError, ValueError):
        return {}


def _kube_proxy_config(root: Path, node: str) -> str:
    return json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "iptables",
        "clientConnection": {"kubeconfig": str(root / "kubeconfig")}, "hostnameOverride": node,
        "clusterCIDR": POD_CIDR, "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
        # leave the host's conntrack table sizes and route_localnet as they are
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False},
    }, indent=2)


def _host_kube_proxies() -> list[int]:
    """kube-proxy processes of any dev cluster on this host."""
    out = []
    for p in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = p.read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and argv[0].endswith(b"r1-cluster") and argv[1] == KUBE_PROXY.encode():
            out.append(int(p.parent.name))
    return out


def _other_slots_in_use(state) -> bool:
    mine = set(state.host.get("slots", {}).values())
    return any(not _slot_free(s) for s in range(MAX_SLOTS) if s not in mine)


# ---------------------------------------------------------------- start and stop

def start(state, pki: Path, kubeconfig_for, count: int, gpus: int, timeout_wait) -> None:
    """Start `count` real nodes (the caller ran check_host). kubeconfig_for(user) renders a kubeconfig;
    timeout_wait(what, check) polls."""
    if not _other_slots_in_use(state) and not HOST_SYSCTLS.exists():
        # the host's values before any real node changed them, kept host-wide: the last dev cluster to stop restores
        HOST_SYSCTLS.parent.mkdir(parents=True, exist_ok=True)
        HOST_SYSCTLS.write_text(json.dumps(read_sysctls()))
    pause_tar = Path(state.root) / "pause.tar"
    pause_tar.write_bytes(pause_image_tar(find_binary("r1-pause")))
    binary, ctr = find_binary("r1-cluster"), find_binary("ctr")
    env_path = f"{find_binary('containerd-shim-runc-v2').parent}:{os.environ.get('PATH', '')}"
    ip = host_ip()
    for i in range(count):
        name = node_name(i)
        slot = _take_slot(state)
        root = Path(state.root) / "nodes" / name
        (root / "cni").mkdir(parents=True, exist_ok=True)
        (root / "cni" / "10-r1.conflist").write_text(_cni_config(root, slot))
        (root / "containerd.toml").write_text(_containerd_config(root))
        (root / f"{ALT_HANDLER}-runc").write_text(_alt_runtime())
        (root / f"{ALT_HANDLER}-runc").chmod(0o755)
        (root / "kubelet.json").write_text(_kubelet_config(root, slot, pki))
        (root / "kubeconfig").write_text(kubeconfig_for(f"node-{name}"))
        state.host.setdefault("slots", {})[name] = slot
        state.real_nodes.append(name)
        state.save()
        _prepare_cgroups(cgroup_name(slot))
        spawn(state, f"containerd-{name}", [str(find_binary("containerd")), "--config", str(root / "containerd.toml")],
              env={**os.environ, "PATH": env_path})
        sock = root / "containerd.sock"
        timeout_wait(f"containerd of {name}", lambda: sock.exists())
        archives = [pause_tar, *sorted(images_dir().glob("*.tar"))]
        for archive in archives:  # each node has its own containerd, so its own copy of every image
            imp = subprocess.run([str(ctr), "-a", str(sock), "-n", "k8s.io", "images", "import", str(archive)],
                                 capture_output=True, text=True, timeout=300)
            if imp.returncode:
                raise ClusterError(f"importing {archive} into {name} failed: {imp.stderr.strip()}")
        labels = {REAL_LABEL: "true"}
        if gpus:  # simulated: no physical GPU exists here (GPU Feature Discovery labels as on a real GPU node)
            labels.update({"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "Simulated-GPU",
                           "nvidia.com/gpu.memory": "24576", "nvidia.com/gpu.count": str(gpus)})
        spawn(state, f"kubelet-{name}", [
            str(binary), "kubelet", f"--config={root / 'kubelet.json'}", f"--kubeconfig={root / 'kubeconfig'}",
            f"--root-dir={root / 'kubelet'}", f"--cert-dir={root / 'kubelet-pki'}", f"--hostname-override={name}",
            f"--node-ip={ip}", "--node-labels=" + ",".join(f"{k}={v}" for k, v in labels.items()), "--v=1",
        ], env={**os.environ, "PATH": env_path})
    if _host_kube_proxies():
        print(f"dev cluster {state.name}: another dev cluster's kube-proxy serves this host, so this cluster's "
              "Services are not routed; reach its pods with 'kubectl port-forward'", file=sys.stderr)
    else:
        root = Path(state.root) / KUBE_PROXY
        root.mkdir(exist_ok=True)
        (root / "kubeconfig").write_text(kubeconfig_for(KUBE_PROXY))  # user system:kube-proxy (node-proxier role)
        (root / "config.json").write_text(_kube_proxy_config(root, node_name(0)))
        spawn(state, KUBE_PROXY, [str(binary), KUBE_PROXY, f"--config={root / 'config.json'}", "--v=1"])


def start_network_policy(state, kubeconfig_for) -> None:
    """kube-router's firewall, by the cluster that runs the host's kube-proxy, once real-0 is registered
    (kube-router exits when its node object does not exist yet)."""
    if KUBE_PROXY not in state.pids:
        return
    root = Path(state.root) / NETWORK_POLICY
    root.mkdir(exist_ok=True)
    (root / "kubeconfig").write_text(kubeconfig_for(NETWORK_POLICY))
    spawn(state, NETWORK_POLICY, _network_policy_command(root))


def _network_policy_command(root: Path) -> list[str]:
    """kube-router as a NetworkPolicy firewall only. Every real node's pods have the host's address as hostIP, so
    one instance (named after real-0) treats them all as its own."""
    return [str(find_binary("kube-router")), "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
            "--run-loadbalancer=false", "--enable-cni=false", "--enable-ipv6=false", "--enable-pod-egress=false",
            f"--kubeconfig={root / 'kubeconfig'}", f"--hostname-override={node_name(0)}", "--health-port=0",
            "--metrics-port=0", f"--service-cluster-ip-range={SERVICE_CIDR}", "--iptables-sync-period=15s", "--v=1"]


def stop(state, grace: float = 10.0) -> list[str]:
    """Stop the real nodes in the order that leaves nothing: containers and shims, kube-proxy, kubelet, containerd,
    then host state (mounts, bridges, cgroups, iptables, sysctls)."""
    killed: list[str] = []
    slots = state.host.get("slots", {})
    for name in state.real_nodes:
        root = Path(state.root) / "nodes" / name
        # the containers (and pause sandboxes) of this node, then their shims
        for pid in [*cgroup_pids(cgroup_name(slots[name])), *_shims(root / "containerd.sock")]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    comps = [NETWORK_POLICY, KUBE_PROXY,
             *(f"{kind}-{name}" for kind in ("kubelet", "containerd") for name in state.real_nodes)]
    for comp in comps:
        pid = state.pids.get(comp)
        if pid and stop_group(pid, grace):
            killed.append(comp)
    for name in state.real_nodes:
        root = Path(state.root) / "nodes" / name
        _unmount_under(root)
        subprocess.run(["ip", "link", "delete", bridge_name(slots[name])], capture_output=True)
        _remove_cgroups(cgroup_name(slots[name]))
    last = not _other_slots_in_use(state)  # kubelet's and kube-proxy's chains and sysctls are the host's
    if last and KUBE_PROXY in state.pids:
        subprocess.run([str(find_binary("r1-cluster")), KUBE_PROXY, "--cleanup"], capture_output=True, timeout=60)
    errors = netfilter.remove(_networks(state), kube=last)  # kube-router's chains are KUBE-*, then its ipsets
    if errors:
        raise ClusterError("removing the real nodes' iptables rules failed: " + "; ".join(errors))
    if last:
        for k, v in _host_sysctls().items():
            try:
                Path("/proc/sys", k).write_text(v)
            except OSError:
                pass
        HOST_SYSCTLS.unlink(missing_ok=True)
        try:
            HOST_SYSCTLS.parent.rmdir()
        except OSError:
            pass
    return killed


def _networks(state) -> set[str]:
    return {network_name(slot) for slot in state.host.get("slots", {}).values()}


def _shims(sock: Path) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"containerd-shim-runc-v2") and str(sock).encode() in cmd:
            out.append(int(p.name))
    return out


def _unmount_under(root: Path) -> None:
    """Unmount everything below root, deepest first (overlay rootfs, shm, kubelet's bind of its root dir)."""
    for _ in range(3):
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        mine = sorted((m for m in mounts if m == str(root) or m.startswith(str(root) + "/")), key=len, reverse=True)
        if not mine:
            return
        for m in mine:
            subprocess.run(["umount", "-l", m], capture_output=True)
        time.sleep(0.2)


def leftovers(state) -> list[str]:
    """What of the real nodes is still on the host (for down's check and the tests)."""
    out = []
    for name in state.real_nodes:
        slot = state.host.get("slots", {})[name]
        root = Path(state.root) / "nodes" / name
        out += [f"process {c} ({state.pids[c]})" for c in (f"kubelet-{name}", f"containerd-{name}")
                if c in state.pids and alive(state.pids[c])]
        out += [f"shim {pid}" for pid in _shims(root / "containerd.sock")]
        out += [f"cgroup {ctrl.name}/{cgroup_name(slot)}" for ctrl in CGROUP_ROOT.iterdir()
                if (ctrl / cgroup_name(slot)).is_dir()]
        if Path("/sys/class/net", bridge_name(slot)).exists():
            out.append(f"bridge {bridge_name(slot)}")
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        out += [f"mount {m}" for m in mounts if m.startswith(str(root))]
    out += [f"process {c} ({state.pids[c]})" for c in (KUBE_PROXY, NETWORK_POLICY)
            if c in state.pids and alive(state.pids[c])]
    return out + netfilter.leftovers(_networks(state), kube=not _other_slots_in_use(state))
