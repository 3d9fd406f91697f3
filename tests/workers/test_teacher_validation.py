"""A teacher's validation gives a verdict only about its file: a store that cannot be reached, or
that refuses the worker, is retried, and the teacher stays pending meanwhile."""

from pathlib import Path

import pytest

from nst.storage import AccessDenied, StorageUnavailable
from service.core.db import session_scope
from service.lifecycle import set_teacher_status
from service.models import Teacher
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


def test_a_local_checkpoint_changed_since_registration_is_refused(client, enqueued, teacher_file):
    """A file on a shared volume is hashed where it lies: one rewritten or cut short after it was
    registered is no longer the teacher its ID names."""
    with teacher_file.open("rb") as handle:
        response = client.post("/teachers/upload", files={"file": (teacher_file.name, handle)})
    teacher = response.json()
    with session_scope() as session:
        stored = Path(session.get(Teacher, teacher["id"]).file_path)
    stored.write_bytes(stored.read_bytes()[:-8] + b"\0" * 8)  # same size, other bytes
    assert tasks.validate_teacher(teacher["id"]) == "invalid"
    shown = client.get(f"/teachers/{teacher['id']}").json()
    assert shown["status_reason"] == f"{str(stored)!r} is no longer the file registered: its sha256 changed"
