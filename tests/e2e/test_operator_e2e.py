"""R1Deployments reconciled end to end on the real cluster (API server, controller manager, scheduler).

Simulated: GPUs (kwok nodes with GPU Feature Discovery labels) and containers
(kwok marks scheduled pods Ready and Job pods Succeeded). Everything else is
real: the CRD's validation, the garbage collector, the scheduler's GPU fitting,
Pod Security admission.
"""

from __future__ import annotations

import copy
import json

import httpx
import pytest
import yaml
from r1_devtools.kit import REPO
from r1_devtools.waiting import wait_for

from r1_operator.builders import names

EXAMPLES = REPO / "examples"


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def runtime_pods(kube, ns: str, name: str) -> list[dict]:
    sel = names.selector_string(names.selector(name))
    return kube.json("get", "pods", "-n", ns, "-l", sel)["items"]


# (example file, node the plan must choose, GPUs, llama.cpp --n-gpu-layers of 62, variant)
CASES = [
    ("auto-2x80g.yaml", "gpu-2x80g", 2, None, None),
    ("auto-24g.yaml", "gpu-24g", 1, None, "UD-IQ1_S"),
    ("explicit-variant.yaml", "gpu-80g", 1, None, "UD-IQ2_XXS"),
    ("cpu-only.yaml", "cpu-only", 0, 0, "UD-IQ1_S"),
]


@pytest.mark.cluster
@pytest.mark.parametrize("file,node,gpus,layers,variant", CASES, ids=[c[0] for c in CASES])
def test_example_is_planned_cached_scheduled_and_ready(kube, e2e_ns, file, node, gpus, layers, variant):
    r1d = example(file)
    name = r1d["metadata"]["name"]
    kube.apply(r1d, e2e_ns)
    kube.wait_condition(e2e_ns, name, "Planned", timeout=30)
    plan = kube.r1d(e2e_ns, name)["status"]["plan"]
    assert plan["node"] == node and plan["gpus"] == gpus
    if variant:
        assert plan["variant"] == variant
    if layers is not None:
        assert plan["nGpuLayers"] == layers
    elif gpus:
        assert 0 < plan["nGpuLayers"] <= 62
    # kubectl get shows the plan in its columns
    wide = kube.run("get", "r1d", name, "-n", e2e_ns, "-o", "wide").stdout
    assert plan["variant"] in wide and f"{plan['nGpuLayers']}/62" in wide and node in wide

    # the fetch Job completes (kwok) and the operator records the cache as ready on the volume
    job = names.cache_name("unsloth/DeepSeek-R1-GGUF", "main", plan["variant"], plan["node"])
    kube.run("wait", "--for=condition=Complete", f"job/{job}", "-n", e2e_ns, "--timeout=60s")
    kube.wait_condition(e2e_ns, name, "CacheReady", timeout=30)
    pvc = kube.json("get", "pvc", job, "-n", e2e_ns)
    assert pvc["status"]["phase"] == "Bound" and names.ANN_CACHE_READY in pvc["metadata"]["annotations"]

    # the real scheduler places the runtime pod on the planned node with the planned GPUs
    kube.run("wait", "--for=condition=Ready", f"r1d/{name}", "-n", e2e_ns, "--timeout=60s")
    (pod,) = runtime_pods(kube, e2e_ns, name)
    assert pod["spec"]["nodeName"] == node
    limits = pod["spec"]["containers"][0]["resources"].get("limits", {})
    assert int(limits.get("nvidia.com/gpu", 0)) == gpus
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--n-gpu-layers") + 1] == str(plan["nGpuLayers"])
    if gpus > 1:
        assert cmd[cmd.index("--tensor-split") + 1] == ",".join(map(str, plan["tensorSplit"])) == "1,1"
    st = kube.r1d(e2e_ns, name)["status"]
    assert st["endpoint"] == f"http://{name}.{e2e_ns}.svc:8080/v1" and st["readyReplicas"] == 1
    assert st["cache"]["display"] == "Ready"
    reasons = {e["reason"] for e in kube.json("get", "events", "-n", e2e_ns,
                                              "--field-selector", f"involvedObject.name={name}")["items"]}
    assert {"Planned", "Cached", "RuntimeReady"} <= reasons, reasons


