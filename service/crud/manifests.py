"""Training manifests: validate a request, address it by content, build it, read it back.

A manifest is immutable. Its ID is a sha256 over the canonical request, the classes, each job's
teacher and a digest of its labels, and each labeled dataset's size, so the same request gives
the same ID (and the same entries), and any new input gives a new one.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased

from service.crud import selection
from service.crud.jobs import progress
from service.models import (
    Dataset,
    Item,
    Job,
    Label,
    Manifest,
    ManifestClass,
    ManifestEntry,
    ManifestInput,
    Teacher,
)
from service.schemas import ManifestCreate

# Part of every ID: changing the selection rules must not reuse the IDs of the old ones.
ALGORITHM = "nst-manifest-v1"
_LIST_PREVIEW = 12


class ManifestRequestError(ValueError):
    """The request cannot be built; the message starts with the field at fault."""

    def __init__(self, field: str, message: str, *, conflict: bool = False):
        super().__init__(f"{field}: {message}")
        self.conflict = conflict  # the request is fine, the state of an input is not (yet)


@dataclass
class PreparedManifest:
    id: str
    classes: list[str]
    params: dict
    labeled: list[Dataset]
    jobs: list[Job]


# --- validation -------------------------------------------------------------------------------


def _labeled_dataset(session: Session, dataset_id: int) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise ManifestRequestError("labeled_dataset_ids", f"unknown dataset {dataset_id}")
    if dataset.kind != "labeled" or dataset.split != "train":
        raise ManifestRequestError(
            "labeled_dataset_ids",
            f"dataset {dataset_id} is {dataset.kind} ({dataset.split or 'no'} split); "
            "manifests train on labeled train splits",
        )
    return dataset


def _finished_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise ManifestRequestError("job_ids", f"unknown job {job_id}")
    state = progress(session, job=job).state
    if state != "succeeded":
        raise ManifestRequestError("job_ids", f"job {job_id} is {state}, not succeeded", conflict=True)
    return job


def preview_names(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > _LIST_PREVIEW else ""
    return "[" + ", ".join(map(repr, names[:_LIST_PREVIEW])) + more + "]"


def _common_classes(session: Session, labeled: list[Dataset], jobs: list[Job]) -> list[str]:
    """Every input's class list, which must be one list: same names in the same order."""
    sources = [("labeled_dataset_ids", f"dataset {d.id}", d.classes or []) for d in labeled]
    for job in jobs:
        names = session.get(Teacher, job.teacher_id).class_names
        sources.append(("job_ids", f"job {job.id}'s teacher {job.teacher_id[:12]}", names))
    _, first_name, first = sources[0]
    for field, name, classes in sources[1:]:
        if classes != first:
            at = next(
                (i for i, pair in enumerate(zip(classes, first, strict=False)) if pair[0] != pair[1]), None
            )
            where = f"first difference at index {at}" if at is not None else "different lengths"
            raise ManifestRequestError(
                field,
                f"class lists differ ({where}): {name} has {preview_names(classes)} "
                f"but {first_name} has {preview_names(first)}",
            )
    return list(first)


def _check_no_overlap(labeled: list[Dataset], jobs: list[Job]) -> None:
    labeled_ids = {d.id for d in labeled}
    for job in jobs:
        if job.dataset_id in labeled_ids:
            raise ManifestRequestError(
                "job_ids",
                f"job {job.id} labeled dataset {job.dataset_id}, which is also a labeled input; "
                "an image would be both labeled and pseudo-labeled",
            )


def _check_distribution(params: dict, labeled: list[Dataset]) -> None:
    if params["target_mode"] == "labeled_distribution" and not any(d.item_count for d in labeled):
        raise ManifestRequestError("target_mode", "the labeled datasets are empty: no distribution to follow")


# --- the content address ----------------------------------------------------------------------


def canonical_params(request: ManifestCreate) -> dict:
    """The request with its lists sorted and deduplicated, and null wherever a value cannot
    change the entries (so that it cannot change the ID either)."""
    params = request.model_dump()
    params["labeled_dataset_ids"] = sorted(set(request.labeled_dataset_ids))
    params["job_ids"] = sorted(set(request.job_ids))
    pseudo_only = [name for name in params if name not in ("labeled_dataset_ids", "job_ids")]
    if not params["job_ids"]:  # a labeled-only manifest (how the first teacher is trained)
        return params | dict.fromkeys(pseudo_only)
    if not request.soft:
        params["temperature"] = None
    if not request.balance:
        params |= dict.fromkeys(("target_per_class", "target_mode", "seed"))
    return params


