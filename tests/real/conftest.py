"""One dev cluster with a real worker node for the real tier, a dev hub the pods reach, and the operator.

Two real nodes (`real-0`, `real-1`) run pods in real containers from the images `make images` built;
their two GPUs each are simulated (an extended resource), nothing else is. The host reaches Services'
ClusterIPs through the cluster's kube-proxy. The dev hub listens on the host's
address, which pods reach through their bridge. The operator runs on the host, as in tests/e2e,
watching `real-*` namespaces with the runtime image and the hub as its settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from r1_devtools import devhub
from r1_devtools.kit import (HUB_REPO, MONITORING_NS, RUNTIME_IMAGE, Kube, OperatorProc, drop_namespace, make_namespace,
                             ns_name, start_operator)
from r1_devtools.testmodel import write_test_model
from r1_operator.dev import cluster as dev
from r1_operator.dev import realnode

OPERATOR_IMAGE = "docker.io/r1-operator/operator:0.1.0"


@pytest.fixture(scope="session")
def real_cluster():
    for image in ("runtime", "operator"):
        if not (realnode.images_dir() / f"{image}.tar").exists():
            raise AssertionError(f"{realnode.images_dir()}/{image}.tar is missing: run 'make images' (make setup does)")
    name = f"real-{os.getpid()}"
    state = dev.up(name, real_nodes=2, real_gpus=2, timeout=180)
    yield state
    dev.down(name)


@pytest.fixture(scope="session")
def real_kube(real_cluster) -> Kube:
    k = Kube(real_cluster.kubeconfig)
    for f in ("r1deployments.yaml", "kopf-peering.yaml"):
        k.run("apply", "--server-side", "--force-conflicts", "-f", str(Path(__file__).resolve().parents[2] / "crds" / f))
    k.run("wait", "--for=condition=Established", "crd/r1deployments.r1.inference.dev", "--timeout=30s")
    return k


@pytest.fixture(scope="session")
def real_hub(tmp_path_factory) -> Iterator[tuple[str, devhub.Hub]]:
    root = tmp_path_factory.mktemp("real-hub")
    write_test_model(root / HUB_REPO / "DeepSeek-R1-UD-IQ1_S" / "DeepSeek-R1-UD-IQ1_S.gguf", n_shards=3, seed=11)
    with devhub.running(root, host="0.0.0.0", advertise=realnode.host_ip()) as endpoint_and_hub:
        yield endpoint_and_hub


@pytest.fixture(scope="session")
def real_operator(real_kube, real_hub, tmp_path_factory) -> Iterator[OperatorProc]:
    log = tmp_path_factory.mktemp("real-operator") / "operator.log"
    # At the most verbose level: tests/real/test_real_secrets.py reads the whole log for the secrets' values.
    op = start_operator(real_kube.kubeconfig, log, "--standalone", "--namespace", "real-*", "--debug",
                        env={"R1_HUB_ENDPOINT": real_hub[0], "R1_RUNTIME_IMAGE": RUNTIME_IMAGE,
                             "R1_MONITORING_NAMESPACE": MONITORING_NS, "R1_DEV_SIMULATED_GPUS": "true"})
    yield op
    op.stop()


@pytest.fixture
def real_ns(request, real_kube, real_operator) -> Iterator[str]:
    name = make_namespace(real_kube, ns_name(request, "real"), {"pod-security.kubernetes.io/enforce": "restricted"})
    yield name
    drop_namespace(real_kube, name)


@pytest.fixture(scope="session")
def real_keda(real_cluster, real_kube):
    """KEDA on the real cluster (its operator and metrics API server, built by make setup): started once, for the
    tests that autoscale, and stopped with the cluster."""
    dev.start_keda(real_cluster)
    return real_cluster
