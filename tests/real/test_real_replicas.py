"""Two replicas on the two real nodes: each placement with its own cache volume, both behind the one Service.

The planner spreads equal nodes first, so `replicas: 2` over `real-0` and `real-1` gives one placement per node,
each a Deployment pinned there with a node-local ReadWriteOnce cache. The Service's ClusterIP (kube-proxy)
balances over both: each pod's own request counter, read from its metrics port, shows it answered. Deleting
one pod leaves the other serving every request while its Deployment brings it back.
"""

from __future__ import annotations

import re

import httpx
import pytest
from openai import OpenAI
from r1_devtools.kit import HUB_REPO
from r1_devtools.waiting import wait_for

from r1_operator.builders import names
from r1_operator.dev import realnode
from r1_operator.settings import OperatorSettings

pytestmark = pytest.mark.cluster
VARIANT = "UD-IQ1_S"
NAME = "r1-two"


def _served(pod_ip: str) -> float:
    """Chat requests this pod answered, from its own metrics port (the host's traffic is always let in)."""
    text = httpx.get(f"http://{pod_ip}:{OperatorSettings().runtime_metrics_port}/metrics", timeout=10).text
    return sum(float(m.group(1)) for m in re.finditer(r'^r1_requests_total\{endpoint="chat",[^}]*\} (\S+)$',
                                                       text, re.M))


def test_two_replicas_on_two_nodes_each_with_its_cache_answer_through_one_service(real_kube, real_ns, real_hub):
    kube, ns = real_kube, real_ns
    kube.apply({"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "metadata": {"name": NAME},
                "spec": {"replicas": 2, "model": {"variant": VARIANT},
                         "inference": {"ctxSize": 512, "parallel": 1, "canary": False},
                         "resources": {"requests": {"cpu": "250m"}},
                         "scheduling": {"nodeSelector": {realnode.REAL_LABEL: "true"}}}}, ns)
    kube.run("wait", "--for=condition=Ready", f"r1d/{NAME}", "-n", ns, "--timeout=300s", timeout=330)
    st = kube.r1d(ns, NAME)["status"]
    assert st["ready"] == "2/2" and st["plan"]["nodes"] == "2 nodes"
    assert sorted(p["node"] for p in st["plan"]["placements"]) == ["real-0", "real-1"]

    pods = [p for p in kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector(NAME)))["items"]
            if not p["metadata"].get("deletionTimestamp")]
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["real-0", "real-1"]
    for pod in pods:  # each on its own node's volume
        claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                     if "persistentVolumeClaim" in v)
        assert claim == names.cache_name(HUB_REPO, "main", VARIANT, pod["spec"]["nodeName"])

    url = kube.service_url(ns, NAME)

    def ask() -> int:
        # a client per request: kube-proxy balances connections, and one kept-alive connection stays on one pod
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60, max_retries=0)
        out = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                             temperature=0)
        client.close()
        return out.usage.completion_tokens

    before = {p["metadata"]["name"]: _served(p["status"]["podIP"]) for p in pods}
    assert all(ask() > 0 for _ in range(16))
    after = {p["metadata"]["name"]: _served(p["status"]["podIP"]) for p in pods}
    answered = {n: after[n] - before[n] for n in after}
    assert sum(answered.values()) == 16 and all(v > 0 for v in answered.values()), answered  # both served

    # one pod deleted: the other answers every request while the first is replaced
    gone = pods[0]["metadata"]["name"]
    kube.run("delete", "pod", gone, "-n", ns, "--wait=false")
    wait_for(lambda: gone not in {a["targetRef"]["name"] for s in kube.json("get", "endpoints", NAME, "-n", ns)
                                  .get("subsets") or [] for a in s.get("addresses") or []}, 60,
             "the deleted pod to leave the Service's endpoints")
    assert all(ask() > 0 for _ in range(8))
    kube.run("wait", "--for=condition=Ready", f"r1d/{NAME}", "-n", ns, "--timeout=300s", timeout=330)
