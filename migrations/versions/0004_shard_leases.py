"""Self-healing jobs: shard leases, enqueue times and reaps; transient item errors.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("reaped_count", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("item_errors") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="permanent"))


def downgrade() -> None:
    with op.batch_alter_table("item_errors") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("shards") as batch:
        batch.drop_column("reaped_count")
        batch.drop_column("lease_expires_at")
        batch.drop_column("enqueued_at")
