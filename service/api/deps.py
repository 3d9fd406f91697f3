"""Dependencies as ``Annotated`` aliases, so a route's signature reads like its contract."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator
from sqlalchemy import select
from sqlalchemy.orm import Session

from nst.config import Settings, get_settings
from nst.text import check_text
from service.core.db import get_session_factory

Model = TypeVar("Model")


def get_session() -> Iterator[Session]:
    session = get_session_factory()()
    try:
        yield session
    finally:
        session.rollback()  # whatever a route did not commit explicitly is discarded
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def streamed(session: Session, response: Response) -> Response:
    """``response``, a stream that reads the database a page at a time, each in a session of its
    own, with the request's session closed now: FastAPI would close it only after the last byte,
    and each slow download held two of the pool's connections (the eighth at once waited, then
    broke off mid-body)."""
    session.close()
    return response


SettingsDep = Annotated[Settings, Depends(get_settings)]

# Every integer the API takes fits the column it meets (INTEGER or BIGINT), so a larger one is
# a 422 naming the parameter, never a database error.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
RowId = Annotated[int, Path(ge=1, le=INT32_MAX)]  # datasets, jobs
ItemId = Annotated[int, Path(ge=1, le=INT64_MAX)]
# Teacher and manifest IDs are sha256 hex; anything longer cannot be one.
HashId = Annotated[str, Path(min_length=1, max_length=64), AfterValidator(check_text)]

# Paging parameters; each route sets the default. Registries page by offset, long lists by cursor.
Offset = Annotated[int, Query(ge=0, le=INT64_MAX)]
RegistryLimit = Annotated[int, Query(ge=1, le=1000)]
PageLimit = Annotated[int, Query(ge=1, le=10000)]
Cursor = Annotated[
    int | None, Query(ge=0, le=INT64_MAX, description="The previous page's next_cursor; none for the first")
]
OrdinalCursor = Annotated[
    int | None, Query(ge=0, le=INT32_MAX, description="The previous page's next_cursor; none for the first")
]


# The query parameters each format of a long list reads; JSONL streams everything.
_READ_BY_FORMAT = {"json": ("cursor", "limit"), "jsonl": (), "parquet": ("part", "parts")}


def refuse_unread_parameters(request: Request, format: str, offered: tuple[str, ...]) -> None:
    """422 naming a parameter of ``offered`` that the request gives and ``format`` would ignore
    (``limit`` with jsonl streams every row: the caller meant something else)."""
    for name in offered:
        if name in request.query_params and name not in _READ_BY_FORMAT[format]:
            reads = ", ".join(_READ_BY_FORMAT[format]) or "none of them: it streams every row"
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"{name}: format={format} does not read it (it reads {reads})",
            )


def get_or_404(session: Session, model: type[Model], ident: Any, *, column: Any = None) -> Model:
    """The row of ``model`` with primary key ``ident`` (or ``column == ident``), else a 404 that
    names it: ``job 7 not found``."""
    if column is None:
        row = session.get(model, ident)
    else:
        row = session.scalar(select(model).where(column == ident))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{model.__name__.lower()} {ident} not found")
    return row


_bearer = HTTPBearer(auto_error=False)


def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value()
    if credentials is None or not secrets.compare_digest(credentials.credentials, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong API token: send 'Authorization: Bearer <NST_API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
