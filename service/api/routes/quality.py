from fastapi import APIRouter, HTTPException, Query, status

from service.api.deps import RowId, SessionDep, get_or_404
from service.api.errors import responses
from service.crud.quality import ClassCounts, class_counts
from service.models import Dataset, Job, Teacher
from service.schemas import ClassQuality, JobQuality, QualityPoint

router = APIRouter(prefix="/jobs", tags=["quality"])

DEFAULT_THRESHOLDS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95,0.99"
MAX_THRESHOLDS = 101


def _thresholds(raw: str) -> list[float]:
    try:
        values = [float(part) for part in raw.split(",")]
    except ValueError:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"thresholds: {raw!r} is not a comma-separated list of numbers",
        ) from None
    outside = [v for v in values if not 0.0 <= v <= 1.0]
    if outside:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"thresholds: {outside} lie outside [0, 1]"
        )
    if len(values) > MAX_THRESHOLDS:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"thresholds: {len(values)} given, at most {MAX_THRESHOLDS}",
        )
    return sorted(set(values))


def _points(thresholds: list[float], labels: int, kept: list[int], right: list[int]) -> list[QualityPoint]:
    return [
        QualityPoint(
            threshold=t,
            kept=k,
            right=r,
            coverage=k / labels if labels else None,
            precision=r / k if k else None,
        )
        for t, k, r in zip(thresholds, kept, right, strict=True)
    ]


@router.get("/{job_id}/quality", responses=responses(404))
def job_quality(
    job_id: RowId,
    session: SessionDep,
    thresholds: str = Query(
        DEFAULT_THRESHOLDS, description="Comma-separated confidence thresholds in [0, 1]"
    ),
) -> JobQuality:
    """For a job over a labeled dataset (a probe held out from training): per threshold, the
    share of labels kept (coverage) and the share of those whose predicted class is the true one
    (precision), overall and per predicted class. Counts the labels written so far."""
    job = get_or_404(session, Job, job_id)
    values = _thresholds(thresholds)
    dataset = session.get(Dataset, job.dataset_id)
    if dataset.kind != "labeled":
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"job_id: job {job_id} labeled dataset {dataset.id}, which is unlabeled; "
            "quality needs a job over a labeled dataset",
        )
    names = session.get(Teacher, job.teacher_id).class_names
    counts = class_counts(
        session, job_id=job.id, thresholds=values, dataset_classes=dataset.classes, teacher_classes=names
    )
    total = ClassCounts(
        labels=sum(c.labels for c in counts),
        kept=[sum(column) for column in zip(*(c.kept for c in counts), strict=True)],
        right=[sum(column) for column in zip(*(c.right for c in counts), strict=True)],
    )
    return JobQuality(
        job_id=job.id,
        teacher_id=job.teacher_id,
        dataset_id=dataset.id,
        labels=total.labels,
        overall=_points(values, total.labels, total.kept, total.right),
        classes={
            name: ClassQuality(index=i, labels=c.labels, points=_points(values, c.labels, c.kept, c.right))
            for i, (name, c) in enumerate(zip(names, counts, strict=True))
        },
    )
