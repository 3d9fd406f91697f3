"""Count the SQL statements a block of code sends, to pin how many queries a read takes."""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, event


@contextmanager
def recorded(engine: Engine) -> Iterator[list[str]]:
    """The statements sent through ``engine`` inside the block, in order."""
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)
