"""A runtime whose plan offloads to a GPU that its container cannot see, on a real node: the runtime image here is
the CPU build of llama.cpp, as a pod gets from the CPU image, a missing runtime class or a node without the NVIDIA
container runtime. The node's GPU is the dev cluster's simulated one (an extended resource), and the annotation
`r1.inference.dev/dev-check-gpus: "true"` (dev clusters only) turns off the dev mock that otherwise lets a runtime
on a simulated GPU load every layer on the CPU: the runtime checks llama.cpp's devices as on a real cluster."""

from __future__ import annotations

import pytest
from r1_devtools.waiting import wait_for

from r1_operator.api.contract import Exit
from r1_operator.builders import names
from r1_operator.dev import realnode

pytestmark = pytest.mark.cluster
NAME = "r1-nogpu"


def test_a_gpu_the_runtime_cannot_see_is_degraded_gpu_unavailable_with_advice_and_never_corrected(real_kube, real_ns,
                                                                                                 real_hub):
    kube, ns = real_kube, real_ns
    kube.apply({"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment",
                "metadata": {"name": NAME, "annotations": {names.ANN_DEV_GPU_CHECK: "true"}},
                "spec": {"model": {"variant": "UD-IQ1_S"},
                         "inference": {"ctxSize": 512, "parallel": 1, "canary": False},
                         "resources": {"requests": {"cpu": "250m"}},
                         "scheduling": {"nodeSelector": {realnode.REAL_LABEL: "true",
                                                         "kubernetes.io/hostname": realnode.node_name(0)}}}}, ns)
    kube.wait_condition(ns, NAME, "Planned", timeout=60)
    plan = kube.r1d(ns, NAME)["status"]["plan"]
    assert plan["gpus"] == 1 and plan["nGpuLayers"] > 0

    def degraded():
        st = kube.r1d(ns, NAME)["status"]
        c = next((x for x in st.get("conditions") or [] if x["type"] == "Degraded"), {})
        return c if c.get("reason") == "GPUUnavailable" else None

    cond = wait_for(degraded, 300, "Degraded/GPUUnavailable")
    assert cond["status"] == "True"
    assert "found 0 of the 1 GPU(s)" in cond["message"] and "no GPU backend" in cond["message"]
    assert "runtime.gpuImage" in cond["message"]
    (pod,) = kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector(NAME)))["items"]
    (cs,) = pod["status"]["containerStatuses"]
    term = (cs.get("state") or {}).get("terminated") or cs["lastState"]["terminated"]
    assert term["exitCode"] == Exit.GPU_UNAVAILABLE
    # never an out-of-memory correction: the plan stays as it was, and no PlanCorrected event is posted
    st = kube.r1d(ns, NAME)["status"]
    assert not st["plan"].get("corrections") and st["plan"]["nGpuLayers"] == plan["nGpuLayers"]
    events = kube.json("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={NAME}")["items"]
    assert not [e for e in events if e["reason"] == "PlanCorrected"]
