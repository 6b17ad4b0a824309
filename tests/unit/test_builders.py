"""Pure builders: plan decisions, manifests and status, as tables of cases."""

from __future__ import annotations

from dataclasses import replace

import pytest

from r1_operator.api.types import R1DeploymentSpec
from r1_operator.builders import manifests as mf
from r1_operator.builders.status import CacheObservation, Desired, RuntimeObservation, build_status, combine
from r1_operator.dev.nodes import NodeShape
from r1_operator.planning.catalog import catalog_for
from r1_operator.planning.decide import PlanError, decide, placement_plans
from r1_operator.planning.inventory import inventory
from r1_operator.settings import OperatorSettings

S = OperatorSettings()


def pinned_to(pod: dict) -> list[str]:
    """The node names every required nodeSelectorTerm of a pod pins it to (matchFields on metadata.name)."""
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    pins = [f["values"] for t in terms for f in t.get("matchFields", []) if f["key"] == "metadata.name"]
    assert len(pins) == len(terms) and all(len(v) == 1 for v in pins)
    return sorted({v[0] for v in pins})


def node(name: str, gpus: int, mib: int | None, memory: str = "512Gi", **kw) -> dict:
    n = NodeShape.model_validate({"name": name, "gpus": gpus, "gpuMemoryMiB": mib, "memory": memory, "cpu": "64",
                                  **kw}).to_node()
    n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return n


def spec(**kw) -> R1DeploymentSpec:
    return R1DeploymentSpec.model_validate(kw)


def inv(*nodes):
    return inventory(list(nodes), [], "nvidia.com/gpu")


# ---------------------------------------------------------------- decide

def test_first_plan_then_kept_while_it_fits_even_when_a_better_node_joins():
    s = spec(model={"variant": "UD-IQ1_S"})
    first = decide(s, 1, inv(node("small", 1, 24576)), None)
    assert first.changed and first.plan["node"] == "small" and first.plan["why"] == "planned"
    again = decide(s, 1, inv(node("small", 1, 24576), node("big", 2, 81920)), first.plan)
    assert not again.changed and again.plan is first.plan


def test_node_loss_or_spec_change_replans_and_says_why():
    s = spec(model={"variant": "UD-IQ1_S"})
    first = decide(s, 1, inv(node("a", 1, 81920)), None).plan
    gone = decide(s, 1, inv(node("b", 1, 81920)), first)
    assert gone.plan["node"] == "b" and gone.why == "re-planned: node a is gone"
    cordoned = decide(s, 1, inv(node("a", 1, 81920, unschedulable=True), node("b", 1, 81920)), first)
    assert cordoned.plan["node"] == "b" and "cordoned" in cordoned.why
    bigger_ctx = decide(spec(model={"variant": "UD-IQ1_S"}, inference={"ctxSize": 65536}), 2, inv(node("a", 1, 81920)),
                        first)
    assert bigger_ctx.why == "re-planned: the spec changed" and bigger_ctx.plan["nGpuLayers"] < first["nGpuLayers"]
    same = decide(spec(model={"variant": "UD-IQ1_S"}, inference={"sampling": {"temperature": 0.3}}), 2,
                  inv(node("a", 1, 81920)), first)
    assert not same.changed and same.plan["why"] == "planned"  # a new generation with the same plan is no news


@pytest.mark.parametrize("kw,field", [
    ({"model": {"variant": "UD-IQ9_Z"}}, "spec.model.variant"),
    ({"model": {"minVariant": "nope"}}, "spec.model.minVariant"),
    ({"model": {"repo": "someone/other-GGUF"}}, "spec.model.repo"),
])
def test_unplannable_specs_name_the_field(kw, field):
    with pytest.raises(PlanError) as e:
        decide(spec(**kw), 1, inv(node("a", 1, 81920)), None)
    assert e.value.field == field and str(e.value).startswith(field)


# ---------------------------------------------------------------- manifests

