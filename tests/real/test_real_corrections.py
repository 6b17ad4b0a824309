"""A load that runs out of GPU memory is corrected, on a real node.

No GPU exists here, so the GPU is a mock (dev clusters only, named so): the R1Deployment's annotation
`r1.inference.dev/dev-simulated-gpu-free-bytes` gives its simulated GPUs 16 GiB free, and the runtime in its real
container fails the first load as llama.cpp fails (the CUDA allocator's log lines, classified by the real code,
exit OUT_OF_MEMORY with the termination message). The operator reads the message from the pod's status, records
a correction (the bytes missing plus a margin) in status.plan.corrections, posts an Event and re-plans with fewer
GPU layers on that node; the second try fits and serves.
"""

from __future__ import annotations

import pytest
from r1_devtools.waiting import wait_for

from r1_operator.builders import names
from r1_operator.dev import realnode

pytestmark = pytest.mark.cluster
NAME = "r1-fix"
GiB = 1 << 30


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
    events = kube.json("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={NAME}")["items"]
    fixed = [e for e in events if e["reason"] == "PlanCorrected"]
    assert len(fixed) == 1 and fixed[0]["type"] == "Warning" and "16384 MiB free" in fixed[0]["message"]
    # the pod that serves ran the corrected plan, with the same mock of a GPU
    pods = [p for p in kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector(NAME)))["items"]
            if not p["metadata"].get("deletionTimestamp")]
    (pod,) = pods
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--n-gpu-layers") + 1] == str(after["nGpuLayers"])
    assert cmd[cmd.index("--dev-simulated-gpu-free-bytes") + 1] == str(free)
