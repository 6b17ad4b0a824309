"""The operator running against the real local cluster.

`operator` is one `r1-operator` process for the session, watching namespaces
`e2e-*`, with its cache Jobs pointed at a dev hub that serves a miniature R1
split set as unsloth/DeepSeek-R1-GGUF. Only GPUs and containers are simulated:
kwok marks pods Running/Ready and Job pods Succeeded, because no kubelet or GPU
exists here. test_contract.py runs the rendered containers' commands for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from r1_devtools.kit import HUB_REPO, REPO, Kube, OperatorProc, drop_namespace, make_namespace, ns_name, start_operator

from r1_devtools import devhub
from r1_devtools.testmodel import write_test_model


@pytest.fixture(scope="session")
def kube(cluster) -> Kube:
    k = Kube(cluster.kubeconfig)
    for f in ("r1deployments.yaml", "kopf-peering.yaml"):
        k.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / f))
    k.run("wait", "--for=condition=Established", "crd/r1deployments.r1.inference.dev", "--timeout=30s")
    return k


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e-hub")
    d = root / HUB_REPO / "DeepSeek-R1-UD-IQ1_S"
    write_test_model(d / "DeepSeek-R1-UD-IQ1_S.gguf", n_shards=3, seed=11)
    return root


@pytest.fixture(scope="session")
def hub(hub_root) -> Iterator[str]:
    with devhub.running(hub_root) as (endpoint, _):
        yield endpoint


@pytest.fixture(scope="session")
def operator(kube, hub, tmp_path_factory) -> Iterator[OperatorProc]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = start_operator(kube.kubeconfig, log, "--standalone", "--namespace", "e2e-*",
                        env={"R1_HUB_ENDPOINT": hub})
    yield op
    op.stop()


@pytest.fixture
def e2e_ns(request, kube, operator) -> Iterator[str]:
    labels = getattr(request, "param", None) or {}
    name = make_namespace(kube, ns_name(request, "e2e"), labels)
    yield name
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        lines = operator.log.read_text(errors="replace").splitlines()
        print("--- operator log (warnings, errors and this test's namespace) ---\n" + "\n".join(
            ln for ln in lines if "WARNING" in ln or "ERROR" in ln or name in ln)[-8000:])
        for what in (["get", "r1d", "-n", name, "-o", "jsonpath={range .items[*]}{.metadata.name} "
                      "{.status.conditions}{'\\n'}{end}"], ["get", "nodes", "-o", "wide"]):
            print(f"--- kubectl {' '.join(what[:2])} ---\n" + kube.run(*what, check=False).stdout[-3000:])
    drop_namespace(kube, name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
