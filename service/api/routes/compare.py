"""Label flips between two jobs over the same dataset: how many items changed class, from which
class to which, and the flipped items themselves."""

from fastapi import APIRouter, HTTPException, Query, status

from service.api.deps import INT32_MAX, INT64_MAX, RowId, SessionDep, get_or_404
from service.api.errors import responses
from service.api.routes.browse import TopKQuery, tile
from service.browse_schemas import ClassChange, FlipsPage, FlipTile, JobComparison
from service.crud import compare as crud
from service.crud.browse import job_classes
from service.models import Job

router = APIRouter(prefix="/jobs/{job_id}/compare/{other_job_id}", tags=["compare"], responses=responses(404))

UNPROCESSABLE = status.HTTP_422_UNPROCESSABLE_CONTENT


def _comparable(session, job_id: int, other_job_id: int) -> tuple[Job, Job, list[str]]:
    job, other = get_or_404(session, Job, job_id), get_or_404(session, Job, other_job_id)
    if job.dataset_id != other.dataset_id:
        raise HTTPException(
            UNPROCESSABLE,
            detail=f"other_job_id: job {other.id} labeled dataset {other.dataset_id}, "
            f"job {job.id} dataset {job.dataset_id}; flips need the same dataset",
        )
    classes = job_classes(session, job=job)
    if job_classes(session, job=other) != classes:
        raise HTTPException(
            UNPROCESSABLE,
            detail=f"other_job_id: the teachers of jobs {job.id} and {other.id} have different class lists",
        )
    return job, other, classes


@router.get("")
def compare_jobs(job_id: RowId, other_job_id: RowId, session: SessionDep) -> JobComparison:
    """Items labeled by both jobs, how many the second labels differently, and every
    from -> to change of class with its count (SQL aggregates over the joined labels)."""
    job, other, classes = _comparable(session, job_id, other_job_id)
    compared, changes = crud.summary(session, job_a=job, job_b=other)
    flipped = sum(n for _, _, n in changes)
    return JobComparison(
        job_id=job.id,
        other_job_id=other.id,
        dataset_id=job.dataset_id,
        classes=classes,
        compared=compared,
        flipped=flipped,
        flip_rate=flipped / compared if compared else None,
        changes=[ClassChange(from_class=a, to_class=b, count=n) for a, b, n in changes],
    )


@router.get("/flips")
def list_flips(
    job_id: RowId,
    other_job_id: RowId,
    session: SessionDep,
    from_class: int | None = Query(
        None, ge=0, le=INT32_MAX, description="Only items this job put in this class"
    ),
    to_class: int | None = Query(
        None, ge=0, le=INT32_MAX, description="Only items the other job put in this class"
    ),
    cursor: int | None = Query(None, ge=0, le=INT64_MAX, description="Next item ID (from next_cursor)"),
    limit: int = Query(100, ge=1, le=500),
    top_k: int = TopKQuery,
) -> FlipsPage:
    """The flipped items in item order, each as the other job labeled it, with this job's class
    and confidence."""
    job, other, classes = _comparable(session, job_id, other_job_id)
    for name, value in (("from_class", from_class), ("to_class", to_class)):
        if value is not None and value >= len(classes):
            raise HTTPException(UNPROCESSABLE, detail=f"{name}: {value} is not below {len(classes)} classes")
    rows, next_cursor = crud.flip_tiles(
        session,
        job_a=job,
        job_b=other,
        classes=classes,
        from_class=from_class,
        to_class=to_class,
        cursor=cursor,
        limit=limit,
        top_k=top_k,
    )
    data = [
        FlipTile(**tile(row).model_dump(), from_class=a_class, from_confidence=a_confidence)
        for row, a_class, a_confidence in rows
    ]
    return FlipsPage(classes=classes, data=data, next_cursor=next_cursor)
