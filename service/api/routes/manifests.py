from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import IntegrityError

from service.api.deps import (
    Cursor,
    HashId,
    Offset,
    PageLimit,
    RegistryLimit,
    SessionDep,
    get_or_404,
    refuse_unread_parameters,
    streamed,
)
from service.api.errors import BODY, responses
from service.crud.teachers import trained_on
from service.exports.manifests import Part, count, entries_jsonl, entries_parquet, record_page_size, records
from service.manifests import reads
from service.manifests.build import build_manifest, prepare_manifest, remove_manifest
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
    return manifests_public(session, [manifest])[0]


def manifests_public(session, manifests: list[Manifest]) -> list[ManifestPublic]:
    """Manifests as the API shows them, in two queries however many there are."""
    keys = [m.key for m in manifests]
    rows, provenance = reads.class_rows_of(session, keys), reads.provenance_of(session, keys)
    return [_public(m, rows[m.key], provenance[m.key]) for m in manifests]


def _public(manifest: Manifest, rows, provenance: dict) -> ManifestPublic:
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
        provenance=provenance,
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


@router.post("", status_code=status.HTTP_201_CREATED, responses=responses(*BODY, 409))
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
        except ManifestRequestError as exc:
            session.rollback()
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None
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
    return ManifestsPublic(data=manifests_public(session, rows), count=count)


@router.get("/{manifest_id}", responses=responses(404))
def get_manifest(manifest_id: HashId, session: SessionDep) -> ManifestPublic:
    return manifest_public(session, get_or_404(session, Manifest, manifest_id, column=Manifest.id))


@router.delete("/{manifest_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(404, 409))
def delete_manifest(manifest_id: HashId, session: SessionDep) -> Response:
    """Delete a manifest and its entries; 409 while a registered teacher was trained on it (its
    lineage names it). The same request builds it again, under the same ID, while its inputs last."""
    manifest = get_or_404(session, Manifest, manifest_id, column=Manifest.id)
    if students := trained_on(session, manifest_id=manifest_id):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"manifest {manifest_id} trained teacher(s) {', '.join(s[:12] for s in students)}, "
            "whose lineage names it; delete those first",
        )
    remove_manifest(session, manifest=manifest)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# The declared model makes FastAPI serialise the page in pydantic-core; without one it walks
# every float of every soft target through jsonable_encoder, ten times slower. Streaming
# responses pass through untouched.
@router.get(
    "/{manifest_id}/entries",
    response_model=ManifestEntriesPage,
    responses={
        200: {
            "description": "A page of entries (JSON), or every entry as JSONL or Parquet",
            "content": {"application/x-ndjson": {}, "application/vnd.apache.parquet": {}},
        },
        **responses(404),
    },
)
def get_entries(
    manifest_id: HashId,
    session: SessionDep,
    request: Request,
    format: Literal["json", "jsonl", "parquet"] = "json",
    cursor: Cursor = None,
    limit: PageLimit = 1000,
    part: Annotated[int, Query(ge=0, description="Parquet only: which share of the entries")] = 0,
    parts: Annotated[int, Query(ge=1, le=4096, description="Parquet only: into how many shares")] = 1,
) -> ManifestEntriesPage | StreamingResponse:
    """A page of entries (JSON, ``{"data", "next_cursor"}``), or the whole manifest streamed as
    JSONL (one entry per line) or Parquet, in item order. A JSON page holds at most ``limit``
    entries, and with soft targets at most 250,000 target values (250 entries at 1,000 classes):
    follow ``next_cursor`` until it is null.

    Each entry: ``item_id``, ``uri``, ``source`` (``labeled`` or ``pseudo``), ``target``,
    ``copies`` (>= 1: train on it that many times per epoch) and ``confidence`` (null for
    labeled). ``target`` is the class index for labeled entries and hard pseudo targets, and the
    distribution over ``classes`` for soft ones (the teacher's, ``p^(1/T)`` renormalised with
    the manifest's temperature; a top-k label spreads its rest mass evenly over the other
    classes).

    JSONL records add ``class_name``, the name of the entry's class (``target``, or the
    teacher's top class for a soft target).

    Parquet keeps targets sparse: ``target_class`` (int32: the class, or a soft target's top
    class) and ``class_name``, then ``target_indices`` (int32) and ``target_values`` (float32),
    two fixed-width lists (padded with index -1 and value 0), and ``target_rest`` (float32): the
    mass spread evenly over every class not in ``target_indices``. A hard target is its one class
    at 1.0. ``nst.targets.dense`` rebuilds the JSON ``target`` from them exactly. ``item_id`` is
    int64, ``copies`` int32, ``confidence`` float32. The schema metadata holds ``nst.manifest_id``
    and ``nst.classes``; the footer adds ``nst.entries`` and ``nst.sha256`` (the count and
    ``nst.targets.EntriesDigest`` of what was streamed). ``part`` of ``parts`` streams only the
    entries whose ``item_id`` modulo ``parts`` is ``part``: the shares are disjoint and cover the
    manifest. The headers ``X-Manifest-Id`` and ``X-Manifest-Entries`` (the entries in this
    share, counted before streaming; JSONL and Parquet) let a reader check what it got. A parameter the format
    does not read (``part`` with JSON, ``limit`` with Parquet) is a 422.
    """
    manifest = get_or_404(session, Manifest, manifest_id, column=Manifest.id)
    refuse_unread_parameters(request, format, ("cursor", "limit", "part", "parts"))
    if part >= parts:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"part: {part} is not below parts ({parts})"
        )
    if format in ("jsonl", "parquet"):
        share = Part(part, parts)
        name = f"manifest-{manifest.id[:16]}" + (f"-part{part}of{parts}" if parts > 1 else "")
        headers = {
            "Content-Disposition": f'attachment; filename="{name}.{format}"',
            "X-Manifest-Id": manifest.id,
            "X-Manifest-Entries": str(count(session, manifest, share)),
        }
        if format == "jsonl":
            body, media_type = entries_jsonl(manifest.key), "application/x-ndjson"
        else:
            body, media_type = entries_parquet(manifest.key, share), "application/vnd.apache.parquet"
        return streamed(session, StreamingResponse(body, media_type=media_type, headers=headers))
    limit = record_page_size(manifest, limit)
    rows, next_cursor = reads.entries_page(session, manifest=manifest, cursor=cursor, limit=limit)
    return ManifestEntriesPage(data=records(rows, manifest), next_cursor=next_cursor)