def _plan(**kw):
    s = spec(model={"variant": "UD-IQ1_S"}, **kw)
    return s, decide(s, 1, inv(node("h100x2", 2, 81920)), None).plan


def test_runtime_renders_the_plan_and_requests_its_gpus_on_its_node():
    s, plan = _plan(inference={"flashAttention": True, "cacheTypeV": "q4_0", "cacheTypeK": "q4_0"})
    dep = mf.build_deployment("r1", "ns", "uid-1", s, plan, S, cache_ready=True)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    cmd = c["command"]
    assert cmd[cmd.index("--n-gpu-layers") + 1] == str(plan["nGpuLayers"])
    assert cmd[cmd.index("--tensor-split") + 1] == "1,1"
    assert "--flash-attn" in cmd and cmd[cmd.index("--cache-type-v") + 1] == "q4_0"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" == c["resources"]["requests"]["nvidia.com/gpu"]
    assert pinned_to(pod) == ["h100x2"]
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready" and c["livenessProbe"]["httpGet"]["path"] == "/health"
    # the startup window covers reading the whole variant (its published size) at the slowest expected rate
    window = c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"]
    assert window * S.load_bytes_per_second >= catalog_for(s.model.repo).get("UD-IQ1_S").size_bytes
    assert pod["terminationGracePeriodSeconds"] > S.shutdown_grace_s + S.prestop_sleep_s
    # the plan's bytes per device go with it, for the runtime to report a failed allocation against
    import json
    planned = json.loads(cmd[cmd.index("--planned-memory") + 1])
    assert set(planned) == {d["device"] for d in plan["memory"]} == {"gpu0", "gpu1", "cpu"}
    assert planned["gpu0"] == {"weights": plan["memory"][0]["weights"], "kv_cache": plan["memory"][0]["kvCache"],
                               "compute": plan["memory"][0]["compute"]}


def test_runtime_memory_is_bounded_by_the_plan_and_mmap_leaves_the_weights_out():
    for ram, mode in (("512Gi", "hybrid"), ("64Gi", "mmap")):
        s = spec(model={"variant": "UD-IQ1_S"})
        plan = decide(s, 1, inv(node("n", 1, 24576, memory=ram)), None).plan
        assert plan["mode"] == mode
        r = mf.runtime_resources(s, plan, S)
        want = f"{-(-(plan['cpuMemoryBytes'] + S.runtime_memory_margin_bytes) // (1 << 20))}Mi"
        assert r["limits"]["memory"] == r["requests"]["memory"] == want  # bounded: a limit, equal to the request
        weights = plan["modelBytes"]
        if mode == "mmap":  # the model's pages are reclaimable page cache: not in the limit
            assert plan["cpuMemoryBytes"] < weights / 4
        else:
            assert plan["cpuMemoryBytes"] > weights / 2
    # spec.resources overrides key by key; a larger memory request raises the limit with it
    s = spec(model={"variant": "UD-IQ1_S"}, resources={"requests": {"memory": "900Gi"}})
    plan = decide(s, 1, inv(node("n", 1, 24576)), None).plan
    assert mf.runtime_resources(s, plan, S)["limits"]["memory"] == "900Gi"
    s = spec(model={"variant": "UD-IQ1_S"}, resources={"limits": {"memory": "48Mi"}, "requests": {"memory": "48Mi"}})
    assert mf.runtime_resources(s, plan, S)["limits"]["memory"] == "48Mi"


def test_runtime_has_no_replicas_until_the_cache_is_ready():
    s, plan = _plan(replicas=3)
    assert mf.build_deployment("r1", "ns", "u", s, plan, S, cache_ready=False)["spec"]["replicas"] == 0
    assert mf.build_deployment("r1", "ns", "u", s, plan, S, cache_ready=True)["spec"]["replicas"] == 3


def test_every_pod_meets_the_restricted_profile():
    s, plan = _plan()
    for obj in (mf.build_deployment("r1", "ns", "u", s, plan, S, cache_ready=True),
                mf.build_fetch_job("ns", s, plan, S)):
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"]


