"""Check a manifest request's inputs against the database; the error names the field at fault."""

from __future__ import annotations

from sqlalchemy.orm import Session

from nst.states import JobState
from service.crud.jobs import progress
from service.models import Dataset, Job, Teacher

_LIST_PREVIEW = 12
_MAX_SAMPLES = 2**31 - 1  # the largest INTEGER


class ManifestRequestError(ValueError):
    """The request cannot be built; the message starts with the field at fault."""

    def __init__(self, field: str, message: str, *, conflict: bool = False):
        super().__init__(f"{field}: {message}")
        self.conflict = conflict  # the request is fine, the state of an input is not (yet)


def validate_inputs(session: Session, params: dict) -> tuple[list[Dataset], list[Job], list[str]]:
    """The canonical request's labeled datasets and jobs, and the one class list they share."""
    labeled = [_labeled_dataset(session, i) for i in params["labeled_dataset_ids"]]
    jobs = [_finished_job(session, i) for i in params["job_ids"]]
    _check_no_overlap(labeled, jobs)
    _check_distribution(params, labeled)
    classes = _common_classes(session, labeled, jobs)
    _check_size(params, num_classes=len(classes))
    return labeled, jobs, classes


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
    dataset = session.get(Dataset, job.dataset_id)
    if dataset.kind == "labeled" and dataset.split != "train":
        raise ManifestRequestError(
            "job_ids",
            f"job {job_id} labeled dataset {dataset.id}, a {dataset.split or 'no'} split held out from "
            "training (a probe): its images would train the student they are to score",
        )
    state = progress(session, job=job).state
    if state != JobState.SUCCEEDED:
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


def _check_size(params: dict, *, num_classes: int) -> None:
    """A class's target and an entry's copies are INTEGER columns, and with 'labeled_distribution'
    one class may take the whole ``target_per_class * num_classes``."""
    given = params["target_per_class"]
    if given and given * num_classes > _MAX_SAMPLES:
        raise ManifestRequestError(
            "target_per_class",
            f"{given} for each of {num_classes} classes is {given * num_classes:,} samples; "
            f"a manifest holds at most {_MAX_SAMPLES:,}",
        )


def _check_distribution(params: dict, labeled: list[Dataset]) -> None:
    if params["target_mode"] == "labeled_distribution" and not any(d.item_count for d in labeled):
        raise ManifestRequestError("target_mode", "the labeled datasets are empty: no distribution to follow")
