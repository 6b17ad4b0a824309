"""The main flow on the local cluster (run by `make demo` after `make setup`).

1. start the local cluster: a real control plane, one real worker node (kubelet + containerd) and
   kwok nodes that simulate GPU machines
2. serve a miniature R1 split set from a dev hub on this host, install the CRDs, start the operator
3. apply a GPU-shaped example (planned onto a simulated node) and examples/real-node.yaml
4. the real node fetches, verifies and merges the model into its volume and serves it in a real
   container; ask it one question through the in-cluster Service with the official openai client
5. print how to reach the model from the host (the cluster keeps running)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from r1_operator.dev.processes import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    r = subprocess.run([str(BIN / "kubectl"), *args], input=input, capture_output=True, text=True)
    if check and r.returncode:
        sys.exit(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def wait(what: str, check, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    sys.exit(f"demo: timed out waiting for {what}")


def main() -> int:
    step("starting the local cluster: real control plane, one real worker node, simulated GPU nodes")
    kubeconfig = subprocess.run([str(BIN / "r1ctl"), "dev", "up", "--real-nodes", "1", "--real-gpus", "1",
                                 "--timeout", "180"], check=True, capture_output=True, text=True).stdout.strip()
    os.environ["KUBECONFIG"] = kubeconfig
    print(f"    kubeconfig: {kubeconfig}")
    print(kubectl("get", "nodes", "-o", "custom-columns=NAME:.metadata.name,RUNTIME:.status.nodeInfo.containerRuntimeVersion,"
                  "GPUS:.status.allocatable.nvidia\\.com/gpu,GPU-MEMORY-MIB:.metadata.labels.nvidia\\.com/gpu\\.memory,"
                  "MEMORY:.status.allocatable.memory"))

    step("serving a miniature R1 split set as unsloth/DeepSeek-R1-GGUF from a dev hub on this host")
    from r1_devtools.testmodel import write_test_model
    from r1_operator.dev.realnode import host_ip

    home = Path(kubeconfig).parent
    hub_root = home / "hub"
    if not (hub_root / "unsloth/DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ1_S").is_dir():
        write_test_model(hub_root / "unsloth/DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S.gguf",
                         n_shards=3, seed=11)
    hub = subprocess.Popen([str(BIN / "r1-dev"), "hub", str(hub_root), "--host", "0.0.0.0"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    endpoint = json.loads(hub.stdout.readline())["endpoint"].replace("0.0.0.0", host_ip())
    print(f"    {endpoint} (pods reach it through their bridge)")

    step("installing the CRDs and starting the operator (runtime image from make images)")
    for f in ("r1deployments.yaml", "kopf-peering.yaml"):
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / f))
    kubectl("wait", "--for=condition=Established", "crd/r1deployments.r1.inference.dev", "--timeout=30s")
    log = home / "operator.log"
    env = {**os.environ, "R1_HUB_ENDPOINT": endpoint, "R1_RUNTIME_IMAGE": "docker.io/r1-operator/runtime:0.1.0",
           "R1_DEV_SIMULATED_GPUS": "true"}  # the dev cluster's GPUs are simulated: no layer really offloads
    op = subprocess.Popen([str(BIN / "r1-operator"), "--standalone", "--metrics-port", str(free_port()),
                           "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
                           "--readiness", f"http://127.0.0.1:{free_port()}/readyz"],
                          stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115
    print(f"    operator pid {op.pid}, log {log}")
    try:
        return flow()
    finally:
        op.send_signal(signal.SIGTERM)
        op.wait(15)
        hub.terminate()
        hub.wait(10)


def flow() -> int:
    for sample in ("auto-2x80g.yaml", "real-node.yaml"):
        step(f"applying examples/{sample}")
        kubectl("apply", "-f", str(REPO / "examples" / sample))
    kubectl("wait", "--for=condition=Planned", "r1d/r1-auto", "r1d/r1-real", "--timeout=60s")
    for name in ("r1-auto", "r1-real"):
        for reason in json.loads(kubectl("get", "r1d", name, "-o", "json"))["status"]["plan"]["reasons"][:1]:
            print(f"    {name}: {reason}")

    step("r1-real: the fetch Job downloads, verifies and merges in a real container (kubectl logs)")
    job = json.loads(kubectl("get", "jobs", "-l", "app.kubernetes.io/component=cache", "-o", "json"))["items"]
    real_job = next(j["metadata"]["name"] for j in job if j["spec"]["template"]["spec"].get("nodeSelector", {})
                    .get("kubernetes.io/hostname") == "real-0")
    kubectl("wait", "--for=condition=Complete", f"job/{real_job}", "--timeout=180s")
    print("    " + kubectl("logs", f"job/{real_job}").strip().splitlines()[-2][:160])
    kubectl("wait", "--for=condition=Ready", "r1d/r1-real", "r1d/r1-auto", "--timeout=300s")
    print(kubectl("get", "r1d", "-o", "wide"))
    pod = json.loads(kubectl("get", "pods", "-l", "app.kubernetes.io/instance=r1-real", "-o", "json"))["items"][0]
    print(f"    r1-real runs on {pod['spec']['nodeName']} in {pod['status']['containerStatuses'][0]['containerID'][:26]}…")

    step("asking r1-real through its in-cluster Service (ClusterIP, routed by the real node's kube-proxy) "
         "with the openai client")
    from openai import OpenAI
    from r1_devtools.kit import Kube

    url = Kube(os.environ["KUBECONFIG"]).service_url("default", "r1-real")
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    out = client.chat.completions.create(model="r1-real", messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=16)
    msg = out.choices[0].message
    text = (getattr(msg, "reasoning_content", None) or "") + (msg.content or "")
    print(f"    {url}/v1/chat/completions")
    print(f"    user: Hi\n    model ({out.usage.completion_tokens} tokens; random weights, so not words): {text!r}")

    step("what was real and what was simulated")
    print("    real: the control plane, node real-0 (kubelet, containerd, runc) and the host's kube-proxy, its containers")
    print("          from the built images, their probes, volume and Service; the fetch, merge and llama.cpp serving")
    print("    simulated: the kwok nodes (gpu-24g, gpu-80g, gpu-2x80g, cpu-only) and their pods (r1-auto is planned")
    print("          and 'Ready' there without a container); the GPUs of real-0 (an extended resource)")
    step("done; the cluster keeps running. Reach the model from this host with:")
    print(f"    curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' \\")
    print("      -d \'{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}\'")
    print(f"    (or from anywhere kubectl reaches: KUBECONFIG={os.environ['KUBECONFIG']} "
          ".venv/bin/kubectl port-forward svc/r1-real 8080:8080)")
    print("    Stop it with: make dev-down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