@pytest.mark.cluster
def test_delete_leaves_no_child_and_a_shared_cache_survives_until_its_last_user(kube, e2e_ns):
    a = example("cpu-only.yaml")
    a["spec"]["replicas"] = 0
    b = copy.deepcopy(a)
    b["metadata"]["name"] = "r1-cpu-b"
    kube.apply(a, e2e_ns)
    kube.apply(b, e2e_ns)
    for n in ("r1-cpu", "r1-cpu-b"):
        kube.wait_condition(e2e_ns, n, "CacheReady", timeout=60)
    cache = names.cache_name("unsloth/DeepSeek-R1-GGUF", "main", "UD-IQ1_S", "cpu-only")
    assert len(kube.json("get", "pvc", "-n", e2e_ns)["items"]) == 1
    assert len(kube.json("get", "jobs", "-n", e2e_ns)["items"]) == 1
    owners = {o["name"] for o in kube.json("get", "pvc", cache, "-n", e2e_ns)["metadata"]["ownerReferences"]}
    assert owners == {"r1-cpu", "r1-cpu-b"}

    kube.run("delete", "r1d", "r1-cpu", "-n", e2e_ns, "--wait=true")
    wait_for(lambda: kube.run("get", "deploy,svc", "r1-cpu", "-n", e2e_ns, check=False).returncode != 0, 30,
             "r1-cpu's Deployment and Service to be collected")
    pvc = kube.json("get", "pvc", cache, "-n", e2e_ns)
    assert [o["name"] for o in pvc["metadata"]["ownerReferences"]] == ["r1-cpu-b"]
    assert pvc["metadata"].get("deletionTimestamp") is None

    kube.run("delete", "r1d", "r1-cpu-b", "-n", e2e_ns, "--wait=true")
    kinds = "deploy,svc,job,pvc,configmap,pods"

    def nothing_left():
        items = kube.json("get", kinds, "-n", e2e_ns, "-l", "app.kubernetes.io/managed-by=r1-operator")["items"]
        items += [p for p in kube.json("get", "pods", "-n", e2e_ns)["items"]]
        return not items
    wait_for(nothing_left, 60, "every child to be garbage-collected")


@pytest.mark.cluster
@pytest.mark.parametrize("e2e_ns", [{"pod-security.kubernetes.io/enforce": "restricted",
                                     "pod-security.kubernetes.io/enforce-version": "latest"}], indirect=True)
def test_restricted_namespace_admits_every_generated_pod(kube, e2e_ns):
    r1d = example("auto-24g.yaml")
    kube.apply(r1d, e2e_ns)
    kube.run("wait", "--for=condition=Ready", "r1d/r1-24g", "-n", e2e_ns, "--timeout=90s")
    pods = kube.json("get", "pods", "-n", e2e_ns)["items"]
    assert {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods} == {"cache", "runtime"}
    events = kube.json("get", "events", "-n", e2e_ns)["items"]
    assert not [e for e in events if e["reason"] == "FailedCreate"], [e["message"] for e in events]


@pytest.mark.cluster
def test_spec_change_replans_and_rolls_the_runtime(kube, e2e_ns):
    r1d = example("explicit-variant.yaml")
    kube.apply(r1d, e2e_ns)
    kube.run("wait", "--for=condition=Ready", "r1d/r1-iq2", "-n", e2e_ns, "--timeout=60s")
    before = kube.json("get", "deploy", "r1-iq2", "-n", e2e_ns)
    layers_before = kube.r1d(e2e_ns, "r1-iq2")["status"]["plan"]["nGpuLayers"]
    r1d["spec"]["inference"]["ctxSize"] = 32768  # a bigger KV cache leaves room for fewer layers
    kube.apply(r1d, e2e_ns)

    def replanned():
        st = kube.r1d(e2e_ns, "r1-iq2").get("status", {})
        return st if st.get("plan", {}).get("generation") == 2 and st.get("observedGeneration") == 2 else None
    st = wait_for(replanned, 30, "the plan for generation 2")
    assert st["plan"]["nGpuLayers"] < layers_before
    after = kube.json("get", "deploy", "r1-iq2", "-n", e2e_ns)
    cmd = after["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--ctx-size") + 1] == "32768"
    assert cmd[cmd.index("--n-gpu-layers") + 1] == str(st["plan"]["nGpuLayers"])
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    kube.run("wait", "--for=condition=Ready", "r1d/r1-iq2", "-n", e2e_ns, "--timeout=60s")


