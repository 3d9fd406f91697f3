"""Training manifests: content-addressed, immutable selections of labeled and pseudo-labeled items.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "manifests",
        sa.Column("key", sa.Integer(), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_manifests"),
        sa.UniqueConstraint("id", name="uq_manifests_id"),
    )
    op.create_table(
        "manifest_inputs",
        sa.Column("manifest_key", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["manifest_key"],
            ["manifests.key"],
            name="fk_manifest_inputs_manifest_key_manifests",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name="fk_manifest_inputs_dataset_id_datasets",
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_manifest_inputs_job_id_jobs", ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("manifest_key", "position", name="pk_manifest_inputs"),
    )
    op.create_table(
        "manifest_classes",
        sa.Column("manifest_key", sa.Integer(), nullable=False),
        sa.Column("class_index", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("target", sa.Integer(), nullable=True),
        sa.Column("labeled", sa.Integer(), nullable=False),
        sa.Column("pseudo_unique", sa.Integer(), nullable=False),
        sa.Column("pseudo_with_copies", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["manifest_key"],
            ["manifests.key"],
            name="fk_manifest_classes_manifest_key_manifests",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("manifest_key", "class_index", name="pk_manifest_classes"),
    )
    op.create_table(
        "manifest_entries",
        sa.Column("manifest_key", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("target_class", sa.Integer(), nullable=False),
        sa.Column("copies", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.REAL(), nullable=True),
        sa.PrimaryKeyConstraint("manifest_key", "item_id", name="pk_manifest_entries"),
    )


def downgrade() -> None:
    for table in ("manifest_entries", "manifest_classes", "manifest_inputs", "manifests"):
        op.drop_table(table)
