"""A runtime whose plan offloads to a GPU that its container cannot see, on a real node, with an operator configured
as on a real cluster (none of the dev-only settings, so no dev mock of a GPU is rendered).

The real nodes run the CPU build of llama.cpp, as a pod gets from the CPU image, a missing runtime class or a node
without the NVIDIA container runtime, and their GPUs are simulated (an extended resource). The runtime checks
llama.cpp's devices before loading: it exits GPU_UNAVAILABLE with a termination message naming the cause, rather
than serving every layer from the CPU, and the operator says Degraded, reason GPUUnavailable, with advice, and never
corrects the plan as if it were an out-of-memory.
"""

from __future__ import annotations

import os

import pytest
from r1_devtools.kit import RUNTIME_IMAGE, drop_namespace, make_namespace, start_operator

from r1_operator.api.contract import Exit
from r1_operator.builders import names
from r1_operator.dev import realnode

pytestmark = pytest.mark.cluster
NAME = "r1-gpu"


def test_a_gpu_the_runtime_cannot_see_is_degraded_gpu_unavailable_with_advice_and_never_corrected(real_kube, real_hub,
                                                                                                 tmp_path):
    kube = real_kube
    ns = make_namespace(kube, f"nosim-{os.getpid()}", {"pod-security.kubernetes.io/enforce": "restricted"})
    op = start_operator(kube.kubeconfig, tmp_path / "operator.log", "--standalone", "--namespace", "nosim-*",
                        env={"R1_HUB_ENDPOINT": real_hub[0], "R1_RUNTIME_IMAGE": RUNTIME_IMAGE})
    try:
        kube.apply({"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "metadata": {"name": NAME},
                    "spec": {"model": {"variant": "UD-IQ1_S"},
                             "inference": {"ctxSize": 1024, "parallel": 1, "canary": False},
                             "resources": {"requests": {"cpu": "250m"}},
                             "scheduling": {"nodeSelector": {realnode.REAL_LABEL: "true",
                                                             "kubernetes.io/hostname": realnode.node_name(0)}}}},
                   ns)
        kube.wait_condition(ns, NAME, "Planned", timeout=60)
        plan = kube.r1d(ns, NAME)["status"]["plan"]
        assert plan["gpus"] >= 1 and plan["nGpuLayers"] > 0

        cond = kube.wait_condition(ns, NAME, "Degraded", "True", timeout=300, reason="GPUUnavailable")
        assert f"found 0 of the {plan['gpus']} GPU(s)" in cond["message"] and "no GPU backend" in cond["message"]
        assert "runtime.gpuImage" in cond["message"]
        (pod,) = kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector(NAME)))["items"]
        (cs,) = pod["status"]["containerStatuses"]
        term = (cs.get("state") or {}).get("terminated") or cs["lastState"]["terminated"]
        assert term["exitCode"] == Exit.GPU_UNAVAILABLE
        assert kube.condition(ns, NAME, "Ready").get("status") != "True"  # it never served from the CPU
        # never an out-of-memory correction: the plan stays as it was, and no PlanCorrected event is posted
        st = kube.r1d(ns, NAME)["status"]
        assert not st["plan"].get("corrections") and st["plan"]["nGpuLayers"] == plan["nGpuLayers"]
        events = kube.json("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={NAME}")["items"]
        assert not [e for e in events if e["reason"] == "PlanCorrected"]
    finally:
        drop_namespace(kube, ns)
        op.stop()
