"""Read manifests back: by ID, their per-class plan, their inputs and their entries."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from service.models import Item, Job, Label, Manifest, ManifestClass, ManifestEntry, ManifestInput
from service.pagination import Page, cut, from_cursor, offset_page


def by_id(session: Session, manifest_id: str) -> Manifest | None:
    return session.scalar(select(Manifest).where(Manifest.id == manifest_id))


def drawing_on(session: Session, *, dataset_id: int | None = None, job_id: int | None = None) -> list[str]:
    """The IDs of the manifests built from a labeled dataset or a job's labels: they keep them
    (``manifest_inputs``' keys restrict their deletion)."""
    uses = ManifestInput.job_id == job_id if job_id is not None else ManifestInput.dataset_id == dataset_id
    query = (
        select(Manifest.id)
        .join(ManifestInput, ManifestInput.manifest_key == Manifest.key)
        .where(uses)
        .distinct()
    )
    return sorted(session.scalars(query))


def class_rows_of(session: Session, keys: Sequence[int]) -> dict[int, list[ManifestClass]]:
    """Each manifest's per-class plan in class order, by manifest key, in one query."""
    rows: dict[int, list[ManifestClass]] = {key: [] for key in keys}
    query = select(ManifestClass).where(ManifestClass.manifest_key.in_(keys))
    for row in session.scalars(query.order_by(ManifestClass.manifest_key, ManifestClass.class_index)):
        rows[row.manifest_key].append(row)
    return rows


def provenance_of(session: Session, keys: Sequence[int]) -> dict[int, dict[str, list]]:
    """Each manifest's inputs (datasets, jobs and their teachers), by manifest key, in one query."""
    inputs: dict[int, list] = {key: [] for key in keys}
    for row in session.execute(
        select(ManifestInput.manifest_key, ManifestInput.dataset_id, ManifestInput.job_id, Job.teacher_id)
        .outerjoin(Job, Job.id == ManifestInput.job_id)
        .where(ManifestInput.manifest_key.in_(keys))
        .order_by(ManifestInput.manifest_key, ManifestInput.position)
    ):
        inputs[row.manifest_key].append(row)
    return {key: _provenance(rows) for key, rows in inputs.items()}


def _provenance(rows) -> dict[str, list]:
    pseudo = [r for r in rows if r.job_id is not None]
    return {
        "teacher_ids": sorted({r.teacher_id for r in pseudo}),
        "job_ids": [r.job_id for r in pseudo],
        "labeled_dataset_ids": [r.dataset_id for r in rows if r.job_id is None],
        "unlabeled_dataset_ids": sorted({r.dataset_id for r in pseudo}),
    }


def list_manifests(session: Session, *, offset: int, limit: int) -> tuple[list[Manifest], int]:
    return offset_page(session, select(Manifest), order_by=[Manifest.key], offset=offset, limit=limit)


def entries_page(session: Session, *, manifest: Manifest, cursor: int | None, limit: int) -> Page:
    """Entries in item order with each item's URI and, for soft targets, the job's stored
    distribution; the cursor is the next item ID."""
    page = select(ManifestEntry).where(ManifestEntry.manifest_key == manifest.key)
    # Cut the page before joining: right after a build the planner has no statistics for the
    # new entries and would otherwise join all of them first.
    page = from_cursor(page, key=ManifestEntry.item_id, cursor=cursor, limit=limit)
    entry = aliased(ManifestEntry, page.subquery())
    query = select(entry, Item.uri).join(Item, Item.id == entry.item_id)
    if manifest.params.get("soft"):
        query = query.add_columns(Label.probs, Label.top_indices, Label.rest_mass).outerjoin(
            Label, (Label.job_id == entry.job_id) & (Label.item_id == entry.item_id)
        )
    rows = session.execute(query.order_by(entry.item_id)).all()
    return cut(rows, limit=limit, key=lambda row: row[0].item_id)
