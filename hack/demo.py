"""The main flow on the local cluster (run by `make demo` after `make setup`).

1. start the local cluster (real control plane; kwok simulates the GPU nodes and containers)
2. install the CRDs and start the operator
3. apply the CPU-only sample, wait for its plan and print `kubectl get r1d -o wide`
4. run the runtime exactly as the operator rendered it, with SmolLM2 (from PyPI) as the model,
   and ask it one question through the official openai client
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    r = subprocess.run([str(BIN / "kubectl"), *args], input=input, capture_output=True, text=True)
    if check and r.returncode:
        sys.exit(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what: str, check, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    sys.exit(f"demo: timed out waiting for {what}")


def main() -> int:
    step("starting the local cluster (real control plane, simulated GPU nodes)")
    kubeconfig = subprocess.run([str(BIN / "r1ctl"), "dev", "up"], check=True, capture_output=True, text=True).stdout.strip()
    os.environ["KUBECONFIG"] = kubeconfig
    print(f"    kubeconfig: {kubeconfig}")
    print(kubectl("get", "nodes", "-o", "custom-columns=NAME:.metadata.name,GPUS:.status.allocatable.nvidia\\.com/gpu,"
                  "GPU-MEMORY-MIB:.metadata.labels.nvidia\\.com/gpu\\.memory,MEMORY:.status.allocatable.memory"))

    step("installing the CRDs and starting the operator")
    for f in ("r1deployments.yaml", "kopf-peering.yaml"):
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / f))
    kubectl("wait", "--for=condition=Established", "crd/r1deployments.r1.inference.dev", "--timeout=30s")
    log = Path(kubeconfig).parent / "operator.log"
    op = subprocess.Popen([str(BIN / "r1-operator"), "--standalone", "--metrics-port", str(free_port()),
                           "--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
                          stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    print(f"    operator pid {op.pid}, log {log}")
    try:
        return flow(op, log)
    finally:
        op.send_signal(signal.SIGTERM)
        op.wait(15)


def flow(op: subprocess.Popen, log: Path) -> int:
    sample = REPO / "examples" / "cpu-only.yaml"
    step(f"applying {sample.relative_to(REPO)}")
    kubectl("apply", "-f", str(sample))
    wait("the plan", lambda: "True" in kubectl("get", "r1d", "r1-cpu", "-o",
                                                "jsonpath={.status.conditions[?(@.type==\"Planned\")].status}"))
    step("kubectl get r1d -o wide")
    print(kubectl("get", "r1d", "-o", "wide"))
    r1d = json.loads(kubectl("get", "r1d", "r1-cpu", "-o", "json"))
    for reason in r1d["status"]["plan"]["reasons"][:2]:
        print(f"    why: {reason}")
    kubectl("wait", "--for=condition=Ready", "r1d/r1-cpu", "--timeout=90s")
    print(kubectl("get", "r1d", "-o", "wide"))

    step("running the runtime as the operator rendered it, with SmolLM2-135M as the model")
    dep = json.loads(kubectl("get", "deploy", "r1-cpu", "-o", "json"))
    cmd = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    from r1_devtools.models import smollm2_path

    port = free_port()
    cmd[cmd.index("--model") + 1] = str(smollm2_path())
    cmd[cmd.index("--port") + 1] = str(port)
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    print("    " + " ".join(cmd))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    serve = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx
        from openai import OpenAI

        def ready() -> bool:
            if serve.poll() is not None:
                sys.exit(f"demo: the runtime exited {serve.returncode}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait("the runtime to become ready", ready, 180)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        q = "What is the capital of France? Answer in one sentence."
        out = client.chat.completions.create(model="r1-cpu", messages=[{"role": "user", "content": q}], max_tokens=48)
        print(f"    user: {q}\n    model: {out.choices[0].message.content.strip()}")
        print(f"    usage: {out.usage.prompt_tokens} prompt + {out.usage.completion_tokens} completion tokens")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        print("    " + next(line for line in text.splitlines() if line.startswith("llamacpp:tokens_predicted_total")))
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
    step("done; the cluster keeps running (kubectl: KUBECONFIG=$(.venv/bin/r1ctl dev kubeconfig)). "
         "Stop it with: make dev-down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
