from typing import Literal

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import IntegrityError

from service.api.deps import Cursor, Offset, PageLimit, RegistryLimit, SessionDep, get_or_404
from service.exports.manifests import entries_jsonl, entries_parquet, records
from service.manifests import reads
from service.manifests.build import build_manifest, prepare_manifest
from service.manifests.validation import ManifestRequestError
from service.models import Manifest
from service.schemas import (
    ManifestClassCounts,
    ManifestCreate,
    ManifestEntriesPage,
    ManifestPublic,
    ManifestsPublic,
    ManifestTotals,
)

router = APIRouter(prefix="/manifests", tags=["manifests"])


def manifest_public(session, manifest: Manifest) -> ManifestPublic:
    rows = reads.class_rows(session, manifest_key=manifest.key)
    class_counts = {
        manifest.classes[r.class_index]: ManifestClassCounts(
            labeled=r.labeled,
            pseudo_unique=r.pseudo_unique,
            pseudo_with_copies=r.pseudo_with_copies,
            target=r.target,
            threshold=r.threshold,
        )
        for r in rows
    }
    labeled, unique, copies = (
        sum(getattr(r, k) for r in rows) for k in ("labeled", "pseudo_unique", "pseudo_with_copies")
    )
    return ManifestPublic(
        id=manifest.id,
        classes=manifest.classes,
        params=manifest.params,
        provenance=reads.provenance(session, manifest_key=manifest.key),
        class_counts=class_counts,
        totals=ManifestTotals(
            labeled=labeled,
            pseudo_unique=unique,
            pseudo_with_copies=copies,
            entries=labeled + unique,
            samples=labeled + copies,
        ),
        created_at=manifest.created_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED)
def create_manifest(body: ManifestCreate, session: SessionDep, response: Response) -> ManifestPublic:
    """Filter and balance the jobs' pseudo labels and join them to the labeled datasets.

    201 with a new manifest; 200 when the same inputs already gave this manifest (the ID is a
    hash of them). 422 for a bad input, 409 for a job that has not succeeded.
    """
    try:
        prepared = prepare_manifest(session, request=body)
    except ManifestRequestError as exc:
        code = status.HTTP_409_CONFLICT if exc.conflict else status.HTTP_422_UNPROCESSABLE_CONTENT
        raise HTTPException(code, detail=str(exc)) from None
    manifest = reads.by_id(session, prepared.id)
    if manifest is None:
        try:
            manifest = build_manifest(session, prepared=prepared)
            session.commit()
            return manifest_public(session, manifest)
        except IntegrityError:
            session.rollback()
            manifest = reads.by_id(session, prepared.id)
            if manifest is None:  # not an identical request that committed first
                raise
    response.status_code = status.HTTP_200_OK
    return manifest_public(session, manifest)


@router.get("")
def list_manifests(session: SessionDep, offset: Offset = 0, limit: RegistryLimit = 100) -> ManifestsPublic:
    rows, count = reads.list_manifests(session, offset=offset, limit=limit)
    return ManifestsPublic(data=[manifest_public(session, m) for m in rows], count=count)


@router.get("/{manifest_id}")
def get_manifest(manifest_id: str, session: SessionDep) -> ManifestPublic:
    return manifest_public(session, get_or_404(session, Manifest, manifest_id, column=Manifest.id))


# The declared model makes FastAPI serialise the page in pydantic-core; without one it walks
# every float of every soft target through jsonable_encoder, ten times slower. Streaming
# responses pass through untouched.
@router.get("/{manifest_id}/entries", response_model=ManifestEntriesPage)
def get_entries(
    manifest_id: str,
    session: SessionDep,
    format: Literal["json", "jsonl", "parquet"] = "json",
    cursor: Cursor = None,
    limit: PageLimit = 1000,
) -> ManifestEntriesPage | StreamingResponse:
    """A page of entries (JSON, ``{"data", "next_cursor"}``), or the whole manifest streamed as
    JSONL (one entry per line) or Parquet, in item order.

    Each entry: ``item_id``, ``uri``, ``source`` (``labeled`` or ``pseudo``), ``target``,
    ``copies`` (>= 1: train on it that many times per epoch) and ``confidence`` (null for
    labeled). ``target`` is the class index for labeled entries and hard pseudo targets, and the
    distribution over ``classes`` for soft ones (the teacher's, ``p^(1/T)`` renormalised with
    the manifest's temperature; a top-k label spreads its rest mass evenly over the other
    classes).

    Parquet has the same columns, except that ``target`` is split in two: ``target_class``
    (int32; null for soft targets) and ``target_probs`` (list<float32>; null for hard ones).
    ``item_id`` is int64, ``copies`` int32, ``confidence`` float32.
    """
    manifest = get_or_404(session, Manifest, manifest_id, column=Manifest.id)
    if format == "jsonl":
        return StreamingResponse(entries_jsonl(manifest.key), media_type="application/x-ndjson")
    if format == "parquet":
        return StreamingResponse(
            entries_parquet(manifest.key),
            media_type="application/vnd.apache.parquet",
            headers={"Content-Disposition": f'attachment; filename="manifest-{manifest.id[:16]}.parquet"'},
        )
    rows, next_cursor = reads.entries_page(session, manifest=manifest, cursor=cursor, limit=limit)
    return ManifestEntriesPage(data=records(rows, manifest), next_cursor=next_cursor)
