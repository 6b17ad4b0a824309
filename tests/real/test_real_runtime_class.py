"""spec.scheduling.runtimeClassName on a real node: its containerd has a second runtime handler, as the GPU
Operator adds "nvidia" (realnode.ALT_HANDLER: runc behind a wrapper that edits each container's OCI spec, as
nvidia-container-runtime does; it adds realnode.ALT_HANDLER_ENV), and the dev cluster has its RuntimeClass. The
fetch Job and the runtime both run under it; a RuntimeClass that does not exist is named in the status."""

from __future__ import annotations

import pytest
from r1_devtools.waiting import wait_for

from r1_operator.builders import names
from r1_operator.dev import realnode

pytestmark = pytest.mark.cluster


def _r1d(name: str, runtime_class: str) -> dict:
    return {"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "metadata": {"name": name},
            "spec": {"model": {"variant": "UD-IQ1_S"}, "inference": {"ctxSize": 512, "parallel": 1, "canary": False},
                     "resources": {"requests": {"cpu": "250m"}},
                     "scheduling": {"runtimeClassName": runtime_class,
                                    "nodeSelector": {realnode.REAL_LABEL: "true",
                                                     "kubernetes.io/hostname": realnode.node_name(0)}}}}


def test_the_runtime_class_handler_runs_the_fetch_and_the_runtime(real_kube, real_ns, real_hub):
    kube, ns, name = real_kube, real_ns, "r1-alt"
    kube.apply(_r1d(name, realnode.ALT_HANDLER), ns)
    kube.wait_condition(ns, name, "Ready", timeout=300)
    (pod,) = kube.json("get", "pods", "-n", ns, "-l", names.selector_string(names.selector(name)))["items"]
    assert pod["spec"]["runtimeClassName"] == realnode.ALT_HANDLER
    # the runtime's own environment (an exec'd process gets the one containerd stored, not the bundle's)
    env = kube.run("exec", "-n", ns, pod["metadata"]["name"], "-c", "runtime", "--", "python3", "-c",
                   "print(open('/proc/1/environ').read().replace(chr(0), chr(10)))", check=False)
    assert f"{realnode.ALT_HANDLER_ENV}={realnode.ALT_HANDLER}" in env.stdout.splitlines(), env.stdout + env.stderr
    (job,) = kube.json("get", "jobs", "-n", ns)["items"]
    assert job["spec"]["template"]["spec"]["runtimeClassName"] == realnode.ALT_HANDLER
    assert job["status"].get("succeeded") == 1


def test_a_runtime_class_that_does_not_exist_is_named_in_the_status(real_kube, real_ns, real_hub):
    kube, ns, name = real_kube, real_ns, "r1-norc"
    kube.apply(_r1d(name, "not-installed"), ns)

    def said():
        c = kube.condition(ns, name, "CacheReady")
        return c if "not-installed" in c.get("message", "") else None

    cond = wait_for(said, 90, "CacheReady naming the RuntimeClass")
    assert cond["status"] == "False" and "RuntimeClass" in cond["message"]
    assert "runtimeClassName" in cond["message"]
    degraded = kube.condition(ns, name, "Degraded")
    assert degraded["status"] == "True" and "not-installed" in degraded["message"]
