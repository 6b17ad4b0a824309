"""Every dashboard query returns data from a real Prometheus scraping a real runtime under load and the operator.

Prometheus (the Debian package) scrapes `r1-runtime serve` (SmolLM2) with the
labels a ServiceMonitor would add (namespace, service = the R1Deployment,
pod), and the session operator, whose series carry their own namespace
(honor_labels, as the chart's ServiceMonitor sets). Variables are filled in as
Grafana would; $__rate_interval becomes 15s.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml
from r1_devtools.kit import REPO
from r1_devtools.models import smollm2_path
from r1_devtools.waiting import wait_for
from openai import OpenAI
from r1_devtools.prom import running_prometheus
from r1_devtools.serving import running_server

from r1_operator.dashboard import build
from r1_operator.dev.processes import free_port

POD = "r1-cpu-7d9f-test"


def _metric_names(expr: str) -> set[str]:
    words = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr))
    return {w for w in words if w not in {"by", "on", "rate", "increase", "sum", "max", "histogram_quantile"}}


@pytest.mark.cluster
@pytest.mark.llama
def test_every_panel_query_returns_data(kube, e2e_ns, operator):
    kube.apply(yaml.safe_load((REPO / "examples" / "cpu-only.yaml").read_text()), e2e_ns)
    kube.run("wait", "--for=condition=Ready", "r1d/r1-cpu", "-n", e2e_ns, "--timeout=60s")
    with running_server(smollm2_path(), "--alias", "r1-cpu", "--variant", "UD-IQ1_S", "--parallel", "2",
                        "--ctx-size", "2048") as server:
        runtime_target = server.url.removeprefix("http://")
        scrape = [
            {"job_name": "r1-runtime", "static_configs": [{"targets": [runtime_target],
                                                           "labels": {"namespace": e2e_ns, "service": "r1-cpu",
                                                                      "pod": POD}}]},
            {"job_name": "r1-operator", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}]},
        ]
        with running_prometheus([], free_port(), scrape_configs=scrape) as prom:
            client = OpenAI(base_url=server.url + "/v1", api_key="unused")

            def ask(i: int) -> int:
                out = client.chat.completions.create(model="r1-cpu", max_tokens=24,
                                                     messages=[{"role": "user", "content": f"Count to {i + 3}."}])
                return out.usage.completion_tokens
            with ThreadPoolExecutor(4) as pool:
                for _ in range(2):  # two waves, so rates see more than one sample
                    assert all(pool.map(ask, range(4)))
            wait_for(lambda: prom.value("sum(llamacpp:tokens_predicted_total) > 0"), 20, "a scrape after the load")

            exported = httpx.get(server.url + "/metrics").text + httpx.get(
                f"http://127.0.0.1:{operator.metrics_port}/metrics").text
            dash = build()
            fill = {"$namespace": e2e_ns, "$deployment": "r1-cpu", "$pod": POD, "$__rate_interval": "15s"}
            unknown = []
            for panel in dash["panels"]:
                for target in panel["targets"]:
                    expr = target["expr"]
                    for k, v in fill.items():
                        expr = expr.replace(k, v)
                    for name in _metric_names(expr):
                        base = re.sub(r"_(bucket|total)$", "", name)
                        if base not in exported:
                            unknown.append((panel["title"], name))
                    wait_for(lambda e=expr: prom.query(e), 15, f"data for {panel['title']}: {expr}")
            assert not unknown, f"panels reference metrics nobody exports: {unknown}"
            for var in dash["templating"]["list"][1:]:
                q = var["query"]["query"]
                for k, v in fill.items():
                    q = q.replace(k, v)
                series = re.fullmatch(r"label_values\((.*), (\w+)\)", q).group(1)
                values = {r["metric"].get(var["name"] if var["name"] != "deployment" else "service")
                          for r in prom.query(series)}
                assert values - {None}, f"variable {var['name']} has no values"
