from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import IntegrityError

from nst.states import JobState, ShardState, TeacherStatus
from nst.targets import TEMPERATURE_MAX, TEMPERATURE_MIN
from service import lifecycle
from service.api.deps import (
    INT32_MAX,
    Cursor,
    Offset,
    OrdinalCursor,
    PageLimit,
    RegistryLimit,
    RowId,
    SessionDep,
    get_or_404,
    refuse_unread_parameters,
    streamed,
)
from service.api.errors import BODY, responses
from service.crud import jobs as crud
from service.exports.labels import labels_jsonl, labels_parquet
from service.manifests import reads
from service.models import Dataset, Job, Teacher
from service.queue import QueueUnavailable, enqueue_shards
from service.schemas import (
    ItemErrorPublic,
    ItemErrorsPage,
    JobCreate,
    JobPublic,
    JobsPublic,
    LabelPublic,
    LabelsPage,
    ShardPublic,
    ShardsPage,
)

router = APIRouter(prefix="/jobs", tags=["jobs"])


def job_public(session, job: Job, p: crud.JobProgress | None = None) -> JobPublic:
    p = p or crud.progress(session, job=job)
    return JobPublic(
        id=job.id,
        teacher_id=job.teacher_id,
        dataset_id=job.dataset_id,
        state=p.state,
        batch_size=job.batch_size,
        temperature=job.temperature,
        top_k=job.top_k,
        full_distribution_max=job.full_distribution_max,
        shard_size=job.shard_size,
        inference=job.inference,
        inference_used=p.inference_used,
        noised_teacher=job.noised_teacher,
        num_classes=job.num_classes,
        items_total=job.items_total,
        items_done=p.items_done,
        items_failed=p.items_failed,
        shards_total=job.shards_total,
        shards_done=p.shards_done,
        shards_failed=p.shards_failed,
        errors=p.errors,
        throughput_items_per_s=p.throughput,
        eta_s=p.eta_s,
        worker_idle_s=p.worker_idle_s,
        waiting_for_worker=p.waiting_for_worker,
        created_at=job.created_at,
        started_at=p.started_at,
        finished_at=p.finished_at,
    )


def _enqueue(job_id: int, shard_ids: list[int]) -> None:
    try:
        enqueue_shards(shard_ids)
    except QueueUnavailable as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"job {job_id} is saved but not all its shards were enqueued: {exc}; "
            f"retry with POST /jobs/{job_id}/resume",
        ) from None


@router.post("", status_code=status.HTTP_201_CREATED, responses=responses(*BODY, 409, 503))
def create_job(body: JobCreate, session: SessionDep) -> JobPublic:
    teacher = session.get(Teacher, body.teacher_id)
    if teacher is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"teacher_id: unknown teacher {body.teacher_id!r}"
        )
    if teacher.status != TeacherStatus.READY:
        reason = f" ({teacher.status_reason})" if teacher.status_reason else ""
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"teacher_id: teacher {teacher.id} is {teacher.status}{reason}, not ready",
        )
    dataset = session.get(Dataset, body.dataset_id)
    if dataset is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"dataset_id: unknown dataset {body.dataset_id}"
        )
    num_classes = len(teacher.class_names)
    if body.top_k > num_classes:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"top_k: {body.top_k} exceeds the teacher's {num_classes} classes",
        )
    options = body.model_dump(exclude={"teacher_id", "dataset_id"})
    if body.temperature == "calibrated":
        if teacher.calibrated_temperature is None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"temperature: teacher {teacher.id} has no calibrated temperature "
                f"(set one with PUT /teachers/{teacher.id}/temperature)",
            )
        # A value stored before the bounds were [0.01, 100]
        if not TEMPERATURE_MIN <= teacher.calibrated_temperature <= TEMPERATURE_MAX:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"temperature: teacher {teacher.id}'s calibrated temperature "
                f"{teacher.calibrated_temperature} is outside [{TEMPERATURE_MIN}, {TEMPERATURE_MAX:g}]; "
                "fit it again (nst evaluate --fit-temperature)",
            )
        options["temperature"] = teacher.calibrated_temperature
    job, shards = crud.create_job(
        session,
        teacher_id=teacher.id,
        dataset_id=dataset.id,
        items_total=dataset.item_count,
        num_classes=num_classes,
        options=options,
    )
    session.commit()  # the shards exist before any worker can be told about them
    _enqueue(job.id, [s.id for s in shards])
    return job_public(session, job)


@router.get("")
def list_jobs(
    session: SessionDep,
    offset: Offset = 0,
    limit: RegistryLimit = 100,
    teacher_id: Annotated[str | None, Query(max_length=64, description="Only this teacher's jobs")] = None,
    dataset_id: Annotated[
        int | None, Query(ge=1, le=INT32_MAX, description="Only jobs over this dataset")
    ] = None,
) -> JobsPublic:
    rows, count = crud.list_jobs(
        session, offset=offset, limit=limit, teacher_id=teacher_id, dataset_id=dataset_id
    )
    progress = crud.progress_of(session, rows)
    return JobsPublic(data=[job_public(session, j, progress[j.id]) for j in rows], count=count)


@router.get("/{job_id}", responses=responses(404))
def get_job(job_id: RowId, session: SessionDep) -> JobPublic:
    return job_public(session, get_or_404(session, Job, job_id))