def test_fetch_job_fails_fast_on_permanent_errors_and_keeps_secrets_as_references():
    s, plan = _plan(hfTokenSecretRef={"name": "hf", "key": "token"})
    job = mf.build_fetch_job("ns", s, plan, OperatorSettings(hub_endpoint="http://mirror:8080"))
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [2, 3, 4]  # bad input, no space, verify
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert env["HF_ENDPOINT"]["value"] == "http://mirror:8080"
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--connections") + 1] == "8"  # the default; spec.cache.connections sets it
    s, plan = _plan(cache={"connections": 2})
    cmd = mf.build_fetch_job("ns", s, plan, S)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--connections") + 1] == "2"
    assert pinned_to(job["spec"]["template"]["spec"]) == [plan["node"]]


def test_cache_size_auto_covers_download_and_merge():
    s, plan = _plan()
    assert int(mf.cache_size(s, plan).removesuffix("Gi")) * (1 << 30) >= plan["diskBytes"]
    assert mf.cache_size(spec(cache={"size": "900Gi"}), plan) == "900Gi"


# ---------------------------------------------------------------- status

def _desired(plan, error=""):
    return Desired(generation=2, replicas=1, plan=plan, plan_error=error, endpoint="http://r1.ns.svc:8080/v1",
                   selector="x=y")


def _conds(res):
    return {c["type"]: (c["status"], c["reason"]) for c in res.status["conditions"]}


_, PLAN = _plan()
_CACHED = CacheObservation(pvc="c", ready={"bytesTotal": 10})


