"""The whole flow in real containers: the operator's fetch Job and runtime pod on the real node, from the built images.

The R1Deployment asks for the real node by label; the plan puts it on `real-0` with the node's two
simulated GPUs (the CPU build of llama.cpp runs the layers on the CPU). The fetch Job downloads the
miniature R1 split set from the dev hub, verifies and merges it on the volume; the runtime passes its
real startup and readiness probes and answers the official openai client through the Service's
ClusterIP, which the host reaches through the dev cluster's kube-proxy. The namespace enforces Pod Security `restricted`; the kubelet enforces the
pods' security settings.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from openai import OpenAI
from r1_devtools.kit import HUB_REPO
from r1_devtools.testmodel import ModelShape, write_test_model
from r1_devtools.waiting import wait_for

from r1_operator.builders import names
from r1_runtime.cache.download import written_bytes, written_spans
from r1_operator.dev import realnode
from r1_operator.dev.processes import free_port

pytestmark = pytest.mark.cluster
R1D = {
    "apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "metadata": {"name": "r1-real"},
    "spec": {"model": {"variant": "UD-IQ1_S"}, "inference": {"ctxSize": 1024, "parallel": 1, "canary": False},
             "scheduling": {"nodeSelector": {realnode.REAL_LABEL: "true", "kubernetes.io/hostname": "real-0"}}},
}
CACHE = names.cache_name("unsloth/DeepSeek-R1-GGUF", "main", "UD-IQ1_S", "real-0")  # RWO: per node
OPERATOR_IMAGE = "docker.io/r1-operator/operator:0.1.0"


def _ask(kube, ns: str) -> str:
    """One chat completion through the Service's ClusterIP (kube-proxy), with the official openai client."""
    client = OpenAI(base_url=kube.service_url(ns, "r1-real") + "/v1", api_key="unused", timeout=60)
    out = client.chat.completions.create(model="r1-real", messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=8, temperature=0)
    assert out.usage.completion_tokens > 0 and out.choices[0].finish_reason in ("length", "stop")
    return out.model


def _runtime_pod(kube, ns: str) -> dict:
    pods = kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector("r1-real")))["items"]
    return next(p for p in pods if not p["metadata"].get("deletionTimestamp"))


def test_fetch_and_serve_in_real_containers_answer_through_the_service(real_kube, real_ns, real_hub):
    kube, ns = real_kube, real_ns
    first = len(real_hub[1].stats()["requests"])
    kube.apply(R1D, ns)
    kube.wait_condition(ns, "r1-real", "Planned", timeout=60)
    plan = kube.r1d(ns, "r1-real")["status"]["plan"]
    assert plan["node"] == "real-0" and plan["gpus"] == 2

    # the fetch Job's container downloads, verifies and merges onto the volume; its log has the progress lines
    kube.run("wait", "--for=condition=Complete", f"job/{CACHE}", "-n", ns, "--timeout=120s")
    log = kube.run("logs", "-n", ns, f"job/{CACHE}").stdout
    assert 'r1-progress={"phase": "downloading"' in log and '"phase": "done"' in log
    served = sum(q["bytes"] for q in real_hub[1].stats()["requests"][first:])
    assert served == sum(f.stat().st_size for f in real_hub[1].root.rglob("*.gguf"))  # each byte once

    # the runtime passes its real startup and readiness probes, in a real container, as UID 65532
    kube.run("wait", "--for=condition=Ready", "r1d/r1-real", "-n", ns, "--timeout=180s")
    pod = _runtime_pod(kube, ns)
    (cs,) = pod["status"]["containerStatuses"]
    assert pod["spec"]["nodeName"] == "real-0" and cs["ready"]
    assert cs["containerID"].startswith("containerd://") and cs["image"].endswith("r1-operator/runtime:0.1.0")
    res = next(c for c in pod["spec"]["containers"] if c["name"] == "runtime")["resources"]
    assert res["limits"]["memory"] == res["requests"]["memory"]  # bounded by the plan, and it serves under it
    ident = kube.run("exec", "-n", ns, pod["metadata"]["name"], "--", "python3", "-c",
                     "import os\ntry:\n open('/written', 'w')\nexcept OSError as e:\n print(os.getuid(), e.errno)").stdout
    assert ident.split() == ["65532", "30"]  # EROFS: the root filesystem is read-only
    assert _ask(kube, ns) == "r1-real"
    # what llama.cpp really did, read from the runtime's startup line: the CPU build offloads nothing, which
    # this dev cluster's operator expects (R1_DEV_SIMULATED_GPUS), so Ready says so rather than Degraded
    r1d = wait_for(lambda: (r := kube.r1d(ns, "r1-real")).get("status", {}).get("runtime") and r, 60, "the offload")
    assert r1d["status"]["runtime"]["offloadedLayers"] == 0 and plan["nGpuLayers"] > 0
    assert kube.condition(ns, "r1-real", "Ready")["reason"] == "ReadySimulatedGPUs"
    assert kube.condition(ns, "r1-real", "Degraded")["status"] == "False"

    # a deleted runtime pod comes back and serves again
    kube.run("delete", "pod", "-n", ns, pod["metadata"]["name"], "--wait=false")
    wait_for(lambda: _runtime_pod(kube, ns)["metadata"]["uid"] != pod["metadata"]["uid"], 60, "a new runtime pod")
    kube.run("wait", "--for=condition=Ready", "r1d/r1-real", "-n", ns, "--timeout=180s")
    wait_for(lambda: all(c["ready"] for c in _runtime_pod(kube, ns)["status"].get("containerStatuses") or [{"ready": 0}]),
             120, "the new runtime pod to be ready")
    assert _ask(kube, ns) == "r1-real"


