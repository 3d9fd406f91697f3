"""Registry (datasets, items, teachers), labeling jobs, shards, labels and item errors.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("split", sa.String(16), nullable=True),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("source_format", sa.String(16), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=True),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
    )
    op.create_table(
        "items",
        sa.Column("id", BigId, nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("label", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name="fk_items_dataset_id_datasets", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_items"),
        sa.UniqueConstraint("dataset_id", "ordinal", name="uq_items_dataset_id"),
    )
    op.create_table(
        "teachers",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("architecture", sa.String(200), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("image_size", sa.Integer(), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        sa.Column("mean", sa.JSON(), nullable=False),
        sa.Column("std", sa.JSON(), nullable=False),
        sa.Column("interpolation", sa.String(16), nullable=False),
        sa.Column("crop_pct", sa.REAL(), nullable=False),
        sa.Column("model_kwargs", sa.JSON(), nullable=False),
        sa.Column("parent_id", sa.String(64), nullable=True),
        sa.Column("manifest_id", sa.String(64), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("file_path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["teachers.id"],
            name="fk_teachers_parent_id_teachers",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_teachers"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("teacher_id", sa.String(64), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("temperature", sa.REAL(), nullable=False),
        sa.Column("top_k", sa.Integer(), nullable=False),
        sa.Column("full_distribution_max", sa.Integer(), nullable=False),
        sa.Column("shard_size", sa.Integer(), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("items_total", sa.Integer(), nullable=False),
        sa.Column("shards_total", sa.Integer(), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name="fk_jobs_dataset_id_datasets",
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["teacher_id"],
            ["teachers.id"],
            name="fk_jobs_teacher_id_teachers",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_table(
        "shards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("start_ordinal", sa.Integer(), nullable=False),
        sa.Column("end_ordinal", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("items_done", sa.Integer(), nullable=False),
        sa.Column("items_failed", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_shards_job_id_jobs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_shards"),
        sa.UniqueConstraint("job_id", "index", name="uq_shards_job_id"),
    )
    op.create_table(
        "labels",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("predicted", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.REAL(), nullable=False),
        sa.Column("entropy", sa.REAL(), nullable=False),
        sa.Column("probs", sa.LargeBinary(), nullable=False),
        sa.Column("top_indices", sa.LargeBinary(), nullable=True),
        sa.Column("rest_mass", sa.REAL(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_labels_job_id_jobs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "item_id", name="pk_labels"),
    )
    op.create_table(
        "item_errors",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_item_errors_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "item_id", name="pk_item_errors"),
    )


def downgrade() -> None:
    for table in ("item_errors", "labels", "shards", "jobs", "teachers", "items", "datasets"):
        op.drop_table(table)