@pytest.mark.parametrize("desired,cache,runtime,want", [
    pytest.param(_desired(None, "spec.model.variant: unknown"), CacheObservation(), RuntimeObservation(),
                 {"Planned": ("False", "InvalidSpec"), "Degraded": ("True", "InvalidSpec"),
                  "Ready": ("False", "NotPlanned")}, id="invalid-spec"),
    pytest.param(_desired({**PLAN, "fits": False, "reasons": ["nothing fits"]}), CacheObservation(),
                 RuntimeObservation(), {"Planned": ("False", "NoFeasiblePlan"), "Degraded": ("True", "NoFeasiblePlan")},
                 id="nothing-fits"),
    pytest.param(_desired(PLAN), CacheObservation(pvc="c", pvc_phase="Pending"), RuntimeObservation(),
                 {"CacheReady": ("False", "VolumePending"), "Progressing": ("True", "WaitingForCache")},
                 id="volume-pending"),
    pytest.param(_desired(PLAN), CacheObservation(pvc="c", pvc_phase="Bound", job_active=1, progress={
        "bytesDone": 50, "bytesTotal": 200, "phase": "downloading"}), RuntimeObservation(),
                 {"CacheReady": ("False", "Downloading"), "Ready": ("False", "WaitingForCache")}, id="downloading"),
    pytest.param(_desired(PLAN), CacheObservation(pvc="c", job_failed=True, last_message={"error": "no space"}),
                 RuntimeObservation(), {"CacheReady": ("False", "FetchFailed"), "Degraded": ("True", "FetchFailed"),
                                        "Progressing": ("False", "Stalled")}, id="fetch-failed"),
    # a fetch pod failed for want of a hub while the Job retries: said at once, not WaitingForCache
    pytest.param(_desired(PLAN), CacheObservation(pvc="c", pvc_phase="Bound", job_active=1, last_message={
        "phase": "hub-unreachable", "error": "cannot reach the hub at http://hub:8080 to list x"}),
                 RuntimeObservation(), {"CacheReady": ("False", "HubUnreachable"), "Degraded": ("True", "HubUnreachable"),
                                        "Ready": ("False", "WaitingForCache")}, id="hub-unreachable"),
    # ... and while the Job waits out its backoff between pods (none active), still
    pytest.param(_desired(PLAN), CacheObservation(pvc="c", pvc_phase="Bound", job_active=0, last_message={
        "phase": "hub-unreachable", "error": "cannot reach the hub"}),
                 RuntimeObservation(), {"CacheReady": ("False", "HubUnreachable"), "Degraded": ("True", "HubUnreachable")},
                 id="hub-unreachable-backoff"),
    # ... and once a retry downloads again, it is progress
    pytest.param(_desired(PLAN), CacheObservation(pvc="c", pvc_phase="Bound", job_active=1, last_message={
        "phase": "hub-unreachable", "error": "x"}, progress={"phase": "downloading", "bytesDone": 5, "bytesTotal": 9}),
                 RuntimeObservation(), {"CacheReady": ("False", "Downloading"), "Degraded": ("False", "AsExpected")},
                 id="hub-back"),
    # the API server refuses the fetch pod (a RuntimeClass that does not exist): said, and Degraded
    pytest.param(_desired(PLAN), CacheObservation(pvc="c", pvc_phase="Pending", job_blocked='pods "c-x" is '
                                                  'forbidden: pod rejected: RuntimeClass "nope" not found'),
                 RuntimeObservation(), {"CacheReady": ("False", "FetchBlocked"), "Degraded": ("True", "FetchBlocked"),
                                        "Ready": ("False", "WaitingForCache")}, id="fetch-pod-refused"),
    # a placement on a node pool's new node: no cache yet, said so, and not Degraded
    pytest.param(_desired(PLAN), CacheObservation(waiting_node="waiting for a new node of pool gpu"),
                 RuntimeObservation(), {"CacheReady": ("False", "WaitingForNode"), "Degraded": ("False", "AsExpected"),
                                        "Ready": ("False", "WaitingForCache")}, id="waiting-for-node"),
    pytest.param(_desired(PLAN), _CACHED, RuntimeObservation(exists=True, replicas=1,
                                                             waiting="pod x ContainerCreating"),
                 {"Ready": ("False", "RuntimeStarting"), "CacheReady": ("True", "Cached"),
                  "Degraded": ("False", "AsExpected")}, id="runtime-starting"),
    # a pod the scheduler cannot place never sits as Progressing: Degraded, with the scheduler's numbers
    pytest.param(_desired(PLAN), _CACHED, RuntimeObservation(
        exists=True, replicas=1, waiting="pod x Unschedulable: 0/4 nodes", unschedulable="pod x Unschedulable: 0/4 nodes"),
                 {"Ready": ("False", "RuntimeStarting"), "Degraded": ("True", "InsufficientCapacity"),
                  "Progressing": ("False", "Stalled")}, id="runtime-unschedulable"),
    # fewer replicas placed than wanted: Degraded from the plan itself, before any pod exists
    pytest.param(replace(_desired({**PLAN, "shortfall": "2 of 3 replicas placed: no node has room"}), replicas=3),
                 _CACHED, RuntimeObservation(), {"Degraded": ("True", "InsufficientCapacity"),
                                                 "Progressing": ("False", "Stalled")}, id="replicas-short"),
    pytest.param(_desired(PLAN), _CACHED, RuntimeObservation(exists=True, replicas=1, ready_replicas=1,
                                                             updated_replicas=1, up_to_date=True),
                 {"Ready": ("True", "RuntimeReady"), "Degraded": ("False", "AsExpected"),
                  "Progressing": ("False", "Idle")}, id="ready"),
])
def test_status_through_the_stages(desired, cache, runtime, want):
    got = _conds(build_status(desired, cache, runtime, None, "2026-01-01T00:00:00Z"))
    assert {k: got[k] for k in want} == want


