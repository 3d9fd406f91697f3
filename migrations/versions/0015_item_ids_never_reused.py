"""On SQLite, a new item never takes the ID of one deleted before it (its dataset deleted).

Migration 0013 left items out. Deleting the newest dataset and registering another gave the new
items the old ones' IDs, and a browser that had shown an old item's thumbnail (cached for a day,
keyed by its URL, /items/{id}/thumbnail) would show it again for the new item with that ID. The
table is copied once under the new definition: on a large SQLite store this upgrade takes as
long as copying the items, and AUTOINCREMENT's bookkeeping makes a registration's inserts a few
percent slower (PostgreSQL's identity sequences never go back: nothing to do there).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # migrations/env.py turns foreign keys off meanwhile, so the labels that reference it stay.
    with op.batch_alter_table(
        "items", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass


def upgrade() -> None:
    _recreate(True)


def downgrade() -> None:
    _recreate(False)