def test_the_operator_image_holds_no_llama_cpp_python(real_kube, real_ns):
    """The control plane's image runs as 65532 and has the operator's packages but not llama-cpp-python."""
    check = ("import importlib.util as u, os, sys\n"
             "sys.exit(0 if os.getuid() == 65532 and u.find_spec('kopf') and not u.find_spec('llama_cpp') else 3)")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator-image"}, "spec": {
        "restartPolicy": "Never", "nodeSelector": {realnode.REAL_LABEL: "true"}, "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "check", "image": OPERATOR_IMAGE, "imagePullPolicy": "Never",
                        "command": ["python3", "-c", check],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}}]}}
    real_kube.apply(pod, real_ns)

    def finished():
        st = real_kube.json("get", "pod", "operator-image", "-n", real_ns)["status"]
        return st if st.get("phase") in ("Succeeded", "Failed") else None

    st = wait_for(finished, 90, "the operator image check")
    real_kube.run("delete", "pod", "operator-image", "-n", real_ns, "--wait=false")
    assert st["phase"] == "Succeeded", st


def test_a_volume_too_small_fails_the_fetch_saying_how_much_is_needed(real_kube, real_ns):
    """8Mi is a real 8 MiB filesystem here: less than the split set plus its merged copy (about 9.4 MiB)."""
    kube, ns = real_kube, real_ns
    r1d = {**R1D, "spec": {**R1D["spec"], "cache": {"size": "8Mi"}}}
    kube.apply(r1d, ns)
    kube.wait_condition(ns, "r1-real", "CacheReady", "False", timeout=120, reason="FetchFailed")
    msg = kube.condition(ns, "r1-real", "CacheReady")["message"]
    assert "not enough free space: need 9.4 MiB more" in msg and "spec.cache.size" in msg
    assert kube.condition(ns, "r1-real", "Degraded")["status"] == "True"
    job = kube.json("get", "job", CACHE, "-n", ns)
    assert job["status"].get("failed") == 1  # exit 3 is permanent: no retries (podFailurePolicy)
    # nothing half-written that looks complete: the volume holds no GGUF, partial or whole
    pvc = kube.json("get", "pvc", CACHE, "-n", ns)
    path = Path(kube.json("get", "pv", pvc["spec"]["volumeName"])["spec"]["local"]["path"])
    assert path.is_mount() and not list(path.rglob("*.gguf")) and not list(path.rglob("*.partial"))


