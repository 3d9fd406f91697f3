"""Manifest classes: how many pseudo labels each class drew from (``available``) and the
confidence below which none could be selected (``cutoff``), so that a build ranks only those.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("manifest_classes") as batch:
        batch.add_column(sa.Column("available", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cutoff", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("manifest_classes") as batch:
        batch.drop_column("cutoff")
        batch.drop_column("available")
