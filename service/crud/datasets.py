"""Dataset registry: data access only, no HTTP."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Dataset, Item, Job
from service.pagination import cursor_page, offset_page
from service.scan import ScanError, ScanResult


def create_dataset(
    session: Session,
    *,
    name: str,
    kind: str,
    split: str | None,
    modality: str,
    scan: ScanResult,
) -> Dataset:
    """Insert the dataset and all its items in the caller's transaction (all or nothing), the
    scan's rows read once, as they come; on SQLite the whole walk first, into a spool file, since
    its one writer, taken by the first insert, would otherwise wait on the walk (a cold network
    share's, minutes) with every worker's commit waiting behind it."""
    rows = _spooled(scan.rows) if session.get_bind().dialect.name == "sqlite" else scan.rows
    dataset = Dataset(
        name=name,
        kind=kind,
        split=split,
        modality=modality,
        source_path=str(scan.source_path),
        source_format=scan.source_format,
        classes=scan.classes,
        item_count=0,
    )
    session.add(dataset)
    session.flush()
    dataset.item_count = _insert_items(session, dataset.id, rows)
    return dataset


# Ends each field in the spool: no image's path or URL holds a NUL.
_END = "\0"


def _spooled(rows: Iterable[tuple[str, int | None]]) -> Iterator[tuple[str, int | None]]:
    """``rows`` read to their end now, kept in a temporary file rather than in memory, and given
    back from it as they were."""
    spool = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")  # noqa: SIM115 (_read_back closes it)
    try:
        for uri, label in rows:
            if _END in uri:  # no file can be named so; refused rather than misread
                raise ScanError(f"{uri!r} holds a NUL character")
            spool.write(f"{uri}{_END}{'' if label is None else label}{_END}")
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return _read_back(spool)


def _read_back(spool) -> Iterator[tuple[str, int | None]]:
    with spool:
        fields: list[str] = []
        tail = ""
        while chunk := spool.read(1 << 20):
            *complete, tail = (tail + chunk).split(_END)
            fields += complete
            for i in range(0, len(fields) - 1, 2):
                yield fields[i], int(fields[i + 1]) if fields[i + 1] else None
            fields = fields[len(fields) - len(fields) % 2 :]


_ITEM_COLUMNS = "dataset_id, ordinal, uri, label"


def _insert_items(session: Session, dataset_id: int, items: Iterable[tuple[str, int | None]]) -> int:
    """Every item, in the session's transaction, straight to the driver as it comes: a million
    rows through the ORM's insert took most of a registration (PostgreSQL by COPY, SQLite by
    executemany). Returns how many."""
    count = 0

    def rows() -> Iterator[tuple[int, int, str, int | None]]:
        nonlocal count
        for ordinal, (uri, label) in enumerate(items):
            count = ordinal + 1
            yield dataset_id, ordinal, uri, label

    connection = session.connection()
    driver = connection.connection.driver_connection
    if connection.dialect.name == "postgresql":
        copying = f"COPY {Item.__tablename__} ({_ITEM_COLUMNS}) FROM STDIN"
        with driver.cursor() as cursor, cursor.copy(copying) as copy:
            for row in rows():
                copy.write_row(row)
    else:
        inserting = f"INSERT INTO {Item.__tablename__} ({_ITEM_COLUMNS}) VALUES (?, ?, ?, ?)"
        cursor = driver.cursor()  # sqlite3's executemany takes an iterator; SQLAlchemy's wants a list
        try:
            cursor.executemany(inserting, rows())
        finally:
            cursor.close()
    return count


def class_counts(session: Session, *, dataset: Dataset) -> dict[str, int] | None:
    if dataset.classes is None:
        return None
    counts = dict(
        session.execute(
            select(Item.label, func.count()).where(Item.dataset_id == dataset.id).group_by(Item.label)
        ).all()
    )
    return {name: counts.get(i, 0) for i, name in enumerate(dataset.classes)}


def list_datasets(
    session: Session, *, offset: int, limit: int, kind: str | None, split: str | None
) -> tuple[list[Dataset], int]:
    query = select(Dataset)
    if kind:
        query = query.where(Dataset.kind == kind)
    if split:
        query = query.where(Dataset.split == split)
    return offset_page(session, query, order_by=[Dataset.id], offset=offset, limit=limit)


def items_page(
    session: Session, *, dataset_id: int, cursor: int | None, limit: int
) -> tuple[list[Item], int | None]:
    """Items by ordinal; the cursor is the next ordinal to return."""
    query = select(Item).where(Item.dataset_id == dataset_id)
    rows, next_cursor = cursor_page(session, query, key=Item.ordinal, cursor=cursor, limit=limit)
    return [item for (item,) in rows], next_cursor


def dependent_job_ids(session: Session, *, dataset_id: int) -> list[int]:
    return list(session.scalars(select(Job.id).where(Job.dataset_id == dataset_id)))
