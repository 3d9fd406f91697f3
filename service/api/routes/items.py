"""Thumbnails of registered items, by item ID (never a path).

Only the files of registered datasets are read, and only under the data roots. Decoding runs
in worker threads behind their own limit, so a grid of hundreds of thumbnails queues there and
leaves the event loop and the threads of other requests free."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import anyio
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status

from nst import storage
from nst.config import get_settings
from service.api.deps import ItemId
from service.api.errors import ErrorPublic, responses
from service.core.db import get_session_factory
from service.models import Item
from service.thumbnails import SIZES, ThumbnailError, render

router = APIRouter(prefix="/items", tags=["items"])

# Two decodes at a time: enough to keep a grid streaming, few enough that the API's other
# requests always find a core.
DECODERS = 2
CACHE_CONTROL = "private, max-age=86400"


@dataclass
class _Thumbnail:
    etag: str
    body: bytes | None  # None: the client's copy is current


def _decoders(request: Request) -> anyio.CapacityLimiter:
    """The app's own limiter, made inside its event loop (a limiter is bound to one loop)."""
    state = request.app.state
    if getattr(state, "thumbnail_decoders", None) is None:
        state.thumbnail_decoders = anyio.CapacityLimiter(DECODERS)
    return state.thumbnail_decoders


def _item_file(item_id: int) -> storage.Location:
    with get_session_factory()() as session:
        item = session.get(Item, item_id)
        uri = item.uri if item is not None else None
    if uri is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"item {item_id} not found")
    try:
        path = storage.location(uri)
    except storage.BadLocation as exc:  # registered before such keys were refused
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"item {item_id}: {exc}") from None
    if not storage.inside(path, get_settings().data_roots):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"item {item_id}: its file lies outside the data roots"
        )
    return path


def _thumbnail(item_id: int, size: int, if_none_match: str | None) -> _Thumbnail:
    path = _item_file(item_id)
    try:
        found = storage.info(path)
        etag = f'"{item_id}-{size}-{found["size"]}-{found["version"]}"'
        if if_none_match == etag:
            return _Thumbnail(etag, None)
        return _Thumbnail(etag, render(path, size))
    except storage.ObjectMissing:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"item {item_id}: its file is gone") from None
    except storage.StorageUnavailable as exc:  # a later attempt may succeed
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"item {item_id}: {exc}") from None
    except storage.StorageError as exc:  # denied
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=f"item {item_id}: {exc}") from None
    except ThumbnailError as exc:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, detail=f"item {item_id}: {exc}") from None


@router.get(
    "/{item_id}/thumbnail",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "A JPEG within size x size"},
        502: {"model": ErrorPublic, "description": "The store refused the read"},
        **responses(304, 403, 404, 415, 503),
    },
)
async def get_thumbnail(
    item_id: ItemId,
    request: Request,
    size: int = Query(
        128, description=f"Longest side in pixels, one of {SIZES}", json_schema_extra={"enum": list(SIZES)}
    ),
    if_none_match: str | None = Header(None),
) -> Response:
    """The item's image fitted into a size x size square, as JPEG, cacheable (ETag; 304 when
    the client's copy is current). 404 for an unknown item, 422 for a size not offered."""
    if size not in SIZES:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"size: {size} is not one of {list(SIZES)}"
        )
    thumbnail = await anyio.to_thread.run_sync(
        partial(_thumbnail, item_id, size, if_none_match), limiter=_decoders(request)
    )
    headers = {"ETag": thumbnail.etag, "Cache-Control": CACHE_CONTROL}
    if thumbnail.body is None:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(thumbnail.body, media_type="image/jpeg", headers=headers)
