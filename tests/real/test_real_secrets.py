"""The HF token and the API key never leave their Secrets: on the real cluster, every place an R1Deployment could
leak them is read, and neither value is found.

The dev hub requires the token for this test, so the fetch succeeds only if the token reached it; the runtime
refuses a request without the key, so the key is in force. Then the test reads the R1Deployment (status included),
the namespace's Events, the operator's log at its most verbose level (`--debug`: kopf's and the client's debug
lines, the objects it patches), the fetch and runtime containers' logs, and the Job, Deployment and pods as the API
server holds them. Their env names the Secrets with `secretKeyRef`, never a literal value.
"""

from __future__ import annotations

import base64
import json
import secrets

import httpx
import pytest

from r1_operator.builders import names
from r1_operator.dev import realnode

pytestmark = pytest.mark.cluster
NAME = "r1-secret"
CACHE = names.cache_name("unsloth/DeepSeek-R1-GGUF", "main", "UD-IQ1_S", "real-0")


def _secret(name: str, key: str, value: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {key: base64.b64encode(value.encode()).decode()}}


def test_hf_token_and_api_key_appear_nowhere(real_kube, real_ns, real_hub, real_operator):
    kube, ns, hub = real_kube, real_ns, real_hub[1]
    token, key = f"hf_{secrets.token_hex(16)}", f"sk-{secrets.token_hex(16)}"
    kube.apply(_secret("hf", "token", token), ns)
    kube.apply(_secret("api", "key", key), ns)
    r1d = {"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "metadata": {"name": NAME},
           "spec": {"model": {"variant": "UD-IQ1_S"}, "inference": {"ctxSize": 1024, "parallel": 1, "canary": False},
                    "hfTokenSecretRef": {"name": "hf", "key": "token"}, "apiKeySecretRef": {"name": "api", "key": "key"},
                    "resources": {"requests": {"cpu": "250m"}},  # the host's 2 CPUs are shared with other tests' pods
                    "scheduling": {"nodeSelector": {realnode.REAL_LABEL: "true", "kubernetes.io/hostname": "real-0"}}}}
    hub.token = token  # the fetch must present it
    try:
        kube.apply(r1d, ns)
        kube.run("wait", "--for=condition=Complete", f"job/{CACHE}", "-n", ns, "--timeout=120s")
        kube.run("wait", "--for=condition=Ready", f"r1d/{NAME}", "-n", ns, "--timeout=180s")
    finally:
        hub.token = None
    url = kube.service_url(ns, NAME)
    assert httpx.get(url + "/v1/models", timeout=10).status_code == 401
    models = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert models.status_code == 200 and models.json()["data"][0]["id"] == NAME

    # where the values could show: each of these is read whole
    pods = kube.json("get", "pods", "-n", ns)["items"]
    places = {
        "R1Deployment and status": kube.run("get", "r1d", NAME, "-n", ns, "-o", "json").stdout,
        "Events": kube.run("get", "events", "-n", ns, "-o", "json").stdout,
        "operator log": real_operator.log.read_text(errors="replace"),
        "fetch log": kube.run("logs", "-n", ns, f"job/{CACHE}").stdout,
        "Job": kube.run("get", "job", CACHE, "-n", ns, "-o", "json").stdout,
        "Deployment": kube.run("get", "deployment", NAME, "-n", ns, "-o", "json").stdout,
        "pods": json.dumps(pods),
    }
    for p in pods:
        for c in p["spec"]["containers"]:
            places[f"log of {p['metadata']['name']}/{c['name']}"] = kube.run(
                "logs", "-n", ns, p["metadata"]["name"], "-c", c["name"], check=False).stdout
    # the places are what they claim: the operator logged at debug level about this R1Deployment, and the
    # fetch and runtime logs are theirs
    assert "DEBUG" in places["operator log"]
    assert NAME in places["operator log"] and '"phase": "done"' in places["fetch log"]
    assert any("r1-runtime serve: listening" in v for k, v in places.items() if k.startswith("log of "))
    for where, text in places.items():
        for what, value in (("HF token", token), ("API key", key)):
            assert value not in text, f"the {what} appears in the {where}"

    # env refers to the Secrets; no container of any pod holds either as a literal
    env = {e["name"]: e for p in pods for c in p["spec"]["containers"] for e in c.get("env") or []}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["R1_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "api", "key": "key"}}
    assert "value" not in env["HF_TOKEN"] and "value" not in env["R1_API_KEY"]
