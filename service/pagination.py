"""Pages of rows: by cursor (the key of the next row, for long item-ordered lists) or by offset
with a total count (for short registries)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

Row = TypeVar("Row")
Page = tuple[list[Row], int | None]


def from_cursor(query: Select, *, key: Any, cursor: int | None, limit: int) -> Select:
    """``query`` from ``cursor`` on in ``key`` order, with one row past the page: its key is
    the next cursor."""
    if cursor is not None:
        query = query.where(key >= cursor)
    return query.order_by(key).limit(limit + 1)


def cut(rows: Sequence[Row], *, limit: int, key: Callable[[Row], int]) -> Page[Row]:
    """The page and the next cursor (None on the last page) from a ``from_cursor`` result."""
    return list(rows[:limit]), (key(rows[limit]) if len(rows) > limit else None)


def cursor_page(session: Session, query: Select, *, key: Any, cursor: int | None, limit: int) -> Page[tuple]:
    """Rows of ``query``, whose first column is the entity that ``key`` belongs to."""
    rows = [tuple(r) for r in session.execute(from_cursor(query, key=key, cursor=cursor, limit=limit))]
    return cut(rows, limit=limit, key=lambda row: getattr(row[0], key.key))


def all_pages(fetch: Callable[[int | None], Page[Row]]) -> Iterator[list[Row]]:
    """Every non-empty page, where ``fetch(cursor)`` returns one page and the next cursor."""
    cursor = None
    while True:
        rows, cursor = fetch(cursor)
        if rows:
            yield rows
        if cursor is None:
            return


def offset_page(
    session: Session, query: Select, *, order_by: Sequence[Any], offset: int, limit: int
) -> tuple[list, int]:
    """A slice of ``query``'s entities in ``order_by`` order, and how many there are in all."""
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(*order_by).offset(offset).limit(limit))
    return list(rows), count
