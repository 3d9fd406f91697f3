"""A shard records every inference mode that labeled some of its items (comma-separated): an
attempt in another mode (another worker's device, a fallback to eager) adds its mode to the
earlier one's instead of replacing it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.alter_column(
            "inference", type_=sa.String(64), existing_type=sa.String(16), existing_nullable=True
        )


def downgrade() -> None:
    # Sixteen characters hold one mode: a shard of several keeps its first.
    shards = sa.table("shards", sa.column("inference", sa.String))
    first = sa.func.substr(shards.c.inference, 1, sa.func.instr(shards.c.inference, ",") - 1)
    if op.get_bind().dialect.name == "postgresql":
        first = sa.func.split_part(shards.c.inference, ",", 1)
    op.execute(shards.update().where(shards.c.inference.contains(",")).values(inference=first))
    with op.batch_alter_table("shards") as batch:
        batch.alter_column(
            "inference", type_=sa.String(16), existing_type=sa.String(64), existing_nullable=True
        )
