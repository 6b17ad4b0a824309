"""Operator–runtime contract: run exactly what the operator rendered, as local processes.

The cache Job's container command and env, and the runtime Deployment's, are
read back from the API server and executed here against the dev hub's
miniature R1 split set. Two substitutions stand in for the kubelet: the
volume's mountPath becomes a local directory, and the Secret references
become the Secret's values. The runtime also gets a free port instead of the
container port, since many tests share this machine.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from r1_devtools.kit import BIN
from r1_devtools.waiting import wait_for
from openai import OpenAI

from r1_operator.dev.processes import free_port

SPEC = {
    "apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment",
    "metadata": {"name": "r1-contract"},
    "spec": {
        "model": {"variant": "UD-IQ1_S"},
        "inference": {"ctxSize": 1024, "threads": 2, "parallel": 2, "canary": False, "stopOnLoop": True},
        "scheduling": {"nodeSelector": {"kubernetes.io/hostname": "cpu-only"}},
        "apiKeySecretRef": {"name": "r1-api", "key": "token"},
    },
}
API_KEY = "sk-contract-7f3a"


def _local(container: dict, pod: dict, kube, ns: str, cache_dir: Path) -> tuple[list[str], dict[str, str]]:
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    (cache_mount,) = [path for path, vol in mounts.items() if vol in claims]
    cmd = [a.replace(cache_mount, str(cache_dir)) if a.startswith(cache_mount) else a for a in container["command"]]
    assert cmd[0] == "r1-runtime", cmd
    env = {"PATH": f"{BIN}:{os.environ['PATH']}"}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            secret = kube.json("get", "secret", ref["name"], "-n", ns)
            env[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    env["HOME"] = str(cache_dir.parent)  # the pod's HOME is an emptyDir at /tmp
    return cmd, env


@pytest.mark.cluster
@pytest.mark.llama
def test_rendered_fetch_and_serve_commands_run_and_serve(kube, e2e_ns, tmp_path):
    kube.run("create", "secret", "generic", "r1-api", "-n", e2e_ns, f"--from-literal=token={API_KEY}")
    kube.apply(SPEC, e2e_ns)
    kube.wait_condition(e2e_ns, "r1-contract", "Planned", timeout=30)
    plan = kube.r1d(e2e_ns, "r1-contract")["status"]["plan"]
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()

    (job,) = kube.json("get", "jobs", "-n", e2e_ns)["items"]
    pod = job["spec"]["template"]["spec"]
    cmd, env = _local(pod["containers"][0], pod, kube, e2e_ns, cache_dir)
    assert env["HF_ENDPOINT"].startswith("http://127.0.0.1:")  # the operator's hub setting reached the Job
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    merged = cache_dir / "DeepSeek-R1-UD-IQ1_S" / "DeepSeek-R1-UD-IQ1_S.gguf"
    assert merged.is_file() and not list(cache_dir.rglob("*-of-*.gguf"))  # merged, shards deleted

    kube.run("wait", "--for=condition=Ready", "r1d/r1-contract", "-n", e2e_ns, "--timeout=120s")
    dep = kube.json("get", "deploy", "r1-contract", "-n", e2e_ns)
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    cmd, env = _local(container, pod, kube, e2e_ns, cache_dir)
    assert cmd[cmd.index("--n-gpu-layers") + 1] == str(plan["nGpuLayers"]) == "0"
    assert cmd[cmd.index("--threads") + 1] == "2" and container["resources"]["requests"]["cpu"] == "2"
    port = free_port()
    cmd[cmd.index("--port") + 1] = str(port)
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    assert env["R1_API_KEY"] == API_KEY
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        ready = container["readinessProbe"]["httpGet"]["path"]
        live = container["livenessProbe"]["httpGet"]["path"]

        def is_ready():
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(base + ready, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(is_ready, 120, "the rendered runtime to pass its readiness probe")
        assert httpx.get(base + live, timeout=2).status_code == 200
        assert container["startupProbe"]["httpGet"]["path"] == ready

        client = OpenAI(base_url=base + "/v1", api_key=API_KEY)
        (model,) = client.models.list().data
        assert model.id == "r1-contract"  # --alias is the R1Deployment's name
        out = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=8)
        assert out.usage.completion_tokens > 0
        assert httpx.get(base + "/v1/models", timeout=2).status_code == 401  # the Secret's key protects the API
        metrics = httpx.get(base + "/metrics", timeout=2).text
        assert 'variant="UD-IQ1_S"' in metrics
        # SIGTERM (what the kubelet sends after preStop) drains and exits 0 within the pod's grace period
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(pod["terminationGracePeriodSeconds"]) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        print((tmp_path / "serve.log").read_text()[-3000:], file=sys.stderr)
