"""A runtime that offloads fewer layers than planned is never shown as plain Ready.

The real nodes run the CPU build of llama.cpp, and their GPUs are simulated, so every layer the plan puts on a GPU
stays on the CPU: exactly what a CPU-only image on a real GPU node does. An operator without the dev-only
R1_DEV_SIMULATED_GPUS reads the runtime's startup line and reports the shortfall: Ready with reason
ReadyOffloadMismatch, and Degraded, reason OffloadMismatch, with both figures.
"""

from __future__ import annotations

import os

import pytest
from r1_devtools.kit import RUNTIME_IMAGE, drop_namespace, make_namespace, start_operator
from r1_devtools.waiting import wait_for

from r1_operator.dev import realnode

pytestmark = pytest.mark.cluster


def test_an_offload_shortfall_is_degraded_not_ready(real_kube, real_hub, tmp_path):
    kube = real_kube
    ns = make_namespace(kube, f"nosim-{os.getpid()}", {"pod-security.kubernetes.io/enforce": "restricted"})
    op = start_operator(kube.kubeconfig, tmp_path / "operator.log", "--standalone", "--namespace", "nosim-*",
                        env={"R1_HUB_ENDPOINT": real_hub[0], "R1_RUNTIME_IMAGE": RUNTIME_IMAGE})
    try:
        kube.apply({"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "metadata": {"name": "r1-gpu"},
                    "spec": {"model": {"variant": "UD-IQ1_S"},
                             "inference": {"ctxSize": 1024, "parallel": 1, "canary": False},
                             "resources": {"requests": {"cpu": "250m"}},
                             "scheduling": {"nodeSelector": {realnode.REAL_LABEL: "true",
                                                             "kubernetes.io/hostname": "real-0"}}}}, ns)
        cond = kube.wait_condition(ns, "r1-gpu", "Degraded", "True", timeout=240, reason="OffloadMismatch")
        plan = kube.r1d(ns, "r1-gpu")["status"]["plan"]
        assert plan["nGpuLayers"] > 0
        assert f"llama.cpp offloaded 0 layers to GPU where the plan has {plan['nGpuLayers']}" in cond["message"]
        assert "CPU-only runtime image" in cond["message"]
        ready = kube.condition(ns, "r1-gpu", "Ready")
        assert ready["status"] == "True" and ready["reason"] == "ReadyOffloadMismatch"  # it serves, not as planned
        assert kube.r1d(ns, "r1-gpu")["status"]["runtime"]["offloadedLayers"] == 0
        wait_for(lambda: "OffloadMismatch" in kube.run("get", "events", "-n", ns).stdout, 30, "the Event")
    finally:
        drop_namespace(kube, ns)
        op.stop()
