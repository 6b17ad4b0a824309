"""1,000 R1Deployments over 200 simulated nodes: latency from apply to children created, and operator RSS.

A fresh local cluster with 200 kwok nodes (four shapes: 8×80 GB, 4×80 GB, 1×24 GB,
CPU-only) and one operator process. R1Deployments are created at a steady rate
in 20 namespaces with mixed variants; "children created" is the moment the
runtime Service (the last child of the chain: PVC, Job, Deployment, Service)
reaches a watch. replicas is 0 so that GPU capacity does not cap how many can
be planned (each plan takes every free GPU of its node).

Baseline in the same run: bare ConfigMaps created at the same rate, timed from
create to watch, i.e. what the API server and watch path cost with no operator.

    .venv/bin/python benchmarks/operator_scale.py [--count 1000] [--nodes 200] [--rate 5]
    .venv/bin/python benchmarks/operator_scale.py --rate 20 --results operator_scale_rate20   # past saturation
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import results_io
import yaml

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
SHAPES = [
    {"gpus": 8, "gpuMemoryMiB": 81559, "gpuProduct": "NVIDIA-H100-80GB-HBM3", "cpu": "192", "memory": "2Ti"},
    {"gpus": 4, "gpuMemoryMiB": 81920, "gpuProduct": "NVIDIA-A100-SXM4-80GB", "cpu": "96", "memory": "1Ti"},
    {"gpus": 1, "gpuMemoryMiB": 24576, "gpuProduct": "NVIDIA-L4", "cpu": "32", "memory": "256Gi"},
    {"gpus": 0, "cpu": "64", "memory": "512Gi"},
]
VARIANTS = ["auto", "UD-IQ1_S", "UD-IQ1_M", "UD-IQ2_XXS"]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(int(round(p / 100 * (len(xs) - 1))), len(xs) - 1)]


class Watcher(threading.Thread):
    """Records when each (namespace, name) of one kind first reaches a watch."""

    def __init__(self, api, kind: str, label: str | None) -> None:
        super().__init__(daemon=True)
        self.api, self.kind, self.label = api, kind, label
        self.seen: dict[tuple[str, str], float] = {}
        self.ready = threading.Event()

    def run(self) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        core = client.CoreV1Api(self.api)
        lister = core.list_service_for_all_namespaces if self.kind == "service" else core.list_config_map_for_all_namespaces
        rv = None
        while True:
            if rv is None:  # (re)list: anything already there counts as seen now, which only overstates latency
                listed = lister(label_selector=self.label)
                now = time.perf_counter()
                for item in listed.items:
                    self.seen.setdefault((item.metadata.namespace, item.metadata.name), now)
                rv = listed.metadata.resource_version
                self.ready.set()
            try:
                for ev in watch.Watch().stream(lister, label_selector=self.label, resource_version=rv,
                                               timeout_seconds=120):
                    m = ev["object"].metadata
                    rv = m.resource_version
                    self.seen.setdefault((m.namespace, m.name), time.perf_counter())
            except ApiException as exc:
                rv = None if exc.status == 410 else rv  # too old: list again
            except HTTPError:  # the server closed the stream early under load; resume from rv
                pass


def create_at_rate(n: int, rate: float, create) -> dict[tuple[str, str], float]:
    done: dict[tuple[str, str], float] = {}
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        key = create(i)
        done[key] = time.perf_counter()
    return done


def latencies(created: dict, seen: dict, timeout: float) -> list[float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not set(created) <= set(seen):
        time.sleep(0.5)
    missing = set(created) - set(seen)
    if missing:
        raise SystemExit(f"{len(missing)} never arrived, e.g. {sorted(missing)[:3]}")
    return [seen[k] - created[k] for k in created]


def rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def operator_work(port: int) -> dict:
    """Count and mean duration of the operator's reconciles and refreshes (its own metrics)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for kind in ("reconcile", "refresh"):
        def val(suffix: str) -> float:
            key = f'r1_operator_reconcile_duration_seconds_{suffix}{{kind="{kind}"}} '
            return float(next((ln.split()[-1] for ln in text.splitlines() if ln.startswith(key)), 0))
        n = val("count")
        out[kind] = {"count": int(n), "mean_ms": round(1000 * val("sum") / n, 1) if n else 0.0}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--rate", type=float, default=5.0, help="R1Deployments created per second")
    ap.add_argument("--namespaces", type=int, default=20)
    ap.add_argument("--results", default="operator_scale", help="name of the results files")
    args = ap.parse_args()
    from kubernetes import client, config

    from r1_operator.dev import cluster
    from r1_operator.dev.processes import free_port

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    nodes = [{"name": f"node-{i:03d}", **SHAPES[i % len(SHAPES)]} for i in range(args.nodes)]
    (tmp / "nodes.yaml").write_text(yaml.safe_dump({"nodes": nodes}))
    name = "bench-scale"
    cluster.down(name)
    t = time.perf_counter()
    state = cluster.up(name, cluster.load_shapes(tmp / "nodes.yaml"), timeout=300)
    print(f"cluster with {args.nodes} nodes up in {time.perf_counter() - t:.1f}s", flush=True)
    op = None
    try:
        env = {**os.environ, "KUBECONFIG": state.kubeconfig}
        for f in ("r1deployments.yaml", "kopf-peering.yaml"):
            subprocess.run([str(BIN / "kubectl"), "apply", "--server-side", "-f", str(REPO / "crds" / f)], env=env,
                           check=True, capture_output=True)
        subprocess.run([str(BIN / "kubectl"), "wait", "--for=condition=Established",
                        "crd/r1deployments.r1.inference.dev"], env=env, check=True, capture_output=True)
        api = config.new_client_from_config(config_file=state.kubeconfig)
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        namespaces = [f"scale-{i:02d}" for i in range(args.namespaces)]
        for ns in namespaces + ["scale-baseline"]:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))

        cms = Watcher(api, "configmap", "bench=baseline")
        cms.start()
        cms.ready.wait()

        def make_cm(i: int):
            core.create_namespaced_config_map("scale-baseline", client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=f"cm-{i}", labels={"bench": "baseline"}), data={"i": str(i)}))
            return ("scale-baseline", f"cm-{i}")
        n_base = min(args.count, 100)
        base = latencies(create_at_rate(n_base, args.rate, make_cm), cms.seen, 60)

        log = open(tmp / "operator.log", "wb")  # noqa: SIM115
        metrics_port = free_port()
        op = subprocess.Popen([str(BIN / "r1-operator"), "--standalone", "--metrics-port", str(metrics_port),
                               "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
                               "--readiness", f"http://127.0.0.1:{free_port()}/readyz"],
                              env={**env, "R1_REPLAN_INTERVAL_S": "60"}, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(5)  # kopf's initial listing of nodes, pods and R1Deployments
        idle_rss = rss_mib(op.pid)[0]
        svcs = Watcher(api, "service", "app.kubernetes.io/managed-by=r1-operator")
        svcs.start()
        svcs.ready.wait()

        def make_r1d(i: int):
            ns = namespaces[i % len(namespaces)]
            body = {"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment",
                    "metadata": {"name": f"r1-{i:04d}"},
                    "spec": {"replicas": 0, "model": {"variant": VARIANTS[i % len(VARIANTS)]}}}
            custom.create_namespaced_custom_object("r1.inference.dev", "v1alpha1", ns, "r1deployments", body)
            return (ns, f"r1-{i:04d}")
        t = time.perf_counter()
        created = create_at_rate(args.count, args.rate, make_r1d)
        lat = latencies(created, svcs.seen, 600)
        wall = time.perf_counter() - t
        time.sleep(3)
        rss, hwm = rss_mib(op.pid)
        work = operator_work(metrics_port)
    finally:
        if op is not None:
            op.terminate()
            op.wait(30)
        cluster.down(name)

    ms = lambda xs, p: round(pct(xs, p) * 1000, 1)  # noqa: E731
    data = {
        "count": args.count, "nodes": args.nodes, "namespaces": args.namespaces, "rate_per_s": args.rate,
        "cpus": os.cpu_count(), "wall_s": round(wall, 1),
        "apply_to_children_ms": {"p50": ms(lat, 50), "p90": ms(lat, 90), "p99": ms(lat, 99), "max": ms(lat, 100)},
        "baseline_configmap_ms": {"p50": ms(base, 50), "p90": ms(base, 90), "p99": ms(base, 99), "max": ms(base, 100),
                                  "n": n_base},
        "operator_rss_mib": {"idle": round(idle_rss, 1), "end": round(rss, 1), "peak": round(hwm, 1)},
        "operator_work": work,
        "goals": {"p99_ms": 1000, "rss_mib": 250},
    }
    md = (f"# Operator at scale: {args.count} R1Deployments over {args.nodes} simulated nodes\n\n"
          f"Created at {args.rate:g}/s in {args.namespaces} namespaces on {os.cpu_count()} CPUs (cluster, operator and "
          f"client share them). Children created = the runtime Service reaches a watch.\n\n"
          "| measure | p50 | p90 | p99 | max |\n|---|---|---|---|---|\n"
          f"| apply → children created (ms) | {data['apply_to_children_ms']['p50']} | "
          f"{data['apply_to_children_ms']['p90']} | {data['apply_to_children_ms']['p99']} | "
          f"{data['apply_to_children_ms']['max']} |\n"
          f"| baseline: ConfigMap create → watch (ms) | {data['baseline_configmap_ms']['p50']} | "
          f"{data['baseline_configmap_ms']['p90']} | {data['baseline_configmap_ms']['p99']} | "
          f"{data['baseline_configmap_ms']['max']} |\n\n"
          f"Operator RSS: {data['operator_rss_mib']['idle']} MiB idle, {data['operator_rss_mib']['end']} MiB at the end, "
          f"peak {data['operator_rss_mib']['peak']} MiB. Goals: p99 ≤ 1000 ms, RSS ≤ 250 MiB.\n\n"
          f"Operator work: {work['reconcile']['count']} reconciles (mean {work['reconcile']['mean_ms']} ms), "
          f"{work['refresh']['count']} refreshes (mean {work['refresh']['mean_ms']} ms).\n")
    results_io.save(args.results, data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