def test_a_runtime_oomkilled_by_its_memory_limit_says_so_in_the_status(real_kube, real_ns):
    kube, ns = real_kube, real_ns
    r1d = {**R1D, "spec": {**R1D["spec"], "resources": {"requests": {"memory": "48Mi"}, "limits": {"memory": "48Mi"}}}}
    kube.apply(r1d, ns)
    kube.wait_condition(ns, "r1-real", "Planned", timeout=60)  # written once the Job exists
    kube.run("wait", "--for=condition=Complete", f"job/{CACHE}", "-n", ns, "--timeout=120s")
    cond = kube.wait_condition(ns, "r1-real", "Degraded", "True", timeout=180, reason="OutOfMemory")
    assert "container runtime was OOMKilled (exit 137" in cond["message"]
    assert "at its memory limit 48Mi" in cond["message"] and "raise spec.resources.limits.memory" in cond["message"]
    assert "spec.resources sets the runtime's memory, so the operator leaves it" in cond["message"]
    assert not kube.r1d(ns, "r1-real")["status"]["plan"].get("corrections")  # the user's limit is not changed
    (cs,) = _runtime_pod(kube, ns)["status"]["containerStatuses"]
    term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
    assert term["reason"] == "OOMKilled" and term["exitCode"] == 137  # the kernel's OOM killer, for real


MMAP_LIMIT = 400 << 20
MMAP_SHAPE = ModelShape(n_embd=2048, n_layer=4, n_dense=1, n_head=16, q_lora_rank=512, kv_lora_rank=256, n_ff=4096,
                        n_ff_exp=1024, n_expert=16, n_expert_used=2)  # about 720 MB, 1.8 times the limit


def _cgroup_memory(kube, ns: str, pod: str) -> dict[str, int]:
    """The container's memory cgroup (v1 on these hosts) as the container sees it."""
    code = ("import pathlib\nd = pathlib.Path('/sys/fs/cgroup/memory')\n"
            "print('limit', (d / 'memory.limit_in_bytes').read_text().strip())\n"
            "print('peak', (d / 'memory.max_usage_in_bytes').read_text().strip())\n"
            "print('failcnt', (d / 'memory.failcnt').read_text().strip())\n"
            "print((d / 'memory.stat').read_text())")
    out = kube.run("exec", "-n", ns, pod, "-c", "runtime", "--", "python3", "-c", code).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines() if line.strip())}