@pytest.mark.cluster
def test_node_loss_sets_a_condition_and_replans_when_it_returns(kube, e2e_ns):
    r1d = example("explicit-variant.yaml")  # pinned to gpu-80g by its nodeSelector
    kube.apply(r1d, e2e_ns)
    kube.run("wait", "--for=condition=Ready", "r1d/r1-iq2", "-n", e2e_ns, "--timeout=60s")
    kube.run("cordon", "gpu-80g")
    try:
        c = kube.wait_condition(e2e_ns, "r1-iq2", "Planned", "False", timeout=30)
        assert c["reason"] == "NoFeasiblePlan" and "gpu-80g is cordoned" in c["message"]
        d = kube.condition(e2e_ns, "r1-iq2", "Degraded")
        assert d["status"] == "True" and d["reason"] == "NoFeasiblePlan"
    finally:
        kube.run("uncordon", "gpu-80g")
    c = kube.wait_condition(e2e_ns, "r1-iq2", "Planned", "True", timeout=60)
    assert c["reason"] == "Replanned"
    assert kube.condition(e2e_ns, "r1-iq2", "Degraded")["status"] == "False"
    kube.run("wait", "--for=condition=Ready", "r1d/r1-iq2", "-n", e2e_ns, "--timeout=60s")


@pytest.mark.cluster
def test_unknown_variant_is_reported_on_the_field(kube, e2e_ns):
    r1d = example("cpu-only.yaml")
    r1d["spec"]["model"]["variant"] = "UD-IQ9_Z"  # passes the schema's pattern; only the catalog knows it
    kube.apply(r1d, e2e_ns)
    c = kube.wait_condition(e2e_ns, "r1-cpu", "Planned", "False", timeout=30)
    assert c["reason"] == "InvalidSpec" and c["message"].startswith("spec.model.variant:") and "UD-IQ1_S" in c["message"]
    assert not kube.json("get", "deploy,job,pvc", "-n", e2e_ns)["items"]


@pytest.mark.cluster
def test_operator_metrics_and_liveness(kube, e2e_ns, operator):
    kube.apply(example("cpu-only.yaml"), e2e_ns)
    kube.run("wait", "--for=condition=Ready", "r1d/r1-cpu", "-n", e2e_ns, "--timeout=60s")
    assert httpx.get(f"http://127.0.0.1:{operator.liveness_port}/healthz", timeout=5).status_code == 200
    text = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).text
    assert f'r1_operator_deployment_ready{{namespace="{e2e_ns}",r1deployment="r1-cpu"}} 1.0' in text
    assert 'r1_operator_reconciles_total{kind="reconcile",result="ok"}' in text
    assert f'r1_operator_plan_info{{gpu_layers="0/62",mode="cpu",namespace="{e2e_ns}",node="cpu-only",' \
           f'r1deployment="r1-cpu",variant="UD-IQ1_S"}} 1.0' in text


@pytest.mark.cluster
def test_edits_to_children_are_reverted(kube, e2e_ns):
    kube.apply(example("cpu-only.yaml"), e2e_ns)
    kube.run("wait", "--for=condition=Ready", "r1d/r1-cpu", "-n", e2e_ns, "--timeout=60s")
    kube.run("scale", "deploy/r1-cpu", "-n", e2e_ns, "--replicas=0")
    wait_for(lambda: kube.json("get", "deploy", "r1-cpu", "-n", e2e_ns)["spec"]["replicas"] == 1, 30,
             "the operator to restore the runtime's replicas")
    kube.run("delete", "deploy", "r1-cpu", "-n", e2e_ns)
    wait_for(lambda: kube.run("get", "deploy", "r1-cpu", "-n", e2e_ns, check=False).returncode == 0, 30,
             "the operator to recreate a deleted runtime Deployment")
    kube.run("wait", "--for=condition=Ready", "r1d/r1-cpu", "-n", e2e_ns, "--timeout=60s")


@pytest.mark.cluster
def test_readwriteonce_caches_are_per_node_and_readwritemany_is_shared(kube, e2e_ns):
    """A ReadWriteOnce volume binds to its first pod's node (the dev class binds WaitForFirstConsumer with node
    affinity), so R1Deployments on two nodes need two caches; with ReadWriteMany one serves both."""
    cpu, gpu = example("cpu-only.yaml"), example("auto-24g.yaml")
    gpu["spec"]["model"] = {"variant": "UD-IQ1_S"}
    for r1d in (cpu, gpu):
        kube.apply(r1d, e2e_ns)
    for name in ("r1-cpu", "r1-24g"):
        kube.run("wait", "--for=condition=Ready", f"r1d/{name}", "-n", e2e_ns, "--timeout=90s")
    pvcs = {p["metadata"]["name"]: p for p in kube.json("get", "pvc", "-n", e2e_ns)["items"]}
    assert set(pvcs) == {names.cache_name("unsloth/DeepSeek-R1-GGUF", "main", "UD-IQ1_S", n) for n in ("cpu-only", "gpu-24g")}
    for pvc in pvcs.values():  # each volume is pinned to the node its R1Deployment runs on
        pv = kube.json("get", "pv", pvc["spec"]["volumeName"])
        (node,) = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
        assert pvc["metadata"]["name"].split("-ud-iq1-s-")[1].startswith(node)

    kube.run("delete", "r1d", "--all", "-n", e2e_ns, "--wait=true")
    for r1d in (cpu, gpu):
        r1d["spec"]["cache"] = {"accessMode": "ReadWriteMany"}
        kube.apply(r1d, e2e_ns)
    for name in ("r1-cpu", "r1-24g"):
        kube.wait_condition(e2e_ns, name, "Planned", timeout=30)
    wait_for(lambda: [p["metadata"]["name"] for p in kube.json("get", "pvc", "-n", e2e_ns)["items"]
                      if not p["metadata"].get("deletionTimestamp")]
             == [names.cache_name("unsloth/DeepSeek-R1-GGUF", "main", "UD-IQ1_S")], 60, "one shared cache")


