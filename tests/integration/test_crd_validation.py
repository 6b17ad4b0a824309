"""The CRD on the real API server: defaults applied, invalid manifests rejected with the field named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from r1_devtools.waiting import wait_for

from r1_operator.api.types import R1DeploymentSpec

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
KUBECTL = str(Path(sys.executable).with_name("kubectl"))


def kubectl(cluster, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([KUBECTL, "--kubeconfig", str(cluster.kubeconfig), *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def crd_installed(cluster):
    r = kubectl(cluster, "apply", "--server-side", "-f", str(REPO / "crds" / "r1deployments.yaml"))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: kubectl(cluster, "get", "r1d", "-A").returncode == 0, 30, "the r1d resource to be served")
    return cluster


def manifest(ns: str, spec: dict, name: str = "r1") -> str:
    return yaml.safe_dump({"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment",
                           "metadata": {"name": name, "namespace": ns}, "spec": spec})


def test_minimal_manifest_gets_the_documented_defaults(crd_installed, namespace):
    r = kubectl(crd_installed, "apply", "-f", "-", stdin=manifest(namespace, {}))
    assert r.returncode == 0, r.stderr
    obj = json.loads(kubectl(crd_installed, "get", "r1d", "r1", "-n", namespace, "-o", "json").stdout)
    spec = obj["spec"]
    assert spec["model"] == {"repo": "unsloth/DeepSeek-R1-GGUF", "revision": "main", "variant": "auto",
                             "policy": "auto", "offload": "estimate"}
    assert spec["inference"]["ctxSize"] == 8192 and spec["inference"]["cacheTypeK"] == "q4_0"
    assert spec["inference"]["sampling"] == {"temperature": 0.6, "minP": 0.05, "topP": 1, "topK": 0}
    # what the API server stored parses back into the same pydantic object the operator uses
    parsed = R1DeploymentSpec.model_validate(spec)
    assert parsed == R1DeploymentSpec()
    cols = kubectl(crd_installed, "get", "r1d", "-n", namespace).stdout.splitlines()[0].split()
    assert cols == ["NAME", "VARIANT", "GPU-LAYERS", "CACHE", "READY", "STATUS", "AGE"]


INVALID = [
    ({"replicas": -1}, "spec.replicas"),
    ({"replicas": 1000}, "spec.replicas"),
    ({"model": {"repo": "not a repo"}}, "spec.model.repo"),
    ({"model": {"policy": "fastest"}}, "spec.model.policy"),
    ({"model": {"offload": "guess"}}, "spec.model.offload"),
    ({"model": {"variant": "UD-IQ1_S", "minVariant": "UD-IQ1_M"}}, "spec.model.minVariant"),
    ({"inference": {"ctxSize": 100}}, "spec.inference.ctxSize"),
    ({"inference": {"cacheTypeK": "q3_k"}}, "spec.inference.cacheTypeK"),
    ({"inference": {"cacheTypeV": "q8_0"}}, "spec.inference.cacheTypeV"),
    ({"inference": {"ctxSize": 1024, "parallel": 8}}, "spec.inference.parallel"),
    ({"inference": {"parallel": 0}}, "spec.inference.parallel"),
    ({"inference": {"sampling": {"temperature": 3}}}, "spec.inference.sampling.temperature"),
    ({"inference": {"sampling": {"topP": 0}}}, "spec.inference.sampling.topP"),
    ({"cache": {"size": "lots"}}, "spec.cache.size"),
    ({"cache": {"accessMode": "ReadOnlyMany"}}, "spec.cache.accessMode"),
    ({"scheduling": {"tolerations": [{"operator": "Sometimes"}]}}, "spec.scheduling.tolerations[0].operator"),
    ({"hfTokenSecretRef": {"key": "token"}}, "spec.hfTokenSecretRef.name"),
    ({"apiKeySecretRef": {"name": "Bad_Name", "key": "k"}}, "spec.apiKeySecretRef.name"),
    ({"inference": {"threads": "many"}}, "spec.inference.threads"),
    ({"monitoring": {"dashboard": "yes"}}, "spec.monitoring.dashboard"),
    ({"autoscaling": {"minReplicas": 1}}, "spec.autoscaling.maxReplicas"),
    ({"autoscaling": {"minReplicas": 0, "maxReplicas": 2}}, "spec.autoscaling.minReplicas"),
    ({"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}, "spec.autoscaling.minReplicas"),
    ({"autoscaling": {"maxReplicas": 2, "targetQueuePerReplica": 0}}, "spec.autoscaling.targetQueuePerReplica"),
    ({"autoscaling": {"maxReplicas": 2, "prometheusAddress": "prom:9090"}}, "spec.autoscaling.prometheusAddress"),
]


def test_invalid_manifests_are_rejected_naming_the_field(crd_installed, namespace):
    failures = []
    for i, (spec, field) in enumerate(INVALID):
        r = kubectl(crd_installed, "apply", "-f", "-", stdin=manifest(namespace, spec, f"bad-{i}"))
        if r.returncode == 0 or field not in r.stderr:
            failures.append((spec, field, r.returncode, r.stderr.strip()))
    assert not failures, "\n".join(map(str, failures))
    assert kubectl(crd_installed, "get", "r1d", "-n", namespace, "-o", "name").stdout == ""


def test_cel_messages_say_what_to_do(crd_installed, namespace):
    r = kubectl(crd_installed, "apply", "-f", "-", stdin=manifest(namespace, {"inference": {"cacheTypeV": "q8_0"}}))
    assert "a quantized cacheTypeV (not f32, f16, bf16) requires flashAttention: true" in r.stderr
    ok = kubectl(crd_installed, "apply", "-f", "-",
                 stdin=manifest(namespace, {"inference": {"cacheTypeV": "q8_0", "flashAttention": True}}))
    assert ok.returncode == 0, ok.stderr


def test_scale_from_zero_is_refused_saying_why(crd_installed, namespace):
    r = kubectl(crd_installed, "apply", "-f", "-",
                stdin=manifest(namespace, {"autoscaling": {"minReplicas": 0, "maxReplicas": 2}}))
    assert r.returncode != 0 and "scale from zero is not supported" in r.stderr and "set minReplicas: 1" in r.stderr
    ok = kubectl(crd_installed, "apply", "-f", "-", stdin=manifest(namespace, {"autoscaling": {"maxReplicas": 2}}))
    assert ok.returncode == 0, ok.stderr
    got = kubectl(crd_installed, "get", "r1d", "r1", "-n", namespace, "-o", "jsonpath={.spec.autoscaling}").stdout
    assert '"minReplicas":1' in got and '"scaleDownDelaySeconds":300' in got  # the documented defaults


def test_unknown_fields_are_rejected(crd_installed, namespace):
    r = kubectl(crd_installed, "apply", "-f", "-", stdin=manifest(namespace, {"inference": {"ctxsize": 4096}}))
    assert r.returncode != 0 and "ctxsize" in r.stderr


def test_names_that_cannot_name_a_service_are_rejected(crd_installed, namespace):
    for bad in ("9-starts-with-a-digit", "x" * 51):
        r = kubectl(crd_installed, "apply", "-f", "-", stdin=manifest(namespace, {}, bad))
        assert r.returncode != 0 and "metadata.name must be a DNS label of at most 50 characters" in r.stderr, r.stderr
    ok = kubectl(crd_installed, "apply", "-f", "-", stdin=manifest(namespace, {}, "r1-" + "x" * 47))
    assert ok.returncode == 0, ok.stderr
