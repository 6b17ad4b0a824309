"""spec.autoscaling for real: KEDA, a real Prometheus and the controller manager's HPA scale 1 → 2 → 1 on the queue.

KEDA's operator and metrics API server run on the host (dev.keda, built from KEDA's Go module); the API server
serves external.metrics.k8s.io through them, and the HPA KEDA creates scales the R1Deployment through its scale
subresource. Prometheus (the Debian package, which lacks kubernetes_sd) scrapes the runtime pods from a file the
test keeps in step with the pods, with the labels the chart's PodMonitor gives. The load is a bounded number of
concurrent streaming requests through the Service (loopback to the host's kube-proxy), for bounded time, and
every request is counted: none may fail, while a replica is added or while one drains and goes.
"""

from __future__ import annotations

import pytest
from r1_devtools.prom import running_prometheus
from r1_devtools.load import Load, PodTargets
from r1_devtools.waiting import wait_for

from r1_operator.builders import manifests as mf
from r1_operator.builders import names
from r1_operator.dev import realnode
from r1_operator.dev.processes import free_port
from r1_operator.settings import OperatorSettings

pytestmark = pytest.mark.cluster
NAME = "r1-auto"


def r1d(prometheus: str) -> dict:
    return {"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "metadata": {"name": NAME},
            "spec": {"model": {"variant": "UD-IQ1_S"},
                     "inference": {"ctxSize": 512, "parallel": 1, "canary": False, "threads": 1},
                     "resources": {"requests": {"cpu": "250m"}},
                     "scheduling": {"nodeSelector": {realnode.REAL_LABEL: "true"}},
                     "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "targetQueuePerReplica": 1,
                                     "scaleDownDelaySeconds": 20, "pollingIntervalSeconds": 5,
                                     "prometheusAddress": prometheus}}}


def live_pods(kube, ns: str) -> list[dict]:
    return kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector(NAME)))["items"]


def ready_addresses(kube, ns: str) -> set[str]:
    ep = kube.json("get", "endpoints", NAME, "-n", ns)
    return {a["targetRef"]["name"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []}


def test_the_queue_scales_one_to_two_and_back_to_one_and_no_request_fails(real_kube, real_ns, real_keda, tmp_path):
    kube, ns = real_kube, real_ns
    port = free_port()
    kube.apply(r1d(f"http://127.0.0.1:{port}"), ns)
    kube.run("wait", "--for=condition=Ready", f"r1d/{NAME}", "-n", ns, "--timeout=300s", timeout=330)
    kube.wait_condition(ns, NAME, "Autoscaling", timeout=30, reason="KEDA")
    wait_for(lambda: kube.run("get", "hpa", f"keda-hpa-{NAME}", "-n", ns, check=False).returncode == 0, 60,
             "KEDA's HPA for the ScaledObject")

    sd = tmp_path / "targets.json"
    scrape = [{"job_name": "r1-runtime", "file_sd_configs": [{"files": [str(sd)], "refresh_interval": "1s"}]}]
    with PodTargets(kube, ns, names.selector_string(names.selector(NAME)), OperatorSettings().runtime_metrics_port,
                    sd, NAME) as targets, running_prometheus([], port, scrape_configs=scrape) as prom:
        assert len(targets.refresh()) == 1
        assert prom.value(mf.queue_query(NAME, ns)) == 0  # the query KEDA sends: idle, the queue is empty
        url = kube.service_url(ns, NAME)
        with Load(url, NAME, concurrency=3, max_tokens=256, limit_s=480) as load:
            # three streams on one slot: one running, two waiting, over a target of one per replica
            wait_for(lambda: (prom.value(mf.queue_query(NAME, ns)) or 0) >= 2, 60, "the queue to build up")
            wait_for(lambda: kube.r1d(ns, NAME)["spec"]["replicas"] == 2, 120, "KEDA's HPA to ask for 2 replicas")
            wait_for(lambda: kube.r1d(ns, NAME)["status"].get("ready") == "2/2", 300, "the second replica Ready")
            plan = kube.r1d(ns, NAME)["status"]["plan"]
            assert sorted(p["node"] for p in plan["placements"]) == ["real-0", "real-1"]
            hpa = kube.json("get", "hpa", f"keda-hpa-{NAME}", "-n", ns)
            assert hpa["spec"]["maxReplicas"] == 2 and hpa["spec"]["scaleTargetRef"]["kind"] == "R1Deployment"
            served_two = load.tally.ok
            # both replicas in the Service, serving: each pod's own count of answered chat requests has moved
            # (the warm-up generates too, but is no request)
            served = f'r1_requests_total{{namespace="{ns}",service="{NAME}",endpoint="chat",outcome=~"success|length"}}'
            wait_for(lambda: prom.value(f"count(sum by (pod) ({served}) > 0)") == 2, 90,
                     "chat requests answered by each of the two replicas")
            wait_for(lambda: load.tally.ok > served_two, 60, "requests served after the second replica came")

            # one stream: below the target, so after scaleDownDelaySeconds the HPA asks for 1; the newest
            # placement's pod leaves the Service's ready endpoints first, then drains and stops
            load.set_concurrency(1)
            wait_for(lambda: kube.r1d(ns, NAME)["spec"]["replicas"] == 1, 150, "KEDA's HPA to ask for 1 replica")
            going = wait_for(lambda: next((p for p in live_pods(kube, ns) if p["metadata"].get("deletionTimestamp")),
                                          None), 60, "the newest replica to be deleted")
            gone = going["metadata"]["name"]
            assert going["spec"]["nodeName"] == "real-1"  # the newest placement goes; the first stays

            def left_service() -> str | None:
                if gone in ready_addresses(kube, ns):
                    return None
                return "running" if gone in {p["metadata"]["name"] for p in live_pods(kube, ns)} else "stopped"

            # out of the Service's ready endpoints while it still runs (its preStop pause, then the drain)
            assert wait_for(left_service, 10, "the draining pod to leave the Service's ready endpoints") == "running"
            wait_for(lambda: gone not in {p["metadata"]["name"] for p in live_pods(kube, ns)}, 120,
                     "the drained pod to stop")
            kube.run("wait", "--for=condition=Ready", f"r1d/{NAME}", "-n", ns, "--timeout=60s")
            after = load.tally.ok
            wait_for(lambda: load.tally.ok > after, 60, "the one replica left to serve on")
        tally = load.stop()
    assert tally.failed == 0, tally.errors[:5]
    assert tally.ok >= 20, tally
    st = kube.r1d(ns, NAME)["status"]
    assert st["ready"] == "1/1" and [p["node"] for p in st["plan"]["placements"]] == ["real-0"]