@pytest.mark.cluster
def test_three_replicas_are_placed_over_the_nodes_each_with_its_cache_and_scale_down_drops_the_newest(kube, e2e_ns):
    """replicas: 3 on the four dev shapes: three placements of one variant, each scheduled by the real scheduler
    on its planned node with that node's offload and its own ReadWriteOnce cache; one Service over all."""
    r1d = example("auto-2x80g.yaml")
    name = r1d["metadata"]["name"]
    r1d["spec"].pop("scheduling")  # every node shape may host one
    r1d["spec"]["replicas"] = 3
    kube.apply(r1d, e2e_ns)
    kube.run("wait", "--for=condition=Ready", f"r1d/{name}", "-n", e2e_ns, "--timeout=120s")
    st = kube.r1d(e2e_ns, name)["status"]
    plan = st["plan"]
    assert (plan["replicas"], plan["placedReplicas"], plan["nodes"]) == (3, 3, "3 nodes")
    placements = {p["node"]: p for p in plan["placements"]}
    assert len(placements) == 3 and st["readyReplicas"] == 3 and st["ready"] == "3/3"
    pods = runtime_pods(kube, e2e_ns, name)
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(placements)  # where the plan put them
    for pod in pods:
        want = placements[pod["spec"]["nodeName"]]
        cmd = pod["spec"]["containers"][0]["command"]
        assert cmd[cmd.index("--n-gpu-layers") + 1] == str(want["nGpuLayers"])
        claim = next(v for v in pod["spec"]["volumes"] if v["name"] == "cache")["persistentVolumeClaim"]["claimName"]
        assert claim == names.cache_name("unsloth/DeepSeek-R1-GGUF", "main", plan["variant"], want["node"])
    endpoints = kube.json("get", "endpoints", name, "-n", e2e_ns)
    assert sum(len(s.get("addresses") or []) for s in endpoints.get("subsets") or []) == 3  # one Service, all three
    wide = kube.run("get", "r1d", name, "-n", e2e_ns, "-o", "wide").stdout
    assert "3/3" in wide and "3 nodes" in wide

    # scale to 1: the newest placements go, with their Deployments; the first stays where it was
    first = next(p for p in plan["placements"] if p["id"] == 0)
    kube.run("scale", f"r1d/{name}", "-n", e2e_ns, "--replicas=1")
    wait_for(lambda: [d["metadata"]["name"] for d in kube.json(
        "get", "deploy", "-n", e2e_ns, "-l", f"{names.LABEL_DEPLOYMENT}={name}")["items"]] == [name], 60,
             "the two newest placements' Deployments to go")
    kube.run("wait", "--for=condition=Ready", f"r1d/{name}", "-n", e2e_ns, "--timeout=60s")
    after = kube.r1d(e2e_ns, name)["status"]["plan"]
    assert [(p["id"], p["node"], p["nGpuLayers"]) for p in after["placements"]] == \
        [(0, first["node"], first["nGpuLayers"])]
    # the two caches no placement uses any more were this R1Deployment's alone: deleted, not left without owners
    wait_for(lambda: len(kube.json("get", "pvc", "-n", e2e_ns)["items"]) == 1, 60, "the unused caches to go")
    kube.run("delete", "r1d", name, "-n", e2e_ns, "--wait=true")
    wait_for(lambda: not kube.json("get", "pods", "-n", e2e_ns)["items"], 150, "every pod to be garbage-collected")