def test_mapped_weights_serve_under_a_memory_limit_below_the_model_size(real_kube, real_ns, real_hub):
    """The runtime maps the model: its pages are file cache, charged to the pod but reclaimable, so at the limit
    the kernel drops and re-reads them rather than kill the runtime (the rule mmap mode's limit rests on). A model
    of 1.8 times the limit serves; the cgroup is seen at its limit with the
    model's pages charged to it (peak usage at the limit), and the container is never OOM-killed."""
    kube, ns, hub = real_kube, real_ns, real_hub[1]
    variant = "UD-IQ1_M"
    merged = f"DeepSeek-R1-{variant}/DeepSeek-R1-{variant}.gguf"
    if not (hub.root / HUB_REPO / merged.replace(".gguf", "-00001-of-00002.gguf")).exists():
        write_test_model(hub.root / HUB_REPO / merged, MMAP_SHAPE, n_shards=2, seed=13)
    model_bytes = sum(p.stat().st_size for p in (hub.root / HUB_REPO).glob(f"DeepSeek-R1-{variant}/*.gguf"))
    assert model_bytes > 1.5 * MMAP_LIMIT
    memory = f"{MMAP_LIMIT >> 20}Mi"
    cache = names.cache_name(HUB_REPO, "main", variant, "real-0")
    r1d = {**R1D, "metadata": {"name": "r1-mmap"},
           "spec": {**R1D["spec"], "replicas": 0, "model": {"variant": variant},
                    "resources": {"requests": {"memory": memory}, "limits": {"memory": memory}}}}
    kube.apply(r1d, ns)
    kube.wait_condition(ns, "r1-mmap", "Planned", timeout=60)
    kube.run("wait", "--for=condition=Complete", f"job/{cache}", "-n", ns, "--timeout=180s")
    # The fetch wrote the file, so its pages are charged to the fetch pod's cgroup: drop them (clean after the
    # merge's fdatasync, and mapped by no one), so that the runtime's reads charge its own.
    pvc = kube.json("get", "pvc", cache, "-n", ns)
    path = Path(kube.json("get", "pv", pvc["spec"]["volumeName"])["spec"]["local"]["path"]) / merged
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    kube.run("patch", "r1d", "r1-mmap", "-n", ns, "--type=merge", "-p", '{"spec": {"replicas": 1}}')
    kube.run("wait", "--for=condition=Ready", "r1d/r1-mmap", "-n", ns, "--timeout=240s")
    client = OpenAI(base_url=kube.service_url(ns, "r1-mmap") + "/v1", api_key="unused", timeout=120)
    for prompt in ("Hi", "Tell me about the sea", "Count to ten"):
        out = client.chat.completions.create(model="r1-mmap", messages=[{"role": "user", "content": prompt}],
                                             max_tokens=16, temperature=0)
        assert out.usage.completion_tokens > 0
    pods = kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector("r1-mmap")))["items"]
    (pod,) = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["restartCount"] == 0 and not cs.get("lastState", {}).get("terminated"), cs
    cg = _cgroup_memory(kube, ns, pod["metadata"]["name"])
    assert cg["limit"] == MMAP_LIMIT
    print(f"runtime cgroup after serving a {model_bytes >> 20} MiB model under {memory}: {cg}")
    assert cg["peak"] >= 0.95 * MMAP_LIMIT, cg  # it reached the limit, and reclaimed: no OOM kill above
    assert cg["cache"] > 64 << 20 and cg["mapped_file"] > 64 << 20, cg  # the model's pages, charged to this cgroup


def test_prometheus_scrapes_the_runtime_pod_with_the_podmonitor_labels(real_kube, real_ns, real_operator):
    """A real Prometheus scrapes the runtime pod on the real node by its pod IP, with the labels the chart's
    PodMonitor gives it, and every panel of the dashboard returns data."""
    from r1_devtools.prom import running_prometheus

    from r1_operator.dashboard import build

    kube, ns = real_kube, real_ns
    kube.apply(R1D, ns)
    kube.run("wait", "--for=condition=Ready", "r1d/r1-real", "-n", ns, "--timeout=240s")
    # The targets and labels prometheus-operator generates for charts/r1-operator/templates/podmonitor.yaml:
    # its pod selector and port, namespace/pod/container from the pod, service from the instance label. (Debian's
    # Prometheus is built without kubernetes_sd, so the selection is done here, through the API server.)
    sel = "app.kubernetes.io/name=r1-runtime,app.kubernetes.io/component=runtime,app.kubernetes.io/managed-by=r1-operator"
    targets = []
    for p in kube.json("get", "pods", "-n", ns, "-l", sel)["items"]:
        for c in p["spec"]["containers"]:
            for port in c.get("ports") or []:
                if port.get("name") == "metrics":
                    targets.append({"targets": [f"{p['status']['podIP']}:{port['containerPort']}"], "labels": {
                        "namespace": ns, "pod": p["metadata"]["name"], "container": c["name"],
                        "service": p["metadata"]["labels"]["app.kubernetes.io/instance"]}})
    assert len(targets) == 1
    scrape = [{"job_name": "r1-runtime", "metrics_path": "/metrics", "static_configs": targets},
              {"job_name": "r1-operator", "honor_labels": True,
               "static_configs": [{"targets": [f"127.0.0.1:{real_operator.metrics_port}"]}]}]
    with running_prometheus([], free_port(), scrape_configs=scrape) as prom:
        pod = _runtime_pod(kube, ns)
        (target,) = prom.query('up{job="r1-runtime"}')
        assert target["metric"]["pod"] == pod["metadata"]["name"] and target["metric"]["namespace"] == ns
        assert target["metric"]["service"] == "r1-real" and target["metric"]["instance"].startswith(pod["status"]["podIP"])
        for _ in range(2):
            assert _ask(kube, ns) == "r1-real"
        wait_for(lambda: prom.value("sum(llamacpp:tokens_predicted_total) > 0"), 30, "a scrape after the requests")
        fill = {"$namespace": ns, "$deployment": "r1-real", "$pod": pod["metadata"]["name"], "$__rate_interval": "15s"}
        for panel in build()["panels"]:
            for t in panel["targets"]:
                expr = t["expr"]
                for k, v in fill.items():
                    expr = expr.replace(k, v)
                wait_for(lambda e=expr: prom.query(e), 30, f"data for {panel['title']}: {expr}")


