"""On SQLite, a new dataset, job, shard or manifest never takes the ID of one deleted before it.

SQLite gives a new row one more than the largest ID in the table, so deleting the newest job
and creating another handed out the same ID: a script or page that still held the old one would
read the new job's labels as its own. AUTOINCREMENT keeps the largest ID ever given
(``sqlite_sequence``). PostgreSQL's identity sequences never go back: nothing to do there.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("datasets", "jobs", "shards", "manifests")


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        # A copy of the table under the new definition (migrations/env.py turns foreign keys
        # off meanwhile, so the rows that reference it stay).
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def upgrade() -> None:
    _recreate(True)


def downgrade() -> None:
    _recreate(False)
