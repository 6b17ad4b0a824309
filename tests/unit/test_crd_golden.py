"""The committed CRD is exactly what the API types generate, and it is a structural schema."""

from __future__ import annotations

from pathlib import Path

import yaml

from r1_operator.api.crd import crd, crd_yaml
from r1_operator.api.types import AutoscalingSpec, R1DeploymentSpec

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "r1deployments.yaml"


def test_committed_crd_matches_the_types():
    assert CRD_FILE.read_text() == crd_yaml(), "crds/r1deployments.yaml is stale: run '.venv/bin/r1ctl crd > crds/r1deployments.yaml'"


def _walk(node, path="spec"):
    yield path, node
    for name, p in node.get("properties", {}).items():
        yield from _walk(p, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural():
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path, node in _walk(spec):
        assert "type" in node, f"{path} has no type"
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title"} & set(node), f"{path}: {sorted(node)}"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_defaults_in_the_schema_equal_the_pydantic_defaults():
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def defaulted(node):
        if node.get("type") == "object" and "properties" in node:
            out = {}
            for name, p in node["properties"].items():
                v = defaulted(p)
                if v is not None:
                    out[name] = v
            return out if ("default" in node or out) else None
        return node.get("default")

    from_schema = defaulted(spec)
    from_types = R1DeploymentSpec().model_dump(by_alias=True, exclude_none=True)
    for key in ("nodeSelector", "tolerations", "imagePullSecrets", "podAnnotations", "podLabels", "env"):
        from_types["scheduling"].pop(key)
    from_types["network"].pop("allowFrom")  # lists without a schema default, like the two above
    # an optional object (off unless given): its fields' defaults apply once it is given
    from_types["autoscaling"] = {k: v for k, v in AutoscalingSpec(maxReplicas=1).model_dump(by_alias=True).items()
                                 if k != "maxReplicas"}
    assert from_schema == from_types


def test_printer_columns_and_subresources():
    v = crd()["spec"]["versions"][0]
    assert [c["name"] for c in v["additionalPrinterColumns"] if c.get("priority", 0) == 0] == [
        "Variant", "GPU-Layers", "Cache", "Ready", "Status", "Age"]
    assert v["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert yaml.safe_load(CRD_FILE.read_text())["spec"]["names"]["shortNames"] == ["r1d"]


def test_every_status_field_the_operator_writes_is_in_the_schema():
    """The API server prunes what a structural schema does not declare: a status key missing here is silently
    dropped (status.runtime was, until it was declared)."""
    from r1_operator.builders.status import CacheObservation, Desired, RuntimeObservation, build_status

    props = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    served = RuntimeObservation(exists=True, replicas=1, ready_replicas=1, updated_replicas=1, up_to_date=True,
                                offloaded_layers=0)
    plan = {"variant": "UD-IQ1_S", "nGpuLayers": 3, "gpuLayers": "3/62", "fits": True, "reasons": ["planned"]}
    status = build_status(Desired(generation=1, replicas=1, plan=plan, endpoint="http://x/v1", selector="a=b"),
                          CacheObservation(pvc="c", ready={"bytesTotal": 1}), served, None, "t0").status
    assert set(status) <= set(props), set(status) - set(props)


def test_every_plan_and_placement_field_is_in_the_schema():
    from r1_operator.planning.catalog import BUILTIN, R1_REPO
    from r1_operator.planning.decide import plan_to_status
    from r1_operator.planning.evaluate import PlanRequest
    from r1_operator.planning.inventory import hypothetical
    from r1_operator.planning.placement import place

    props = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["plan"]
    nodes = [hypothetical(8, 141, 2048, name="a"), hypothetical(8, 141, 2048, name="b")]
    plan = plan_to_status(place(BUILTIN[R1_REPO], nodes, PlanRequest(), 3), 1, "planned")
    assert len(plan["placements"]) == 2
    assert set(plan) <= set(props["properties"]), set(plan) - set(props["properties"])
    item = props["properties"]["placements"]["items"]["properties"]
    assert set(plan["placements"][0]) <= set(item), set(plan["placements"][0]) - set(item)