def test_a_fetch_container_killed_mid_download_resumes_without_fetching_a_byte_twice(real_kube, real_ns, real_hub,
                                                                                     real_cluster):
    """The fetch container is killed (SIGKILL) while its connections download the three shards; the Job's next
    pod resumes from the volume's partial files and their journals: it asks for no byte already written, and
    the hub serves each byte once, but for those in flight at the kill."""
    kube, ns = real_kube, real_ns
    hub = real_hub[1]
    root = hub.root / HUB_REPO / "DeepSeek-R1-UD-IQ1_S"
    shards = sorted(p.relative_to(hub.root).as_posix() for p in root.glob("*-of-*.gguf"))
    sizes = {k: (hub.root / k).stat().st_size for k in shards}
    first = len(hub.stats()["requests"])
    hub.throttle_bps = 100_000  # per connection, about 15 s per shard: the kill lands mid-file on a loaded machine
    try:
        kube.apply(R1D, ns)
        kube.wait_condition(ns, "r1-real", "Planned", timeout=60)

        def volume() -> Path | None:
            pvc = kube.json("get", "pvc", CACHE, "-n", ns)
            name = pvc["spec"].get("volumeName")
            return Path(kube.json("get", "pv", name)["spec"]["local"]["path"]) if name else None

        vol = wait_for(volume, 60, "the cache volume")
        finals = {k: vol / Path(k).parent.name / Path(k).name for k in shards}
        wait_for(lambda: written_bytes(finals[shards[1]], sizes[shards[1]]) > 0, 120,
                 "shard 2 partly written to the volume", interval=0.05)
        # SIGKILL the fetch process inside the container (the container dies with it; the Job starts a new pod)
        slot = real_cluster.host["slots"]["real-0"]
        fetch = [pid for pid in realnode.cgroup_pids(realnode.cgroup_name(slot))
                 if b"fetch" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        assert len(fetch) == 1, fetch
        os.kill(fetch[0], signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{fetch[0]}").exists(), 10, "the fetch process gone")
        killed_at = len(hub.stats()["requests"])  # the killed process asks for nothing after this
        had = {k: [(0, sizes[k])] if finals[k].is_file() else written_spans(finals[k], sizes[k]) for k in shards}
    finally:
        hub.throttle_bps = 0
    assert 0 < sum(b - a for a, b in had[shards[1]]) < sizes[shards[1]]
    kube.run("wait", "--for=condition=Complete", f"job/{CACHE}", "-n", ns, "--timeout=180s")
    kube.wait_condition(ns, "r1-real", "CacheReady", timeout=60)
    stats = hub.stats()
    for k in shards:
        rerun = [q for q in stats["requests"][killed_at:] if q["file"] == k]
        assert all(q["end"] < a or q["start"] >= b for q in rerun for a, b in had[k]), (rerun, had[k])
        assert sum(q["bytes"] for q in rerun) == sizes[k] - sum(b - a for a, b in had[k])  # exactly what was missing
        in_flight = sum(q["bytes"] for q in stats["requests"][first:] if q["file"] == k) - sizes[k]
        assert 0 <= in_flight <= 2 << 20  # socket buffers and one read chunk per connection, lost with the process
