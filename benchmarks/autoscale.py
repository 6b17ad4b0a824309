"""Autoscaling on the queue, on real nodes: what a user waits for when load arrives, and what it buys.

A dev cluster with two real nodes and KEDA (dev.keda), the operator on the host, a real Prometheus scraping
the runtime pods, and the miniature model from the dev hub. Each round:

1. baseline, in the same run: the R1Deployment at a fixed single replica (no autoscaling) under the load,
   a closed loop of CONCURRENCY streaming chat requests through the Service, for WINDOW seconds;
2. the same R1Deployment with spec.autoscaling (1 to 2 replicas, one request per replica as the target) under
   the same load: the time from the queue building up (Prometheus first reads it at or above 2) to KEDA's HPA
   writing spec.replicas = 2, and to the second replica Ready (its node fetches its own cache first, as a
   ReadWriteOnce cache on a new node does); then WINDOW seconds at two replicas;
3. the load drops to one stream: the time until the newest replica is gone (scaleDownDelaySeconds, then
   its drain).

Every request is counted; failed ones are reported (the goal is 0). Both real nodes share this host's CPUs,
so each replica decodes on one thread (THREADS): one replica uses one core, two use two, as two nodes would
each give theirs. Results: benchmarks/results/autoscale.{json,md}.

    .venv/bin/python benchmarks/autoscale.py [--rounds 2] [--window 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import results_io  # benchmarks/ is on sys.path when a script runs
from r1_devtools import devhub
from r1_devtools.kit import HUB_REPO, MONITORING_NS, RUNTIME_IMAGE, Kube, drop_namespace, make_namespace, \
    start_operator
from r1_devtools.load import Load, PodTargets
from r1_devtools.prom import running_prometheus
from r1_devtools.testmodel import write_test_model
from r1_devtools.waiting import wait_for

from r1_operator.builders import manifests as mf
from r1_operator.builders import names
from r1_operator.dev import cluster as dev
from r1_operator.dev import realnode
from r1_operator.dev.processes import free_port
from r1_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[1]
NAME = "r1-bench"
CONCURRENCY = 3
MAX_TOKENS = 384  # long enough that the queue gauge reads steady between scrapes (tens of ms a request at 48)
DELAY_S = 20
# One decode thread per replica: both real nodes share this host's CPUs, and two runtimes counting every CPU as
# theirs (the default) spin four threads on two cores, which measures the host's oversubscription, not scaling.
THREADS = 1


def r1d(autoscaling: dict | None) -> dict:
    spec = {"replicas": 1, "model": {"variant": "UD-IQ1_S"},
            "inference": {"ctxSize": 512, "parallel": 1, "canary": False, "threads": THREADS},
            "resources": {"requests": {"cpu": "250m"}},
            "scheduling": {"nodeSelector": {realnode.REAL_LABEL: "true"}}}
    if autoscaling:
        spec["autoscaling"] = autoscaling
    return {"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "metadata": {"name": NAME},
            "spec": spec}


def window(load: Load, seconds: float) -> dict:
    ok0, failed0, t0 = load.tally.ok, load.tally.failed, time.monotonic()
    time.sleep(seconds)
    t1 = time.monotonic()
    return {"tokens_per_s": round(load.tokens_per_s(t0, t1), 2), "requests": load.tally.ok - ok0,
            "failed": load.tally.failed - failed0}


def one_round(kube: Kube, ns: str, prom, url: str, prom_url: str, seconds: float) -> dict:
    queue = mf.queue_query(NAME, ns)
    # baseline: a fixed single replica under the same load
    with Load(url, NAME, CONCURRENCY, MAX_TOKENS, limit_s=seconds + 120) as load:
        time.sleep(3)  # every stream started
        baseline = window(load, seconds)
    baseline["failed_total"] = load.stop().failed

    kube.apply(r1d({"minReplicas": 1, "maxReplicas": 2, "targetQueuePerReplica": 1, "scaleDownDelaySeconds": DELAY_S,
                    "pollingIntervalSeconds": 5, "prometheusAddress": prom_url}), ns)
    kube.wait_condition(ns, NAME, "Autoscaling", timeout=60, reason="KEDA")
    wait_for(lambda: kube.run("get", "hpa", f"keda-hpa-{NAME}", "-n", ns, check=False).returncode == 0, 60, "the HPA")
    with Load(url, NAME, CONCURRENCY, MAX_TOKENS, limit_s=900) as load:
        t_load = time.monotonic()
        wait_for(lambda: (prom.value(queue) or 0) >= 2, 60, "the queue to build up", interval=0.2)
        t_queue = time.monotonic()
        wait_for(lambda: kube.r1d(ns, NAME)["spec"]["replicas"] == 2, 180, "the HPA to ask for 2", interval=0.5)
        t_hpa = time.monotonic()
        wait_for(lambda: kube.r1d(ns, NAME)["status"].get("ready") == "2/2", 400, "2/2 Ready", interval=0.5)
        t_ready = time.monotonic()
        two = window(load, seconds)
        two["replicas_at_end"] = kube.r1d(ns, NAME)["spec"]["replicas"]  # 2 unless the HPA scaled in meanwhile
        load.set_concurrency(1)
        t_drop = time.monotonic()
        wait_for(lambda: kube.r1d(ns, NAME)["spec"]["replicas"] == 1, 300, "the HPA to ask for 1", interval=0.5)
        t_in = time.monotonic()
        wait_for(lambda: len(kube.json("get", "pods", "-n", ns, "-l",
                                       names.selector_string(names.selector(NAME)))["items"]) == 1, 300,
                 "the newest replica gone", interval=0.5)
        t_gone = time.monotonic()
        time.sleep(3)
    tally = load.stop()
    # back to the fixed single replica for the next round
    kube.apply(r1d(None), ns)
    wait_for(lambda: not kube.json("get", "scaledobject", "-n", ns)["items"], 60, "the ScaledObject to go")
    kube.run("wait", "--for=condition=Ready", f"r1d/{NAME}", "-n", ns, "--timeout=120s")
    return {
        "baseline_one_replica": baseline,
        "queue_seen_s": round(t_queue - t_load, 2),
        "queue_to_hpa_s": round(t_hpa - t_queue, 2),
        "queue_to_second_ready_s": round(t_ready - t_queue, 2),
        "two_replicas": {**two, "tokens_per_s_per_replica": round(two["tokens_per_s"] / 2, 2)},
        "load_drop_to_hpa_s": round(t_in - t_drop, 2),
        "load_drop_to_replica_gone_s": round(t_gone - t_drop, 2),
        "requests": tally.ok, "failed": tally.failed, "errors": tally.errors[:5],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--window", type=float, default=30.0)
    args = ap.parse_args()
    name = f"bench-auto-{os.getpid()}"
    state = dev.up(name, real_nodes=2, real_gpus=2, timeout=180, keda=True)
    op = None
    hub_root = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    write_test_model(hub_root / HUB_REPO / "DeepSeek-R1-UD-IQ1_S" / "DeepSeek-R1-UD-IQ1_S.gguf", n_shards=3, seed=11)
    try:
        kube = Kube(state.kubeconfig)
        for f in ("r1deployments.yaml", "kopf-peering.yaml"):
            kube.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / f))
        kube.run("wait", "--for=condition=Established", "crd/r1deployments.r1.inference.dev", "--timeout=30s")
        with devhub.running(hub_root, host="0.0.0.0", advertise=realnode.host_ip()) as (endpoint, _):
            op = start_operator(state.kubeconfig, hub_root / "operator.log", "--standalone", "--namespace", "bench-*",
                                env={"R1_HUB_ENDPOINT": endpoint, "R1_RUNTIME_IMAGE": RUNTIME_IMAGE,
                                     "R1_MONITORING_NAMESPACE": MONITORING_NS, "R1_DEV_SIMULATED_GPUS": "true"})
            ns = make_namespace(kube, "bench-autoscale", {"pod-security.kubernetes.io/enforce": "restricted"})
            kube.apply(r1d(None), ns)
            kube.run("wait", "--for=condition=Ready", f"r1d/{NAME}", "-n", ns, "--timeout=300s", timeout=330)
            port = free_port()
            sd = hub_root / "targets.json"
            scrape = [{"job_name": "r1-runtime", "file_sd_configs": [{"files": [str(sd)], "refresh_interval": "1s"}]}]
            with PodTargets(kube, ns, names.selector_string(names.selector(NAME)),
                            OperatorSettings().runtime_metrics_port, sd, NAME), \
                    running_prometheus([], port, scrape_configs=scrape) as prom:
                url = kube.service_url(ns, NAME)
                rounds = [one_round(kube, ns, prom, url, f"http://127.0.0.1:{port}", args.window)
                          for _ in range(args.rounds)]
            drop_namespace(kube, ns)
    finally:
        if op is not None:
            op.stop()
        dev.down(name)

    def med(key, sub=None):
        vals = [r[key][sub] if sub else r[key] for r in rounds]
        return round(statistics.median(vals), 2)

    data = {"concurrency": CONCURRENCY, "max_tokens": MAX_TOKENS, "parallel_per_replica": 1, "threads": THREADS,
            "scale_down_delay_s": DELAY_S, "window_s": args.window, "rounds": rounds,
            "median": {"queue_to_second_ready_s": med("queue_to_second_ready_s"),
                       "queue_to_hpa_s": med("queue_to_hpa_s"),
                       "baseline_tokens_per_s": med("baseline_one_replica", "tokens_per_s"),
                       "two_replicas_tokens_per_s": med("two_replicas", "tokens_per_s"),
                       "two_replicas_tokens_per_s_per_replica": med("two_replicas", "tokens_per_s_per_replica"),
                       "load_drop_to_replica_gone_s": med("load_drop_to_replica_gone_s")},
            "failed_total": sum(r["failed"] + r["baseline_one_replica"]["failed_total"] for r in rounds)}
    m = data["median"]
    md = [f"# Autoscaling 1 → 2 → 1 on the queue (real nodes, KEDA, Prometheus; {len(rounds)} rounds, medians)", "",
          f"Load: {CONCURRENCY} concurrent streaming requests of {MAX_TOKENS} tokens, one slot and {THREADS} decode "
          "thread per replica, target one request per replica. Both real nodes share this host's 2 CPUs.", "",
          "| figure | value |", "|---|---|",
          f"| queue built up → HPA asks for 2 | {m['queue_to_hpa_s']} s |",
          f"| queue built up → second replica Ready (incl. its cache fetch) | {m['queue_to_second_ready_s']} s |",
          f"| baseline, fixed 1 replica: tokens/s | {m['baseline_tokens_per_s']} |",
          f"| 2 replicas: tokens/s (per replica) | {m['two_replicas_tokens_per_s']} "
          f"({m['two_replicas_tokens_per_s_per_replica']}) |",
          f"| load drops → newest replica gone (delay {DELAY_S} s + drain) | {m['load_drop_to_replica_gone_s']} s |",
          f"| requests failed, all rounds and baselines | {data['failed_total']} |", "",
          "Two replicas add little tokens/s on this host: its two CPUs also run the load's clients, kube-proxy, "
          "Prometheus, KEDA, the operator and both kubelets, so the second replica's core is mostly taken. On "
          "nodes of their own, each replica brings its node's throughput."]
    results_io.save("autoscale", data, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
