"""The label browser's pages: a job's labels and a manifest's entries, filtered by class and
confidence, sorted by confidence, keyset-paged."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status

from service.api.deps import INT32_MAX, HashId, RowId, SessionDep, get_or_404
from service.api.errors import responses
from service.browse_schemas import ClassProbability, EntryTile, EntryTilesPage, Tile, TilesPage
from service.crud import browse as crud
from service.models import Job, Manifest

router = APIRouter(tags=["browse"])

UNPROCESSABLE = status.HTTP_422_UNPROCESSABLE_CONTENT


def filters(
    class_index: int | None = Query(
        None, ge=0, le=INT32_MAX, description="Only this class (predicted or target)"
    ),
    min_confidence: float | None = Query(None, ge=0.0, le=1.0, description="Confidence at or above"),
    max_confidence: float | None = Query(None, ge=0.0, le=1.0, description="Confidence at or below"),
) -> crud.Filters:
    if min_confidence is not None and max_confidence is not None and min_confidence > max_confidence:
        raise HTTPException(
            UNPROCESSABLE,
            detail=f"min_confidence: {min_confidence} is above max_confidence {max_confidence}",
        )
    return crud.Filters(class_index, min_confidence, max_confidence)


FiltersDep = Annotated[crud.Filters, Depends(filters)]
OrderQuery = Query("confidence_desc", description="Sort by confidence (then item ID), or by item ID")
CursorQuery = Query(
    None, max_length=64, pattern=r"^[\x20-\x7e]*$", description="From next_cursor of the previous page"
)
LimitQuery = Query(100, ge=1, le=500)
TopKQuery = Query(5, ge=1, le=20, description="The teacher's most probable classes per tile")


def _check_class(filters: crud.Filters, classes: list[str]) -> None:
    if filters.class_index is not None and filters.class_index >= len(classes):
        raise HTTPException(
            UNPROCESSABLE, detail=f"class_index: {filters.class_index} is not below {len(classes)} classes"
        )


def _tile_fields(row: crud.TileRow) -> dict:
    return {
        "item_id": row.item_id,
        "uri": row.uri,
        "class_index": row.class_index,
        "confidence": row.confidence,
        "entropy": row.entropy,
        "top": [ClassProbability(index=i, probability=p) for i, p in row.top],
        "rest_mass": row.rest_mass,
        "true_class": row.true_class,
        "correct": None if row.true_class is None else row.true_class == row.class_index,
    }


def tile(row: crud.TileRow) -> Tile:
    return Tile(**_tile_fields(row))


def _paging(call):
    try:
        return call()
    except crud.CursorError as exc:
        raise HTTPException(UNPROCESSABLE, detail=f"cursor: {exc}") from None


@router.get("/jobs/{job_id}/labels/browse", responses=responses(404))
def browse_labels(
    job_id: RowId,
    session: SessionDep,
    filters: FiltersDep,
    correct: bool | None = Query(
        None, description="Only right (true) or wrong (false) labels; needs a dataset with true labels"
    ),
    order: crud.Order = OrderQuery,
    cursor: str | None = CursorQuery,
    limit: int = LimitQuery,
    top_k: int = TopKQuery,
) -> TilesPage:
    """The job's labels as the browser shows them: predicted class, confidence, entropy, the
    teacher's top-k and, where the dataset has them, the true label."""
    job = get_or_404(session, Job, job_id)
    classes = crud.job_classes(session, job=job)
    _check_class(filters, classes)
    has_truth = crud.job_has_truth(session, job=job)
    if correct is not None and not has_truth:
        raise HTTPException(
            UNPROCESSABLE, detail=f"correct: dataset {job.dataset_id} has no true labels to compare with"
        )
    filters.correct = correct
    rows, next_cursor, count = _paging(
        lambda: crud.label_tiles(
            session, job=job, filters=filters, order=order, cursor=cursor, limit=limit, top_k=top_k
        )
    )
    return TilesPage(
        classes=classes,
        has_truth=has_truth,
        count=count,
        data=[tile(r) for r in rows],
        next_cursor=next_cursor,
    )


@router.get("/manifests/{manifest_id}/entries/browse", responses=responses(404))
def browse_entries(
    manifest_id: HashId,
    session: SessionDep,
    filters: FiltersDep,
    source: Literal["labeled", "pseudo"] | None = Query(None, description="Only labeled or pseudo entries"),
    order: crud.Order = OrderQuery,
    cursor: str | None = CursorQuery,
    limit: int = LimitQuery,
    top_k: int = TopKQuery,
) -> EntryTilesPage:
    """The manifest's entries as the browser shows them: what the student trains on, with the
    teacher's top-k for pseudo labels. A confidence bound keeps pseudo entries only; by
    confidence, labeled entries (which have none) come last."""
    manifest = get_or_404(session, Manifest, manifest_id, column=Manifest.id)
    _check_class(filters, manifest.classes)
    rows, next_cursor, count = _paging(
        lambda: crud.entry_tiles(
            session,
            manifest=manifest,
            filters=filters,
            source=source,
            order=order,
            cursor=cursor,
            limit=limit,
            top_k=top_k,
        )
    )
    data = [EntryTile(**_tile_fields(r), source=r.source, copies=r.copies, job_id=r.job_id) for r in rows]
    has_truth = any(r.true_class is not None for r in rows)
    return EntryTilesPage(
        classes=manifest.classes, has_truth=has_truth, count=count, data=data, next_cursor=next_cursor
    )
