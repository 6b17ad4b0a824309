"""Shared fixtures.

The `cluster` fixture is a real Kubernetes control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler built from Go modules by `make setup`)
with kwok-simulated GPU nodes. Only the GPUs are simulated: the nodes carry GPU
Feature Discovery labels and allocatable nvidia.com/gpu, because no physical
GPU exists here. If the cluster cannot start, tests that need it fail with the
reason; they never skip.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from r1_devtools.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cluster():
    """One fresh cluster per test session. R1_TEST_CLUSTER=NAME reuses a running `r1ctl dev up --name NAME`
    cluster instead (faster; its leftover objects, e.g. the demo's, can hold simulated GPUs and RAM)."""
    from r1_operator.dev import cluster as dev

    reuse = os.environ.get("R1_TEST_CLUSTER")
    state = dev.ClusterState.load(reuse) if reuse else None
    if state is not None and dev.status(reuse)["running"]:
        yield state
        return
    name = f"pytest-{os.getpid()}"
    state = dev.up(name)
    try:
        yield state
    finally:
        dev.down(name)


@pytest.fixture(scope="session")
def api_client(cluster):
    from kubernetes import config

    return config.new_client_from_config(config_file=cluster.kubeconfig)


@pytest.fixture(scope="session")
def core(api_client):
    from kubernetes import client

    return client.CoreV1Api(api_client)


@pytest.fixture
def namespace(request, core) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    from kubernetes import client

    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    labels = getattr(request, "param", None) or {}
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    # The controller manager creates the namespace's default ServiceAccount; pods need it.
    wait_for(lambda: _has_default_sa(core, name), 30, f"default ServiceAccount in {name}")
    yield name
    core.delete_namespace(name)


def _has_default_sa(core, ns: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        core.read_namespaced_service_account("default", ns)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
