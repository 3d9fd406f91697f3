"""A teacher's validation gives a verdict only about its file: a store that cannot be reached is
retried, and the teacher stays pending meanwhile."""

import pytest

from nst.storage import StorageUnavailable
from service.core.db import session_scope
from service.lifecycle import set_teacher_status
from tests.utils import synthetic
from workers import tasks


def test_an_unreachable_store_is_retried_not_a_verdict(client, monkeypatch):
    teacher = synthetic.teacher(["a", "b"])
    with session_scope() as session:  # registered, waiting for a worker's verdict
        set_teacher_status(session, teacher_id=teacher, status="pending", reason=None)

    def unreachable(_spec):
        raise StorageUnavailable("s3://nst-test/teachers/x: the store did not answer")

    monkeypatch.setattr(tasks, "validate", unreachable)
    with pytest.raises(StorageUnavailable):
        tasks.validate_teacher(teacher)
    assert client.get(f"/teachers/{teacher}").json()["status"] == "pending"
