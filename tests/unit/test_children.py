"""The child plan: create, own, update, leave or delete, with the reason, from the desired and live objects."""

from __future__ import annotations

import pytest

from r1_operator.builders import children as ch
from r1_operator.builders import names

OBJ = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "r1", "namespace": "ns"}, "spec": {"x": 1}}
OWNER = {"name": "a", "uid": "uid-a"}


def _live(obj: dict, generation: int | None = None, rv: str = "7", owners: list | None = None) -> dict:
    meta = {**obj["metadata"], "resourceVersion": rv, "ownerReferences": owners or []}
    if generation is not None:
        meta["generation"] = generation
    return {**obj, "metadata": meta}


APPLIED = ch.with_digest(OBJ)


@pytest.mark.parametrize("live,last_applied,action,reason", [
    pytest.param(None, None, "create", "absent", id="absent-is-created"),
    pytest.param(_live(OBJ), "rv7", "update", "configuration changed", id="no-digest-is-updated"),
    pytest.param(_live(ch.with_digest({**OBJ, "spec": {"x": 2}})), "rv7", "update", "configuration changed",
                 id="other-configuration-is-updated"),
    pytest.param(_live(APPLIED, rv="8"), "rv7", "update", "changed since", id="edited-by-someone-else-is-reverted"),
    pytest.param(_live(APPLIED, rv="7"), None, "update", "changed since", id="unknown-to-this-process-is-reapplied"),
    pytest.param(_live(APPLIED, generation=3), "g3", "leave", "as last applied", id="unchanged-generation-is-left"),
    pytest.param(_live(APPLIED, rv="7"), "rv7", "leave", "as last applied", id="unchanged-resource-version-is-left"),
])
def test_owned_child(live, last_applied, action, reason):
    step = ch.plan_owned(OBJ, live, last_applied)
    assert step.action == action and reason in step.reason
    assert step.ref == ("v1", "Service", "ns", "r1")
    if action != "leave":
        assert step.obj["metadata"]["annotations"][names.ANN_APPLIED] == APPLIED["metadata"]["annotations"][
            names.ANN_APPLIED]


@pytest.mark.parametrize("owners,action", [
    pytest.param(None, "create", id="absent-is-created-with-its-first-owner"),
    pytest.param([{"uid": "uid-b", "name": "b"}], "own", id="another-sharer-adds-itself"),
    pytest.param([{"uid": "uid-b", "name": "b"}, {"uid": "uid-a", "name": "a"}], "leave", id="already-owned"),
])
def test_shared_child(owners, action):
    live = None if owners is None else _live(OBJ, owners=owners)
    step = ch.plan_shared(OBJ, live, OWNER)
    assert step.action == action
    if action in ("create", "own"):
        assert step.owner == OWNER and step.obj is OBJ


@pytest.mark.parametrize("live,action", [
    pytest.param(_live(OBJ), "delete", id="turned-off-and-present-is-deleted"),
    pytest.param(None, "leave", id="turned-off-and-absent-is-left"),
])
def test_unwanted_child(live, action):
    assert ch.plan_absent(("v1", "Service", "ns", "r1"), live, "turned off").action == action


def test_a_deployment_whose_selector_changed_is_deleted_to_be_created_anew():
    """The API server refuses to update a Deployment's selector (immutable): one from before placements, selecting
    every runtime pod, is deleted, and the next reconcile creates it with the placement's selector."""
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "r1", "namespace": "ns"},
           "spec": {"selector": {"matchLabels": {"a": "1", names.LABEL_PLACEMENT: "0"}}, "replicas": 1}}
    old = _live({**dep, "spec": {**dep["spec"], "selector": {"matchLabels": {"a": "1"}}}}, generation=1)
    step = ch.plan_owned(dep, old, "g1")
    assert step.action == "delete" and "selector" in step.reason
    same = _live(ch.with_digest(dep), generation=2)
    assert ch.plan_owned(dep, same, "g2").action == "leave"