def test_replicas_over_nodes_each_get_a_deployment_cache_and_offload_one_service_selects_all():
    s = spec(replicas=3, cache={"accessMode": "ReadWriteOnce"})
    nodes = inv(node("a", 8, 144384, memory="2048Gi"), node("b", 8, 144384, memory="2048Gi"))
    plan = decide(s, 1, nodes, None).plan
    assert (plan["replicas"], plan["placedReplicas"], plan["nodes"]) == (3, 3, "2 nodes") and not plan["shortfall"]
    placements = placement_plans(plan)
    deps = [mf.build_deployment("r1", "ns", "u", s, p, S, cache_ready=True) for p in placements]
    assert [d["metadata"]["name"] for d in deps] == ["r1", "r1-p1"]
    assert [d["spec"]["replicas"] for d in deps] == [2, 1]
    service = mf.build_service("r1", "ns", "u", S)
    for d, p in zip(deps, placements):
        pod = d["spec"]["template"]
        assert pinned_to(pod["spec"]) == [p["node"]]
        assert d["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()  # one Service over all
        c = pod["spec"]["containers"][0]
        assert c["command"][c["command"].index("--n-gpu-layers") + 1] == str(p["nGpuLayers"])
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(p["gpus"])
        assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == mf.cache_ref(s, p)[0]
    # no two Deployments select each other's pods
    sel = [d["spec"]["selector"]["matchLabels"] for d in deps]
    assert not sel[0].items() <= deps[1]["spec"]["template"]["metadata"]["labels"].items()
    # ReadWriteOnce: a cache per node; ReadWriteMany: one for all
    assert len({mf.cache_ref(s, p)[0] for p in placements}) == 2
    rwx = spec(replicas=3, cache={"accessMode": "ReadWriteMany"})
    assert len({mf.cache_ref(rwx, p)[0] for p in placements}) == 1
    # a placement whose cache is not ready yet waits at 0 replicas; spec.replicas 0 stops them all
    assert mf.build_deployment("r1", "ns", "u", s, placements[1], S, cache_ready=False)["spec"]["replicas"] == 0
    assert mf.build_deployment("r1", "ns", "u", spec(replicas=0), placements[0], S, cache_ready=True)["spec"]["replicas"] == 0


def test_scaling_keeps_placements_and_the_pod_template_of_each():
    nodes = inv(node("a", 8, 144384, memory="2048Gi"), node("b", 8, 144384, memory="2048Gi"),
                node("c", 8, 144384, memory="2048Gi"))
    two = decide(spec(replicas=2), 1, nodes, None).plan
    four = decide(spec(replicas=4), 2, nodes, two)
    assert four.changed and four.why == "re-planned: the spec changed"
    old, new = placement_plans(two), placement_plans(four.plan)
    assert [(p["id"], p["node"], p["nGpuLayers"]) for p in new[:2]] == [(p["id"], p["node"], p["nGpuLayers"]) for p in old]
    for o, n in zip(old, new):  # the same pod template: growing restarts nothing
        a = mf.build_deployment("r1", "ns", "u", spec(replicas=2), o, S, cache_ready=True)
        b = mf.build_deployment("r1", "ns", "u", spec(replicas=4), n, S, cache_ready=True)
        assert a["spec"]["template"] == b["spec"]["template"]
    back = decide(spec(replicas=2), 3, nodes, four.plan).plan
    assert [p["id"] for p in placement_plans(back)] == [p["id"] for p in old]  # the newest went first
    # the same generation and nodes: kept as it is, no news
    assert not decide(spec(replicas=4), 2, nodes, four.plan).changed


def test_combined_runtime_counts_every_placement_and_keeps_the_worst_offload():
    a = RuntimeObservation(exists=True, replicas=2, ready_replicas=2, updated_replicas=2, up_to_date=True,
                           offloaded_layers=62)
    b = RuntimeObservation(exists=True, replicas=1, ready_replicas=0, updated_replicas=1, up_to_date=True,
                           offloaded_layers=10, waiting="pod y ContainerCreating")
    rt = combine([({"nGpuLayers": 62}, a), ({"nGpuLayers": 30}, b)])
    assert (rt.replicas, rt.ready_replicas, rt.updated_replicas, rt.up_to_date) == (3, 2, 3, True)
    assert (rt.offloaded_layers, rt.planned_layers, rt.waiting) == (10, 30, "pod y ContainerCreating")
    res = build_status(replace(_desired(PLAN), replicas=3), _CACHED, rt, None, "t0")
    assert res.status["ready"] == "2/3" and _conds(res)["Ready"] == ("False", "RuntimeStarting")


def test_fewer_layers_offloaded_than_planned_is_never_plain_ready():
    from dataclasses import replace

    assert PLAN["nGpuLayers"] > 0
    served = RuntimeObservation(exists=True, replicas=1, ready_replicas=1, updated_replicas=1, up_to_date=True,
                                offloaded_layers=0)
    res = build_status(_desired(PLAN), _CACHED, served, None, "t0")
    got = _conds(res)
    assert got["Ready"] == ("True", "ReadyOffloadMismatch") and got["Degraded"] == ("True", "OffloadMismatch")
    assert f"offloaded 0 layers to GPU where the plan has {PLAN['nGpuLayers']}" in res.condition("Degraded")["message"]
    assert res.status["runtime"] == {"offloadedLayers": 0}
    assert "OffloadMismatch" in {e.reason for e in res.events}
    # on a dev cluster whose GPUs are simulated (R1_DEV_SIMULATED_GPUS) the same is expected, and said
    got = _conds(build_status(replace(_desired(PLAN), simulated_gpus=True), _CACHED, served, None, "t0"))
    assert got["Ready"] == ("True", "ReadySimulatedGPUs") and got["Degraded"] == ("False", "AsExpected")
    # all layers offloaded: plain Ready
    full = replace(served, offloaded_layers=PLAN["nGpuLayers"])
    assert _conds(build_status(_desired(PLAN), _CACHED, full, None, "t0"))["Ready"] == ("True", "RuntimeReady")


def test_a_dev_only_boolean_setting_parses_true_and_false_and_refuses_the_rest():
    assert OperatorSettings.from_env({"R1_DEV_SIMULATED_GPUS": "true"}).dev_simulated_gpus is True
    assert OperatorSettings.from_env({"R1_DEV_SIMULATED_GPUS": "0"}).dev_simulated_gpus is False
    assert OperatorSettings.from_env({}).dev_simulated_gpus is False
    with pytest.raises(ValueError, match="R1_DEV_SIMULATED_GPUS='maybe': expected true or false"):
        OperatorSettings.from_env({"R1_DEV_SIMULATED_GPUS": "maybe"})


def test_downloading_shows_percent_for_kubectl_get():
    _, plan = _plan()
    res = build_status(_desired(plan), CacheObservation(pvc="c", job_active=1, progress={"bytesDone": 50, "bytesTotal": 200}),
                       RuntimeObservation(), None, "t0")
    assert res.status["cache"]["display"] == "25%" and res.status["cache"]["percent"] == 25.0
    assert "endpoint" not in res.status


def test_transition_times_and_events_only_change_on_transitions():
    _, plan = _plan()
    obs = (CacheObservation(pvc="c", job_active=1), RuntimeObservation())
    first = build_status(_desired(plan), *obs, None, "t0")
    assert {e.reason for e in first.events} >= {"Planned", "Downloading"}
    again = build_status(_desired(plan), *obs, first.status, "t1")
    assert again.events == [] and {c["lastTransitionTime"] for c in again.status["conditions"]} == {"t0"}
    done = build_status(_desired(plan), CacheObservation(pvc="c", ready={}), RuntimeObservation(), first.status, "t2")
    cache = next(c for c in done.status["conditions"] if c["type"] == "CacheReady")
    assert cache["lastTransitionTime"] == "t2" and any(e.reason == "Cached" for e in done.events)


def test_a_refused_child_degrades_with_the_api_message():
    _, plan = _plan()
    d = Desired(generation=1, replicas=1, plan=plan, apply_error="creating or updating a child failed: range is full")
    res = build_status(d, CacheObservation(), RuntimeObservation(), None, "t0")
    assert _conds(res)["Degraded"] == ("True", "ApplyFailed")
    assert "range is full" in res.condition("Degraded")["message"]
    assert any(e.type == "Warning" and e.reason == "ApplyFailed" for e in res.events)


def test_network_policies_open_the_api_to_the_namespace_and_allow_from_and_metrics_to_monitoring_only():
    s, plan = _plan(network={"allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "web"}}},
                                           {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}]})
    settings = OperatorSettings(monitoring_namespace="prom")
    runtime, fetch, provision = mf.build_network_policies("r1", "ns", "u", s, plan, settings)
    dep = mf.build_deployment("r1", "ns", "u", s, plan, settings, cache_ready=True)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert set(runtime["spec"]["podSelector"]["matchLabels"].items()) <= set(pod_labels.items())
    assert runtime["spec"]["policyTypes"] == ["Ingress"]
    api, metrics = runtime["spec"]["ingress"]
    assert api["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert api["from"] == [{"podSelector": {}}, {"namespaceSelector": {"matchLabels": {"team": "web"}}},
                           {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}]
    assert metrics == {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prom"}}}],
                       "ports": [{"port": "metrics", "protocol": "TCP"}]}
    # the named ports exist on the container, and the runtime listens on them
    c = dep["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": settings.runtime_port, "metrics": settings.runtime_metrics_port}
    assert c["command"][c["command"].index("--metrics-port") + 1] == str(settings.runtime_metrics_port)
    # the fetch Job's pods: selected, and nothing let in
    job = mf.build_fetch_job("ns", s, plan, settings)
    (expr,) = fetch["spec"]["podSelector"]["matchExpressions"]
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    assert expr["operator"] == "In" and job_labels[expr["key"]] in expr["values"]
    assert fetch["spec"]["policyTypes"] == ["Ingress"] and fetch["spec"]["ingress"] == []
    # the provision pods of a plan on a node pool's new node (planning.pools): selected, and nothing let in
    prov_labels = mf.build_provision("r1", "ns", "u", s, plan, settings)["spec"]["template"]["metadata"]["labels"]
    assert set(provision["spec"]["podSelector"]["matchLabels"].items()) <= set(prov_labels.items())
    assert not set(provision["spec"]["podSelector"]["matchLabels"].items()) <= set(pod_labels.items())
    assert provision["spec"]["policyTypes"] == ["Ingress"] and provision["spec"]["ingress"] == []


