"""Child-event filtering: only status-relevant changes refresh an owner."""

from r1_operator.child_events import ChildEvents, job_summary, owners


def test_child_events_count_only_changes_and_deletion_forgets_the_child():
    events = ChildEvents()
    body = {"metadata": {"uid": "u-1"}}
    assert events.news(body, None, ["Running", []])  # first sight
    assert not events.news(body, "MODIFIED", ["Running", []])  # e.g. an owner reference added
    assert events.news(body, "MODIFIED", ["Failed", []])
    assert events.news(body, "DELETED", ["Failed", []])
    assert events.news(body, "ADDED", ["Failed", []])  # a recreated object with the same uid is news again


def test_a_shared_job_gaining_an_owner_is_no_news_and_names_both_owners():
    ref = {"apiVersion": "r1.inference.dev/v1alpha1", "kind": "R1Deployment", "name": "a", "uid": "1"}
    job = {"metadata": {"uid": "j", "ownerReferences": [ref]}, "status": {"active": 1}}
    events = ChildEvents()
    assert events.news(job, "ADDED", job_summary(job))
    job2 = {**job, "metadata": {"uid": "j", "ownerReferences": [ref, {**ref, "name": "b", "uid": "2"}]}}
    assert not events.news(job2, "MODIFIED", job_summary(job2))
    assert owners(job2) == ["a", "b"]
    assert owners({"metadata": {"ownerReferences": [{**ref, "kind": "Deployment"}]}}) == []


def test_a_runtime_container_that_restarts_is_news_even_when_nothing_waits():
    """An OOMKilled runtime is restarted at once the first time: its pod is Running again, with no waiting
    reason, and only the restart and the last state tell the operator (which then corrects its memory)."""
    from r1_operator.child_events import pod_summary

    def pod(restarts, last=None):
        cs = {"name": "runtime", "restartCount": restarts, "state": {"running": {}}}
        if last:
            cs["lastState"] = {"terminated": {"reason": last, "exitCode": 137}}
        return {"metadata": {"uid": "p1", "ownerReferences": []},
                "status": {"phase": "Running", "conditions": [], "containerStatuses": [cs]}}

    events = ChildEvents()
    assert events.news(pod(0), "ADDED", pod_summary(pod(0)))
    assert not events.news(pod(0), "MODIFIED", pod_summary(pod(0)))
    assert events.news(pod(1, "OOMKilled"), "MODIFIED", pod_summary(pod(1, "OOMKilled")))
