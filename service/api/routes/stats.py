from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Response, status

from service.api.deps import INT32_MAX, RowId, SessionDep, get_or_404
from service.api.errors import responses
from service.charts import stats_chart
from service.crud import stats as crud
from service.crud.datasets import class_counts
from service.crud.jobs import progress
from service.manifests.validation import preview_names
from service.models import Dataset, Job, Teacher
from service.schemas import ClassStats, JobStats, StatsTotals

router = APIRouter(prefix="/jobs", tags=["stats"])

ThresholdQuery = Query(0.3, ge=0.0, le=1.0, description="Count labels at or above this confidence")
LabeledQuery = Query(
    None,
    ge=1,
    le=INT32_MAX,
    description="Labeled dataset to compare with (same classes, same order); "
    "default: the newest labeled train split whose classes match the teacher's",
)
MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml"}


def _labeled_dataset(session, dataset_id: int | None, classes: list[str]) -> Dataset | None:
    if dataset_id is None:
        return crud.matching_labeled_dataset(session, classes=classes)
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"labeled_dataset_id: unknown dataset {dataset_id}"
        )
    if dataset.classes != classes:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"labeled_dataset_id: dataset {dataset_id} has classes "
            f"{preview_names(dataset.classes or [])} but the job's teacher has {preview_names(classes)}",
        )
    return dataset


def job_stats(session, job: Job, threshold: float, labeled_dataset_id: int | None) -> JobStats:
    names = session.get(Teacher, job.teacher_id).class_names
    labeled = _labeled_dataset(session, labeled_dataset_id, names)
    labeled_counts = class_counts(session, dataset=labeled) if labeled else None
    aggregates = crud.class_aggregates(session, job_id=job.id, num_classes=len(names), threshold=threshold)
    classes = {
        name: ClassStats(
            index=i,
            pseudo_labeled=a.count,
            above_threshold=a.above,
            mean_confidence=a.confidence_sum / a.count if a.count else None,
            histogram=a.histogram,
            labeled=labeled_counts[name] if labeled_counts else None,
        )
        for i, (name, a) in enumerate(zip(names, aggregates, strict=True))
    }
    return JobStats(
        job_id=job.id,
        teacher_id=job.teacher_id,
        dataset_id=job.dataset_id,
        state=progress(session, job=job).state,
        threshold=threshold,
        labeled_dataset_id=labeled.id if labeled else None,
        bin_edges=crud.BIN_EDGES,
        classes=classes,
        totals=StatsTotals(
            pseudo_labeled=sum(a.count for a in aggregates),
            above_threshold=sum(a.above for a in aggregates),
            labeled=sum(labeled_counts.values()) if labeled_counts else None,
        ),
        imbalance_ratio=crud.imbalance_ratio([a.count for a in aggregates]),
        imbalance_ratio_above_threshold=crud.imbalance_ratio([a.above for a in aggregates]),
        labeled_imbalance_ratio=crud.imbalance_ratio(list(labeled_counts.values()))
        if labeled_counts
        else None,
    )


@router.get("/{job_id}/stats", responses=responses(404))
def get_stats(
    job_id: RowId,
    session: SessionDep,
    threshold: float = ThresholdQuery,
    labeled_dataset_id: int | None = LabeledQuery,
) -> JobStats:
    """Per class: pseudo labels, those at or above the threshold, mean confidence, a histogram
    in ten fixed bins, and the labeled dataset's count; totals and imbalance ratios. Works on a
    running job too (on the labels so far)."""
    return job_stats(session, get_or_404(session, Job, job_id), threshold, labeled_dataset_id)


@router.get(
    "/{job_id}/stats/chart",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "The chart"},
        **responses(404),
    },
)
def get_stats_chart(
    job_id: RowId,
    session: SessionDep,
    threshold: float = ThresholdQuery,
    labeled_dataset_id: int | None = LabeledQuery,
    format: Literal["png", "svg"] = "png",
) -> Response:
    """The statistics as a bar chart: per class, pseudo-labeled before and after the threshold,
    beside the labeled count."""
    stats = job_stats(session, get_or_404(session, Job, job_id), threshold, labeled_dataset_id)
    return Response(stats_chart(stats, fmt=format), media_type=MEDIA_TYPES[format])