def _job_digest(session: Session, job: Job) -> dict:
    """Integer aggregates of the job's labels: exact, and the same on both databases."""
    count, item_sum, class_sum = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(Label.item_id), 0),
            func.coalesce(func.sum(Label.predicted), 0),
        ).where(Label.job_id == job.id)
    ).one()
    return {
        "job_id": job.id,
        "teacher_id": job.teacher_id,
        "dataset_id": job.dataset_id,
        "labels": [int(count), int(item_sum), int(class_sum)],
    }


def content_id(
    session: Session, *, params: dict, classes: list[str], labeled: list[Dataset], jobs: list[Job]
) -> str:
    document = {
        "algorithm": ALGORITHM,
        "params": params,
        "classes": classes,
        "jobs": [_job_digest(session, job) for job in jobs],
        "labeled": [{"dataset_id": d.id, "item_count": d.item_count} for d in labeled],
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def prepare_manifest(session: Session, *, request: ManifestCreate) -> PreparedManifest:
    """Validate the inputs and compute the ID; writes nothing."""
    params = canonical_params(request)
    labeled = [_labeled_dataset(session, i) for i in params["labeled_dataset_ids"]]
    jobs = [_finished_job(session, i) for i in params["job_ids"]]
    _check_no_overlap(labeled, jobs)
    _check_distribution(params, labeled)
    classes = _common_classes(session, labeled, jobs)
    manifest_id = content_id(session, params=params, classes=classes, labeled=labeled, jobs=jobs)
    return PreparedManifest(manifest_id, classes, params, labeled, jobs)


# --- building ---------------------------------------------------------------------------------


def _labeled_counts(session: Session, *, dataset_ids: list[int], num_classes: int) -> list[int]:
    rows = session.execute(
        select(Item.label, func.count())
        .where(Item.dataset_id.in_(dataset_ids), Item.label.is_not(None))
        .group_by(Item.label)
    )
    counts = [0] * num_classes
    for label, count in rows:
        counts[label] = count
    return counts


def _pool_size(session: Session, params: dict) -> int:
    return selection.filtered_pool_size(session, job_ids=params["job_ids"], threshold=params["threshold"])


def _targets(session: Session, prepared: PreparedManifest) -> list[int | None]:
    params, num_classes = prepared.params, len(prepared.classes)
    if not params["balance"]:
        return [None] * num_classes
    given = params["target_per_class"]
    if params["target_mode"] == "even":
        return [given or math.ceil(_pool_size(session, params) / num_classes)] * num_classes
    labeled = _labeled_counts(session, dataset_ids=params["labeled_dataset_ids"], num_classes=num_classes)
    total = given * num_classes if given else _pool_size(session, params)
    return selection.distribution_targets(labeled, total=total)


def _add_inputs(session: Session, prepared: PreparedManifest, *, manifest_key: int) -> None:
    inputs = [ManifestInput(dataset_id=d.id, job_id=None) for d in prepared.labeled]
    inputs += [ManifestInput(dataset_id=j.dataset_id, job_id=j.id) for j in prepared.jobs]
    for position, row in enumerate(inputs):
        row.manifest_key, row.position = manifest_key, position
    session.add_all(inputs)


def _add_plan(session: Session, prepared: PreparedManifest, *, manifest_key: int) -> None:
    threshold = prepared.params["threshold"]
    session.add_all(
        ManifestClass(
            manifest_key=manifest_key,
            class_index=i,
            threshold=threshold,
            target=target,
            labeled=0,
            pseudo_unique=0,
            pseudo_with_copies=0,
        )
        for i, target in enumerate(_targets(session, prepared))
    )
    session.flush()


def _record_counts(session: Session, *, manifest_key: int) -> None:
    rows = session.execute(
        select(ManifestEntry.source, ManifestEntry.target_class, func.count(), func.sum(ManifestEntry.copies))
        .where(ManifestEntry.manifest_key == manifest_key)
        .group_by(ManifestEntry.source, ManifestEntry.target_class)
    )
    counts: dict[int, dict] = {}
    for source, index, unique, copies in rows:
        empty = {"labeled": 0, "pseudo_unique": 0, "pseudo_with_copies": 0}
        row = counts.setdefault(index, {"manifest_key": manifest_key, "class_index": index, **empty})
        if source == "labeled":
            row["labeled"] = unique
        else:
            row["pseudo_unique"], row["pseudo_with_copies"] = unique, int(copies)
    if counts:
        session.execute(update(ManifestClass), list(counts.values()))


def build_manifest(session: Session, *, prepared: PreparedManifest) -> Manifest:
    """Write the manifest, its plan and its entries in the caller's transaction (all or nothing).
    The manifest row goes first: a concurrent identical request then fails on its ID at once."""
    manifest = Manifest(id=prepared.id, classes=prepared.classes, params=prepared.params)
    session.add(manifest)
    session.flush()
    key, params = manifest.key, prepared.params
    _add_inputs(session, prepared, manifest_key=key)
    _add_plan(session, prepared, manifest_key=key)
    if prepared.labeled:
        dataset_ids = [d.id for d in prepared.labeled]
        selection.insert_labeled_entries(session, manifest_key=key, dataset_ids=dataset_ids)
    if prepared.jobs:
        if params["per_class_thresholds"]:
            selection.raise_thresholds_to_targets(
                session, manifest_key=key, job_ids=params["job_ids"], threshold=params["threshold"]
            )
        selection.insert_pseudo_entries(
            session,
            manifest_key=key,
            job_ids=params["job_ids"],
            balance=params["balance"],
            keep_most_confident=not params["per_class_thresholds"],
            seed=params["seed"] or 0,
        )
    _record_counts(session, manifest_key=key)
    return manifest


# --- reading ----------------------------------------------------------------------------------


def by_id(session: Session, manifest_id: str) -> Manifest | None:
    return session.scalar(select(Manifest).where(Manifest.id == manifest_id))


def class_rows(session: Session, *, manifest_key: int) -> list[ManifestClass]:
    query = select(ManifestClass).where(ManifestClass.manifest_key == manifest_key)
    return list(session.scalars(query.order_by(ManifestClass.class_index)))


def provenance(session: Session, *, manifest_key: int) -> dict[str, list]:
    rows = session.execute(
        select(ManifestInput.dataset_id, ManifestInput.job_id, Job.teacher_id)
        .outerjoin(Job, Job.id == ManifestInput.job_id)
        .where(ManifestInput.manifest_key == manifest_key)
        .order_by(ManifestInput.position)
    ).all()
    pseudo = [r for r in rows if r.job_id is not None]
    return {
        "teacher_ids": sorted({r.teacher_id for r in pseudo}),
        "job_ids": [r.job_id for r in pseudo],
        "labeled_dataset_ids": [r.dataset_id for r in rows if r.job_id is None],
        "unlabeled_dataset_ids": sorted({r.dataset_id for r in pseudo}),
    }


def list_manifests(session: Session, *, offset: int, limit: int) -> tuple[list[Manifest], int]:
    count = session.scalar(select(func.count()).select_from(Manifest)) or 0
    query = select(Manifest).order_by(Manifest.key).offset(offset).limit(limit)
    return list(session.scalars(query)), count


def entries_page(
    session: Session, *, manifest: Manifest, cursor: int | None, limit: int
) -> tuple[list, int | None]:
    """Entries in item order with each item's URI and, for soft targets, the job's stored
    distribution; the cursor is the next item ID."""
    page = select(ManifestEntry).where(ManifestEntry.manifest_key == manifest.key)
    if cursor is not None:
        page = page.where(ManifestEntry.item_id >= cursor)
    # Cut the page before joining: right after a build the planner has no statistics for the
    # new entries and would otherwise join all of them first.
    entry = aliased(ManifestEntry, page.order_by(ManifestEntry.item_id).limit(limit + 1).subquery())
    query = select(entry, Item.uri).join(Item, Item.id == entry.item_id)
    if manifest.params.get("soft"):
        query = query.add_columns(Label.probs, Label.top_indices, Label.rest_mass).outerjoin(
            Label, (Label.job_id == entry.job_id) & (Label.item_id == entry.item_id)
        )
    rows = session.execute(query.order_by(entry.item_id)).all()
    next_cursor = rows[limit][0].item_id if len(rows) > limit else None
    return rows[:limit], next_cursor
