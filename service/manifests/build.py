"""Write a manifest: its row, its inputs, its per-class plan and its entries; and delete one."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from service.manifests import selection
from service.manifests.addressing import canonical_params, content_id
from service.manifests.validation import ManifestRequestError, validate_inputs
from service.models import Dataset, Item, Job, Manifest, ManifestClass, ManifestEntry, ManifestInput
from service.schemas import ManifestCreate


@dataclass
class PreparedManifest:
    id: str
    classes: list[str]
    params: dict
    labeled: list[Dataset]
    jobs: list[Job]


def prepare_manifest(session: Session, *, request: ManifestCreate) -> PreparedManifest:
    """Validate the inputs and compute the ID; writes nothing."""
    params = canonical_params(request)
    labeled, jobs, classes = validate_inputs(session, params)
    manifest_id = content_id(session, params=params, classes=classes, labeled=labeled, jobs=jobs)
    return PreparedManifest(manifest_id, classes, params, labeled, jobs)


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


def _targets(params: dict, *, labeled: list[int], pool_size: int, num_classes: int) -> list[int | None]:
    if not params["balance"]:
        return [None] * num_classes
    given = params["target_per_class"]
    if params["target_mode"] == "even":
        return [given or math.ceil(pool_size / num_classes)] * num_classes
    total = given * num_classes if given else pool_size
    return selection.distribution_targets(labeled, total=total)


def _add_inputs(session: Session, prepared: PreparedManifest, *, manifest_key: int) -> None:
    inputs = [ManifestInput(dataset_id=d.id, job_id=None) for d in prepared.labeled]
    inputs += [ManifestInput(dataset_id=j.dataset_id, job_id=j.id) for j in prepared.jobs]
    for position, row in enumerate(inputs):
        row.manifest_key, row.position = manifest_key, position
    session.add_all(inputs)


def _planned_counts(*, available: int, target: int | None) -> tuple[int, int]:
    """A class's pseudo entries and samples, as ``selection.insert_pseudo_entries`` writes them:
    every label at or above the threshold once without balancing; with it, ``target`` samples
    over ``min(available, target)`` images (a short class repeats each of its images, a full one
    keeps ``target`` of them once)."""
    if target is None:
        return available, available
    return min(available, target), target if available else 0


def _add_plan(session: Session, prepared: PreparedManifest, *, manifest_key: int) -> None:
    """Each class's threshold, target and counts, decided before any entry is written: the
    entries follow the plan exactly (tests/crud/test_selection.py checks the counts against
    them), so no pass over the written entries is needed to count them."""
    params, num_classes = prepared.params, len(prepared.classes)
    labeled_ids = [d.id for d in prepared.labeled]
    labeled = [0] * num_classes
    if labeled_ids:
        labeled = _labeled_counts(session, dataset_ids=labeled_ids, num_classes=num_classes)
    if not prepared.jobs:
        session.add_all(
            ManifestClass(
                manifest_key=manifest_key,
                class_index=i,
                labeled=labeled[i],
                pseudo_unique=0,
                pseudo_with_copies=0,
            )
            for i in range(num_classes)
        )
        session.flush()
        return
    threshold = params["threshold"]
    histogram = selection.pool_histogram(session, job_ids=params["job_ids"], threshold=threshold)
    pool_size = sum(sum(bins.values()) for bins in histogram.values())
    if not pool_size and not labeled_ids:
        raise ManifestRequestError(
            "threshold",
            f"no pseudo label of job(s) {params['job_ids']} is at or above {threshold}, and no "
            "labeled dataset is given: the manifest would be empty",
        )
    targets = _targets(params, labeled=labeled, pool_size=pool_size, num_classes=num_classes)
    rows = []
    for i, target in enumerate(targets):
        class_threshold, available, cutoff = selection.class_plan(
            histogram.get(i, {}), threshold=threshold, target=target, per_class=params["per_class_thresholds"]
        )
        unique, with_copies = _planned_counts(available=available, target=target)
        rows.append(
            ManifestClass(
                manifest_key=manifest_key,
                class_index=i,
                threshold=class_threshold,
                target=target,
                available=available,
                cutoff=cutoff,
                labeled=labeled[i],
                pseudo_unique=unique,
                pseudo_with_copies=with_copies,
            )
        )
    session.add_all(rows)
    session.flush()


def build_manifest(session: Session, *, prepared: PreparedManifest) -> Manifest:
    """Write the manifest, its plan and its entries in the caller's transaction (all or nothing).
    The manifest row goes first: a concurrent identical request then fails on its ID at once.
    ``ManifestRequestError`` when the plan finds nothing to write (roll back)."""
    if session.get_bind().dialect.name == "postgresql":
        # A million labels' sorts would spill to disk at the default 4MB; until the commit only.
        session.execute(text("SET LOCAL work_mem = '64MB'"))
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
        selection.insert_pseudo_entries(
            session,
            manifest_key=key,
            job_ids=params["job_ids"],
            balance=params["balance"],
            keep_most_confident=not params["per_class_thresholds"],
            seed=params["seed"] or 0,
        )
    return manifest


def remove_manifest(session: Session, *, manifest: Manifest) -> None:
    """Its entries (no key of theirs cascades: see ``ManifestEntry``), then the row, whose
    inputs and plan cascade, in the caller's transaction."""
    session.execute(delete(ManifestEntry).where(ManifestEntry.manifest_key == manifest.key))
    session.delete(manifest)
