"""A runtime that runs out of memory is corrected, on a real node: a load out of GPU memory, and a container
OOMKilled by the kernel at its memory limit.

No GPU exists here, so the GPU is a mock (dev clusters only, named so): the R1Deployment's annotation
`r1.inference.dev/dev-simulated-gpu-free-bytes` gives its simulated GPUs 16 GiB free, and the runtime in its real
container fails the first load as llama.cpp fails (the CUDA allocator's log lines, classified by the real code,
exit OUT_OF_MEMORY with the termination message). The operator reads the message from the pod's status, records
a correction (the bytes missing plus a margin) in status.plan.corrections, posts an Event and re-plans with fewer
GPU layers on that node; the second try fits and serves.

The memory limit is the plan's resident bytes plus the operator's margin. The dev hub's miniature model uses far
less than the plan of the real variant predicts, so a second mock (dev only, named so) stands in for a real
model's host memory: the annotation `r1.inference.dev/dev-simulated-host-bytes` makes the runtime hold that many
written bytes from before its load. At the limit the container's memory cgroup kills it for real (OOMKilled, exit
137, from the kubelet); the operator raises the memory for that node (status.plan.corrections, an Event) and the
runtime with the raised limit serves.
"""

from __future__ import annotations

import pytest
from r1_devtools.waiting import wait_for

from r1_operator.api.types import R1DeploymentSpec
from r1_operator.builders import manifests as mf
from r1_operator.builders import names
from r1_operator.dev import realnode
from r1_operator.planning import corrections as fx
from r1_operator.planning.decide import decide, placement_plans
from r1_operator.planning.inventory import inventory
from r1_operator.settings import OperatorSettings

pytestmark = pytest.mark.cluster
NAME = "r1-fix"
GiB, MiB = 1 << 30, 1 << 20


def _plan_corrected_events(kube, ns: str, name: str) -> list[dict]:
    events = kube.json("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
    return [e for e in events if e["reason"] == "PlanCorrected"]


def _serving_pod(kube, ns: str, name: str) -> dict:
    """The one runtime pod left once the corrected plan serves."""
    (pod,) = [p for p in kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector(name)))["items"]
              if not p["metadata"].get("deletionTimestamp")]
    return pod


def test_a_load_out_of_gpu_memory_is_replanned_with_fewer_layers_and_the_second_try_serves(real_kube, real_ns,
                                                                                           real_hub):
    kube, ns = real_kube, real_ns
    free = 16 * GiB
    kube.apply({"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment",
                "metadata": {"name": NAME, "annotations": {names.ANN_DEV_GPU_FREE: str(free)}},
                "spec": {"model": {"variant": "UD-IQ1_S"},
                         "inference": {"ctxSize": 512, "parallel": 1, "canary": False},
                         "resources": {"requests": {"cpu": "250m"}},
                         # one node: with two equal ones, the re-plan would move to the other, as it should
                         "scheduling": {"nodeSelector": {realnode.REAL_LABEL: "true",
                                                         "kubernetes.io/hostname": realnode.node_name(0)}}}}, ns)
    kube.wait_condition(ns, NAME, "Planned", timeout=60)
    first = kube.r1d(ns, NAME)["status"]["plan"]
    on_gpu0 = next(d["total"] for d in first["memory"] if d["device"] == "gpu0")
    assert on_gpu0 > free  # the plan, made for 24 GiB GPUs, does not fit what the mock leaves free

    plan = wait_for(lambda: (kube.r1d(ns, NAME)["status"].get("plan") or {}).get("corrections") and
                    kube.r1d(ns, NAME)["status"]["plan"], 300, "a correction in status.plan")
    kube.run("wait", "--for=condition=Ready", f"r1d/{NAME}", "-n", ns, "--timeout=300s", timeout=330)
    st = kube.r1d(ns, NAME)["status"]
    assert len(st["plan"]["corrections"]) == 1, st["plan"]["corrections"]  # one correction: the second try fitted
    (c,) = st["plan"]["corrections"]
    assert (c["node"], c["device"], c["what"], c["freeBytes"]) == (first["node"], "gpu0", "model weights", free)
    assert c["plannedBytes"] == on_gpu0 and c["limitBytes"] < free
    after = st["plan"]
    assert after["node"] == first["node"] and after["nGpuLayers"] < first["nGpuLayers"]
    assert next(d["total"] for d in after["memory"] if d["device"] == "gpu0") <= c["limitBytes"]
    planned = next(x for x in st["conditions"] if x["type"] == "Planned")
    assert planned["message"].startswith(f"re-planned: the runtime on {first['node']} ran out of GPU memory")
    assert plan["corrections"] == st["plan"]["corrections"]
    fixed = _plan_corrected_events(kube, ns, NAME)
    assert len(fixed) == 1 and fixed[0]["type"] == "Warning" and "16384 MiB free" in fixed[0]["message"]
    # the pod that serves ran the corrected plan, with the same mock of a GPU
    pod = _serving_pod(kube, ns, NAME)
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--n-gpu-layers") + 1] == str(after["nGpuLayers"])
    assert cmd[cmd.index("--dev-simulated-gpu-free-bytes") + 1] == str(free)


