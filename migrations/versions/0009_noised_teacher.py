"""The noised-teacher ablation: a job that labels with the teacher's noise on.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        # A constant default ("0": false on both databases), not sa.false(): SQLite's batch mode
        # then adds the column in place instead of copying the table.
        batch.add_column(sa.Column("noised_teacher", sa.Boolean(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("noised_teacher")