@pytest.mark.cluster
def test_more_replicas_than_the_cluster_holds_is_degraded_with_the_numbers(kube, e2e_ns):
    r1d = example("auto-2x80g.yaml")
    name = r1d["metadata"]["name"]
    r1d["spec"].pop("scheduling")
    r1d["spec"]["replicas"] = 6
    kube.apply(r1d, e2e_ns)
    degraded = kube.wait_condition(e2e_ns, name, "Degraded", timeout=60, reason="InsufficientCapacity")
    assert "of 6 replicas placed" in degraded["message"] and "lower spec.replicas" in degraded["message"]
    st = kube.r1d(e2e_ns, name)["status"]
    progressing = next(c for c in st["conditions"] if c["type"] == "Progressing")
    assert progressing["status"] == "False"  # never Progressing forever
    assert st["plan"]["placedReplicas"] < 6



@pytest.mark.cluster
def test_autoscaling_waits_for_keda_then_hands_replicas_to_it_and_never_fights_it(kube, e2e_ns):
    """spec.autoscaling without KEDA serves minReplicas and says why; KEDA's CRD installed, the ScaledObject
    appears at once (the CRD watch); the autoscaler's writes to the scale subresource are placed and never undone;
    autoscaling turned off removes the ScaledObject. (KEDA itself and the HPA run in tests/real.)"""
    from r1_devtools.kit import keda_crd

    crd = "scaledobjects.keda.sh"
    kube.run("delete", "crd", crd, "--ignore-not-found", "--wait=true")
    r1d = example("auto-2x80g.yaml")
    name = r1d["metadata"]["name"]
    r1d["spec"].pop("scheduling")
    r1d["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3, "targetQueuePerReplica": 2,
                                  "prometheusAddress": "http://prometheus.monitoring.svc:9090"}
    try:
        kube.apply(r1d, e2e_ns)
        missing = kube.wait_condition(e2e_ns, name, "Autoscaling", status="False", timeout=60, reason="KEDAMissing")
        assert crd in missing["message"] and "install KEDA" in missing["message"]
        kube.run("wait", "--for=condition=Ready", f"r1d/{name}", "-n", e2e_ns, "--timeout=120s")
        degraded = kube.condition(e2e_ns, name, "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "AutoscalingUnavailable")

        kube.run("create", "-f", str(keda_crd()))
        kube.wait_condition(e2e_ns, name, "Autoscaling", timeout=30, reason="KEDA")
        so = kube.json("get", "scaledobject", name, "-n", e2e_ns)
        assert so["spec"]["scaleTargetRef"] == {"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment",
                                                "name": name}
        assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (1, 3)
        assert so["spec"]["triggers"][0]["metadata"]["threshold"] == "2"
        assert so["metadata"]["ownerReferences"][0]["name"] == name
        kube.wait_condition(e2e_ns, name, "Degraded", status="False", timeout=30)

        # what the HPA reads and writes: the scale subresource, with the selector it needs
        scale_path = f"/apis/r1.inference.dev/v1alpha1/namespaces/{e2e_ns}/r1deployments/{name}/scale"
        scale = json.loads(kube.run("get", "--raw", scale_path).stdout)
        assert scale["status"]["replicas"] == 1 and names.LABEL_DEPLOYMENT in scale["status"]["selector"]
        kube.run("scale", f"r1d/{name}", "-n", e2e_ns, "--replicas=2")
        wait_for(lambda: kube.r1d(e2e_ns, name)["status"].get("ready") == "2/2", 120, "2/2 ready")
        kube.run("wait", "--for=condition=Ready", f"r1d/{name}", "-n", e2e_ns, "--timeout=60s")
        assert kube.r1d(e2e_ns, name)["status"]["plan"]["placedReplicas"] == 2
        # a reconcile later (a re-plan, a child changing) the autoscaler's value stands: the operator never writes it
        kube.run("annotate", f"r1d/{name}", "-n", e2e_ns, "touch=1")
        kube.run("scale", f"deploy/{name}", "-n", e2e_ns, "--replicas=0")  # a child change: the operator converges
        wait_for(lambda: kube.json("get", "deploy", name, "-n", e2e_ns)["spec"]["replicas"] >= 1, 60, "converged")
        assert kube.r1d(e2e_ns, name)["spec"]["replicas"] == 2

        kube.run("patch", f"r1d/{name}", "-n", e2e_ns, "--type=json", "-p",
                 '[{"op": "remove", "path": "/spec/autoscaling"}]')
        wait_for(lambda: not kube.json("get", "scaledobject", "-n", e2e_ns)["items"], 60, "the ScaledObject to go")
        wait_for(lambda: "Autoscaling" not in {c["type"] for c in kube.r1d(e2e_ns, name)["status"]["conditions"]},
                 30, "the Autoscaling condition to go")
    finally:
        kube.run("delete", "r1d", name, "-n", e2e_ns, "--wait=true", check=False)
        kube.run("delete", "crd", crd, "--ignore-not-found", "--wait=true", check=False)
