"""Write a manifest: its row, its inputs, its per-class plan and its entries."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from service.manifests import selection
from service.manifests.addressing import canonical_params, content_id
from service.manifests.validation import validate_inputs
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


def _add_plan(session: Session, prepared: PreparedManifest, *, manifest_key: int) -> None:
    params, num_classes = prepared.params, len(prepared.classes)
    if not prepared.jobs:
        session.add_all(
            ManifestClass(
                manifest_key=manifest_key, class_index=i, labeled=0, pseudo_unique=0, pseudo_with_copies=0
            )
            for i in range(num_classes)
        )
        session.flush()
        return
    threshold = params["threshold"]
    histogram = selection.pool_histogram(session, job_ids=params["job_ids"], threshold=threshold)
    labeled = []
    if params["balance"] and params["target_mode"] == "labeled_distribution":
        labeled = _labeled_counts(session, dataset_ids=params["labeled_dataset_ids"], num_classes=num_classes)
    pool_size = sum(sum(bins.values()) for bins in histogram.values())
    targets = _targets(params, labeled=labeled, pool_size=pool_size, num_classes=num_classes)
    rows = []
    for i, target in enumerate(targets):
        class_threshold, available, cutoff = selection.class_plan(
            histogram.get(i, {}), threshold=threshold, target=target, per_class=params["per_class_thresholds"]
        )
        rows.append(
            ManifestClass(
                manifest_key=manifest_key,
                class_index=i,
                threshold=class_threshold,
                target=target,
                available=available,
                cutoff=cutoff,
                labeled=0,
                pseudo_unique=0,
                pseudo_with_copies=0,
            )
        )
    session.add_all(rows)
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
    _record_counts(session, manifest_key=key)
    return manifest
