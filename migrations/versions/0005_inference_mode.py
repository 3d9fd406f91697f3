"""Inference modes: the mode a job asks for, and the mode that labeled each shard.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("inference", sa.String(16), nullable=False, server_default="auto"))
    with op.batch_alter_table("shards") as batch:
        batch.add_column(sa.Column("inference", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.drop_column("inference")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("inference")
