"""A teacher's validation gives a verdict only about its file: a store that cannot be reached, or
that refuses the worker, is retried, and the teacher stays pending meanwhile."""

import pytest

from nst.storage import AccessDenied, StorageUnavailable
from service.core.db import session_scope
from service.lifecycle import set_teacher_status
from tests.utils import synthetic
from workers import tasks


@pytest.mark.parametrize(
    "error",
    [
        StorageUnavailable("s3://nst-test/teachers/x: the store did not answer"),
        AccessDenied("s3://nst-test/teachers/x: access denied (PermissionError: Forbidden)"),
    ],
    ids=["unreachable", "denied"],
)
def test_an_unreadable_store_is_retried_not_a_verdict(client, monkeypatch, error):
    """A store that refuses this worker (rotated credentials, a missing grant) is a deployment's
    fault, not the file's: the teacher stays pending, saying why, while the task retries."""
    teacher = synthetic.teacher(["a", "b"])
    with session_scope() as session:  # registered, waiting for a worker's verdict
        set_teacher_status(session, teacher_id=teacher, status="pending", reason=None)

    def unreadable(_spec):
        raise error

    monkeypatch.setattr(tasks, "validate", unreadable)
    with pytest.raises(type(error)):
        tasks.validate_teacher(teacher)
    shown = client.get(f"/teachers/{teacher}").json()
    assert shown["status"] == "pending"
    assert (
        shown["status_reason"]
        == f"a worker could not read the checkpoint, retrying: {type(error).__name__}: {error}"
    )
