"""Teacher registry: data access only, no HTTP."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service import lifecycle
from service.models import Job, Teacher
from service.pagination import offset_page
from service.schemas import TeacherMetadata


def create_teacher(
    session: Session, *, sha: str, path: Path, size: int, metadata: TeacherMetadata
) -> tuple[Teacher, bool]:
    """Return (teacher, created). The same file registered twice is the same teacher."""
    existing = session.get(Teacher, sha)
    if existing is not None:
        return existing, False
    fields = metadata.model_dump()
    fields["name"] = fields["name"] or f"{metadata.architecture}-{sha[:8]}"
    teacher = Teacher(id=sha, file_path=str(path), size_bytes=size, **fields)
    lifecycle.add_teacher(session, teacher=teacher)
    return teacher, True


def hold(session: Session, sha: str) -> Teacher | None:
    """The teacher ``sha``, kept from any delete until the session's transaction ends (a no-op
    update: PostgreSQL locks its row, SQLite takes the database's writer), or None with nothing
    kept. A delete under way is waited for, and its teacher is then gone."""
    kept = session.execute(update(Teacher).where(Teacher.id == sha).values(name=Teacher.name))
    if kept.rowcount == 0:
        session.rollback()  # SQLite's writer is not kept through what the caller does next
        return None
    return session.get(Teacher, sha, populate_existing=True)


def is_registered(session: Session, sha: str) -> bool:
    """A row for ``sha`` is committed (read afresh, never from the session's identity map)."""
    return session.scalar(select(Teacher.id).where(Teacher.id == sha)) is not None


def list_teachers(
    session: Session, *, offset: int, limit: int, status: str | None
) -> tuple[list[Teacher], int]:
    query = select(Teacher)
    if status:
        query = query.where(Teacher.status == status)
    return offset_page(session, query, order_by=[Teacher.created_at, Teacher.id], offset=offset, limit=limit)


def trained_on(session: Session, *, manifest_id: str) -> list[str]:
    """The teachers whose lineage names the manifest as what they were trained on."""
    return sorted(session.scalars(select(Teacher.id).where(Teacher.manifest_id == manifest_id)))


def dependents(session: Session, *, teacher_id: str) -> list[str]:
    jobs = session.scalars(select(Job.id).where(Job.teacher_id == teacher_id)).all()
    children = session.scalars(select(Teacher.id).where(Teacher.parent_id == teacher_id)).all()
    return [f"job {j}" for j in jobs] + [f"teacher {c[:12]}" for c in children]