@router.post("/{job_id}/cancel", responses=responses(404, 409))
def cancel_job(job_id: RowId, session: SessionDep) -> JobPublic:
    job = get_or_404(session, Job, job_id)
    state = crud.progress(session, job=job).state
    if state in (JobState.SUCCEEDED, JobState.CANCELLED):
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job_id} is already {state}")
    lifecycle.cancel_job(session, job=job)
    session.commit()
    return job_public(session, job)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(404, 409))
def delete_job(job_id: RowId, session: SessionDep) -> Response:
    """Delete a finished, failed or cancelled job and everything it labeled; 409 while a shard of
    it is queued or running, or while a manifest was built from it."""
    get_or_404(session, Job, job_id)
    in_manifests = f"job {job_id} is part of manifest(s) {{}}, which keep their inputs; delete those first"
    if manifests := reads.drawing_on(session, job_id=job_id):
        raise HTTPException(status.HTTP_409_CONFLICT, detail=in_manifests.format(manifests))
    try:
        deleted = crud.delete_job(session, job_id=job_id)
        session.commit()
    except IntegrityError:  # a manifest built from it since the check above
        session.rollback()
        manifests = reads.drawing_on(session, job_id=job_id)
        raise HTTPException(status.HTTP_409_CONFLICT, detail=in_manifests.format(manifests)) from None
    if not deleted:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"job {job_id} has shards queued or running: cancel it (POST /jobs/{job_id}/cancel) "
            "and delete it once they have stopped",
        )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{job_id}/resume", responses=responses(404, 409, 503))
def resume_job(job_id: RowId, session: SessionDep) -> JobPublic:
    """Re-enqueue every unfinished or failed shard. Safe at any time: a shard that runs twice
    writes each label once, and one that already finished returns at once."""
    job = get_or_404(session, Job, job_id)
    if job.cancelled_at is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job_id} is cancelled")
    shard_ids = lifecycle.resume_job(session, job_id=job_id)
    session.commit()
    _enqueue(job_id, shard_ids)
    return job_public(session, job)


@router.get(
    "/{job_id}/labels",
    response_model=None,
    responses={
        200: {
            "model": LabelsPage,
            "description": "A page of labels (JSON), or every label as JSONL or Parquet",
            "content": {"application/x-ndjson": {}, "application/vnd.apache.parquet": {}},
        },
        **responses(404),
    },
)
def get_labels(
    job_id: RowId,
    session: SessionDep,
    request: Request,
    format: Literal["json", "jsonl", "parquet"] = "json",
    cursor: Cursor = None,
    limit: PageLimit = 1000,
) -> LabelsPage | StreamingResponse:
    """A page of labels (JSON), or the whole job streamed as JSONL or Parquet (422 for
    ``cursor`` or ``limit`` with them)."""
    get_or_404(session, Job, job_id)
    refuse_unread_parameters(request, format, ("cursor", "limit"))
    if format == "jsonl":
        return streamed(session, StreamingResponse(labels_jsonl(job_id), media_type="application/x-ndjson"))
    if format == "parquet":
        response = StreamingResponse(
            labels_parquet(job_id),
            media_type="application/vnd.apache.parquet",
            headers={"Content-Disposition": f'attachment; filename="job-{job_id}-labels.parquet"'},
        )
        return streamed(session, response)
    rows, next_cursor = crud.labels_page(session, job_id=job_id, cursor=cursor, limit=limit)
    return LabelsPage(data=[label_public(label, uri) for label, uri in rows], next_cursor=next_cursor)


def label_public(label, uri: str) -> LabelPublic:
    probs, top = crud.decode_distribution(label)
    return LabelPublic(
        item_id=label.item_id,
        uri=uri,
        predicted=label.predicted,
        confidence=label.confidence,
        entropy=label.entropy,
        probs=probs,
        top_indices=top,
        rest_mass=label.rest_mass,
    )


@router.get("/{job_id}/shards", responses=responses(404))
def list_shards(
    job_id: RowId,
    session: SessionDep,
    state: Annotated[
        list[ShardState] | None, Query(description="Only shards in these states (repeat it for several)")
    ] = None,
    cursor: OrdinalCursor = None,
    limit: PageLimit = 1000,
) -> ShardsPage:
    """The job's shards in index order, a page at a time: each one's state, progress, delivery
    attempts, and the modes and workers that labeled it (for operators)."""
    get_or_404(session, Job, job_id)
    rows, next_cursor, count = crud.shards_page(
        session, job_id=job_id, states=state or [], cursor=cursor, limit=limit
    )
    data = [ShardPublic.model_validate(shard) for shard in rows]
    return ShardsPage(data=data, next_cursor=next_cursor, count=count)


@router.get("/{job_id}/errors", responses=responses(404))
def get_item_errors(
    job_id: RowId,
    session: SessionDep,
    cursor: Cursor = None,
    limit: PageLimit = 1000,
) -> ItemErrorsPage:
    """The images the job could not read, in item order, with each one's file and why, a page at
    a time, and how many there are."""
    get_or_404(session, Job, job_id)
    rows, next_cursor, count = crud.errors_page(session, job_id=job_id, cursor=cursor, limit=limit)
    data = [ItemErrorPublic(item_id=e.item_id, uri=uri, message=e.message) for e, uri in rows]
    return ItemErrorsPage(data=data, next_cursor=next_cursor, count=count)