def test_fetch_memory_is_bounded_and_spec_cache_resources_overrides_it():
    s, plan = _plan()
    r = mf.build_fetch_job("ns", s, plan, S)["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert r["limits"]["memory"] == mf.FETCH_MEMORY_LIMIT
    from r1_operator.api import contract
    from r1_operator.planning.inventory import parse_quantity
    assert parse_quantity(r["limits"]["memory"], "memory") >= 4 * contract.MERGE_WINDOW_BYTES
    s, plan = _plan(cache={"resources": {"requests": {"memory": "3Gi"}}})
    assert mf.fetch_resources(s)["limits"]["memory"] == "3Gi"  # raised with the request
    s, plan = _plan(cache={"resources": {"limits": {"memory": "1Gi"}}})
    assert mf.fetch_resources(s) == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}


def test_a_rate_limited_fetch_says_so_in_cache_ready_and_status_cache():
    limited = {"waitSeconds": 55, "source": 'RateLimit: "api";r=0;t=55', "by": "the hub", "until": "T"}
    r = build_status(_desired(PLAN), CacheObservation(pvc="c", pvc_phase="Bound", job_active=1, progress={
        "phase": "downloading", "bytesDone": 5, "bytesTotal": 9, "rateLimited": limited}), RuntimeObservation(), None,
        "2026-01-01T00:00:00Z")
    cond = next(c for c in r.status["conditions"] if c["type"] == "CacheReady")
    assert cond["reason"] == "Downloading" and "the hub rate-limits it: waiting 55 s" in cond["message"]
    assert r.status["cache"]["rateLimited"] == limited
