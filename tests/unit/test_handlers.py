"""Child-event filtering in the kopf handlers: only status-relevant changes refresh an owner."""

from r1_operator import handlers


def test_child_events_count_only_changes_and_deletion_forgets_the_child():
    body = {"metadata": {"uid": "u-1"}}
    assert handlers._news(body, None, ["Running", []])  # first sight
    assert not handlers._news(body, "MODIFIED", ["Running", []])  # e.g. an owner reference added
    assert handlers._news(body, "MODIFIED", ["Failed", []])
    assert handlers._news(body, "DELETED", ["Failed", []])
    assert "u-1" not in handlers._SEEN  # no digest kept for a child that is gone
    assert handlers._news(body, "ADDED", ["Failed", []])  # a recreated object with the same uid is news again
