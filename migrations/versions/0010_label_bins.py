"""Label bins: each job's labels counted per class and confidence step (1/100), kept by the
database itself in the transaction that writes the labels, so that statistics, a manifest's plan
and its content digest read a few thousand rows instead of scanning every label.

A trigger keeps them (statement-level with a transition table on PostgreSQL, row-level on
SQLite), so every writer is counted, and only the rows an insert really added: a conflicting row
that ``ON CONFLICT DO NOTHING`` skips fires nothing. Labels are deleted only with their job, and
its bins go with it (the foreign key's cascade).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _step(column: str) -> str:
    """The highest multiple of 1/100 at or below the confidence, in doubles, exactly as
    service.crud.label_bins.grid_step_sql computes it (copied: a migration must not change)."""
    x = f"CAST({column} AS DOUBLE PRECISION)"
    guess = f"CAST({x} * 100 AS INTEGER)"
    up = f"CASE WHEN CAST({guess} + 1 AS DOUBLE PRECISION) / 100 <= {x} THEN 1 ELSE 0 END"
    down = f"CASE WHEN CAST({guess} AS DOUBLE PRECISION) / 100 > {x} THEN 1 ELSE 0 END"
    return f"{guess} + {up} - {down}"


_COLUMNS = "job_id, predicted, step, label_count, item_id_sum, confidence_sum"
_ADD = (
    "ON CONFLICT (job_id, predicted, step) DO UPDATE SET"
    " label_count = label_bins.label_count + excluded.label_count,"
    " item_id_sum = label_bins.item_id_sum + excluded.item_id_sum,"
    " confidence_sum = label_bins.confidence_sum + excluded.confidence_sum"
)


def _grouped(source: str) -> str:
    # Sorted: concurrent workers then lock the bins they share in one order and cannot deadlock,
    # as long as a transaction inserts its labels in one statement (workers.label_writes does).
    return f"""
        SELECT job_id, predicted, step, count(*), sum(item_id), sum(CAST(confidence AS DOUBLE PRECISION))
        FROM (
            SELECT job_id, predicted, item_id, confidence, {_step("confidence")} AS step FROM {source}
        ) AS stepped
        GROUP BY job_id, predicted, step ORDER BY job_id, predicted, step"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Until this transaction commits, no label is written: one committed during the
        # backfill, before the trigger exists, would be counted by neither. (SQLite's single
        # writer already waits.)
        op.execute("LOCK TABLE labels IN SHARE ROW EXCLUSIVE MODE")
    op.create_table(
        "label_bins",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("predicted", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("label_count", sa.BigInteger(), nullable=False),
        sa.Column("item_id_sum", sa.BigInteger(), nullable=False),
        sa.Column("confidence_sum", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "predicted", "step"),
    )
    op.execute(f"INSERT INTO label_bins ({_COLUMNS}) {_grouped('labels')}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION label_bins_add() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO label_bins ({_COLUMNS}) {_grouped("new_labels")} {_ADD};
                RETURN NULL;
            END $$""")
        op.execute("""
            CREATE TRIGGER labels_binned AFTER INSERT ON labels
            REFERENCING NEW TABLE AS new_labels
            FOR EACH STATEMENT EXECUTE FUNCTION label_bins_add()""")
    else:
        op.execute(f"""
            CREATE TRIGGER labels_binned AFTER INSERT ON labels BEGIN
                INSERT INTO label_bins ({_COLUMNS})
                VALUES (NEW.job_id, NEW.predicted, {_step("NEW.confidence")}, 1, NEW.item_id, NEW.confidence)
                {_ADD};
            END""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER labels_binned ON labels")
        op.execute("DROP FUNCTION label_bins_add()")
    else:
        op.execute("DROP TRIGGER labels_binned")
    op.drop_table("label_bins")