def test_a_runtime_oomkilled_at_its_memory_limit_gets_more_memory_and_serves(real_kube, real_ns, real_hub):
    kube, ns, name = real_kube, real_ns, "r1-mem"
    spec = {"model": {"variant": "UD-IQ1_S"}, "inference": {"ctxSize": 512, "parallel": 1, "canary": False},
            "resources": {"requests": {"cpu": "250m"}},
            "scheduling": {"nodeSelector": {realnode.REAL_LABEL: "true",
                                            "kubernetes.io/hostname": realnode.node_name(0)}}}
    # the limit the operator will give (the same pure planner and builder, on the same nodes): the mock holds
    # exactly that much, so the runtime's own memory is beyond it
    nodes = inventory(kube.json("get", "nodes")["items"], [], "nvidia.com/gpu")
    expected = placement_plans(decide(R1DeploymentSpec.model_validate(spec), 1, nodes, None).plan)[0]
    limit = -(-mf.runtime_memory_bytes(expected, OperatorSettings()) // MiB) * MiB
    kube.apply({"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment",
                "metadata": {"name": name, "annotations": {names.ANN_DEV_HOST_BYTES: str(limit)}}, "spec": spec}, ns)
    kube.wait_condition(ns, name, "Planned", timeout=60)
    first = kube.r1d(ns, name)["status"]["plan"]
    assert (first["node"], first["cpuMemoryBytes"]) == (expected["node"], expected["cpuMemoryBytes"])
    killed: list[dict] = []

    def corrected():
        for pod in kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector(name)))["items"]:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                for state in (cs.get("state"), cs.get("lastState")):
                    term = (state or {}).get("terminated") or {}
                    if term.get("reason") == "OOMKilled":
                        res = pod["spec"]["containers"][0]["resources"]
                        killed.append({**term, "limit": res["limits"]["memory"], "request": res["requests"]["memory"]})
        return (kube.r1d(ns, name)["status"].get("plan") or {}).get("corrections")

    wait_for(corrected, 300, "a memory correction in status.plan")
    # the kernel's OOM killer, for real, at the limit the operator gave
    assert killed and killed[0]["exitCode"] == 137 and killed[0]["limit"] == killed[0]["request"] == f"{limit // MiB}Mi"
    kube.run("wait", "--for=condition=Ready", f"r1d/{name}", "-n", ns, "--timeout=300s", timeout=330)
    st = kube.r1d(ns, name)["status"]
    (c,) = st["plan"]["corrections"]  # one raise was enough: the runtime itself is far below it
    raise_ = -(-max(int(fx.MEMORY_MARGIN * limit), fx.MIN_MEMORY_RAISE) // MiB) * MiB
    assert (c["kind"], c["node"], c["device"], c["plannedBytes"]) == ("memory", first["node"], "cpu", limit)
    assert c["bytes"] == raise_ and c["memoryBytes"] == limit + raise_
    after = st["plan"]
    assert (after["node"], after["nGpuLayers"], after["mode"]) == (first["node"], first["nGpuLayers"], first["mode"])
    planned = next(x for x in st["conditions"] if x["type"] == "Planned")
    assert planned["message"].startswith(f"re-planned: the runtime on {first['node']} was OOMKilled at its memory "
                                         f"limit of {limit // MiB} MiB")
    assert next(x for x in st["conditions"] if x["type"] == "Degraded")["status"] == "False"
    fixed = _plan_corrected_events(kube, ns, name)
    assert len(fixed) == 1 and fixed[0]["type"] == "Warning" and "OOMKilled" in fixed[0]["message"]
    # the pod that serves has the raised memory, and still holds what the mock stands for
    pod = _serving_pod(kube, ns, name)
    res = pod["spec"]["containers"][0]["resources"]
    assert res["limits"]["memory"] == res["requests"]["memory"] == f"{c['memoryBytes'] // MiB}Mi"
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--dev-simulated-host-bytes") + 1] == str(limit)
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["ready"] and cs["restartCount"] == 0
