"""ORM mapping of the schema. Alembic migrations own the schema; this module mirrors them
(``tests/migrations`` checks that the two agree)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    REAL,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Naive UTC: SQLite keeps no time zone, so every timestamp is stored as naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# Tables whose IDs a client holds, or a message carries, never hand out a deleted row's ID
# again on SQLite either (migrations 0013 and 0015). A migration that copies one of them (batch mode's
# recreate) passes these as its table_kwargs, as SQLite's reflection does not read them back.
NEVER_REUSED = {"sqlite_autoincrement": True}


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = NEVER_REUSED

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # labeled | unlabeled
    split: Mapped[str | None] = mapped_column(String(16))  # train | val | test
    modality: Mapped[str] = mapped_column(String(16), default="image")
    source_path: Mapped[str] = mapped_column(Text)
    source_format: Mapped[str] = mapped_column(String(16))  # folder | csv | jsonl | list
    classes: Mapped[list[str] | None] = mapped_column(JSON)
    item_count: Mapped[int] = mapped_column(Integer)
    # {"L": {"mean": [m], "std": [s]}, "RGB": {...}, "sample": n}: measured at registration
    pixel_stats: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("dataset_id", "ordinal"), NEVER_REUSED)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)  # 0..n-1 in scan order; shards are ranges of it
    uri: Mapped[str] = mapped_column(Text)
    label: Mapped[int | None] = mapped_column(Integer)  # index into Dataset.classes


class Teacher(Base):
    __tablename__ = "teachers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the file
    name: Mapped[str] = mapped_column(String(200))
    architecture: Mapped[str] = mapped_column(String(200))
    class_names: Mapped[list[str]] = mapped_column(JSON)
    image_size: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    mean: Mapped[list[float]] = mapped_column(JSON)
    std: Mapped[list[float]] = mapped_column(JSON)
    interpolation: Mapped[str] = mapped_column(String(16))
    crop_pct: Mapped[float] = mapped_column(REAL)
    model_kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("teachers.id", ondelete="RESTRICT"))
    manifest_id: Mapped[str | None] = mapped_column(String(64))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    calibrated_temperature: Mapped[float | None] = mapped_column(Double)  # fitted on a val split
    status: Mapped[str] = mapped_column(String(16))  # a TeacherStatus, set by service.lifecycle
    status_reason: Mapped[str | None] = mapped_column(Text)
    file_path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Job(Base):
    """A labeling job. Its state is derived from its shards (see ``lifecycle.job_state``)."""

    __tablename__ = "jobs"
    __table_args__ = NEVER_REUSED

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    teacher_id: Mapped[str] = mapped_column(ForeignKey("teachers.id", ondelete="RESTRICT"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    batch_size: Mapped[int] = mapped_column(Integer)
    temperature: Mapped[float] = mapped_column(REAL)
    top_k: Mapped[int] = mapped_column(Integer)
    full_distribution_max: Mapped[int] = mapped_column(Integer)
    shard_size: Mapped[int] = mapped_column(Integer)
    inference: Mapped[str] = mapped_column(String(16), default="auto")  # a mode, or auto
    noised_teacher: Mapped[bool] = mapped_column(Boolean, default=False)  # an ablation only
    num_classes: Mapped[int] = mapped_column(Integer)
    items_total: Mapped[int] = mapped_column(Integer)
    shards_total: Mapped[int] = mapped_column(Integer)
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def stores_full_distribution(self) -> bool:
        return self.num_classes <= self.full_distribution_max


class Worker(Base):
    """A worker process as it last reported itself (``workers/heartbeat.py``): which workers
    are up, and since when a silent one has been gone."""

    __tablename__ = "workers"
    __table_args__ = (UniqueConstraint("name", "pid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))  # Celery's node name, e.g. worker1@host
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(32))  # cpu, cuda:0, ...
    concurrency: Mapped[int] = mapped_column(Integer)  # shards it labels at once
    heartbeat_s: Mapped[float] = mapped_column(Double)  # how often it reports
    started_at: Mapped[datetime] = mapped_column(DateTime)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime)  # a clean shutdown's moment
    # What it runs, {"nst": "0.1.0", "torch": "2.14.1", ...}; None from a worker older than this.
    software: Mapped[dict[str, str] | None] = mapped_column(JSON)


class Shard(Base):
    __tablename__ = "shards"
    __table_args__ = (UniqueConstraint("job_id", "index"), NEVER_REUSED)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    start_ordinal: Mapped[int] = mapped_column(Integer)
    end_ordinal: Mapped[int] = mapped_column(Integer)  # exclusive
    state: Mapped[str] = mapped_column(String(16))  # a ShardState, set by service.lifecycle
    items_done: Mapped[int] = mapped_column(Integer, default=0)
    items_failed: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # The modes, and the workers (Celery node names), that labeled its items, each
    # comma-separated in name order (``record_labeler``): more than one when its attempts ran in
    # different modes or on different workers.
    inference: Mapped[str | None] = mapped_column(String(64))
    workers: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Self-healing (see service.lifecycle): when its message was last sent, until when its
    # worker's lease holds while it runs, and how often the reaper sent it again.
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    reaped_count: Mapped[int] = mapped_column(Integer, default=0)
    lease_expiries: Mapped[int] = mapped_column(Integer, default=0)  # leases that lapsed on it

    def record_labeler(self, mode: str, worker: str | None) -> None:
        """Add ``mode`` and ``worker`` to those that labeled this shard's items."""
        self.inference = ",".join(sorted({*recorded_names(self.inference), mode}))
        if worker is not None:
            self.workers = ",".join(sorted({*recorded_names(self.workers), worker}))


def recorded_names(recorded: str | None) -> list[str]:
    """The names a shard's ``inference`` or ``workers`` holds, in name order."""
    return recorded.split(",") if recorded else []


class Label(Base):
    """One soft label. The primary key (job, item) is what makes a redelivered shard harmless.

    ``item_id`` has no foreign key on purpose: labels are the hot write path, the worker only
    labels items of the job's own dataset, and a job cannot outlive its dataset.
    """

    __tablename__ = "labels"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    predicted: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(REAL)
    entropy: Mapped[float] = mapped_column(REAL)
    # float16 probabilities: all classes, or the top-k in the order of ``top_indices`` (int32).
    probs: Mapped[bytes] = mapped_column(LargeBinary)
    top_indices: Mapped[bytes | None] = mapped_column(LargeBinary)
    rest_mass: Mapped[float | None] = mapped_column(REAL)


class LabelBin(Base):
    """A job's labels of one class whose confidence falls in one step of 1/100 (the highest
    multiple at or below it): their count and sums. A database trigger keeps these in the
    transaction that inserts the labels (migration 0010), so every writer is counted once; the
    statistics, a manifest's plan and its content digest read them instead of every label."""

    __tablename__ = "label_bins"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    predicted: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    label_count: Mapped[int] = mapped_column(BigInteger)
    item_id_sum: Mapped[int] = mapped_column(BigInteger)
    confidence_sum: Mapped[float] = mapped_column(Double)


class ItemError(Base):
    __tablename__ = "item_errors"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    message: Mapped[str] = mapped_column(Text)
    # permanent (the file does not decode) | transient (reading it failed: a later attempt retries)
    kind: Mapped[str] = mapped_column(String(16), default="permanent")


class Manifest(Base):
    """A training set, immutable and content-addressed: ``id`` is a sha256 of everything that
    determines the entries (see ``service.manifests.addressing.content_id``). The integer ``key`` is only for
    the entry rows: it makes them 40 bytes narrower and their inserts twice as fast."""

    __tablename__ = "manifests"
    __table_args__ = NEVER_REUSED

    key: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    classes: Mapped[list[str]] = mapped_column(JSON)  # target index order
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # the canonical request
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ManifestInput(Base):
    """A labeled dataset (``job_id`` null) or a labeling job a manifest drew on. The RESTRICT
    keys keep a manifest's items and labels from being deleted under it."""

    __tablename__ = "manifest_inputs"

    manifest_key: Mapped[int] = mapped_column(
        ForeignKey("manifests.key", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="RESTRICT"))


class ManifestClass(Base):
    """Per class: the selection plan (threshold, target) and what it selected."""

    __tablename__ = "manifest_classes"

    manifest_key: Mapped[int] = mapped_column(
        ForeignKey("manifests.key", ondelete="CASCADE"), primary_key=True
    )
    class_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Double, not REAL: a float32 threshold would round 0.7 down and admit a 0.69999999 label.
    threshold: Mapped[float | None] = mapped_column(Double)  # null: no pseudo labels
    target: Mapped[int | None] = mapped_column(Integer)  # null: balancing off
    # The pseudo labels at or above the threshold, and the confidence below which none of them
    # can be selected (``service.manifests.selection.class_plan``); null: no pseudo labels.
    available: Mapped[int | None] = mapped_column(Integer)
    cutoff: Mapped[float | None] = mapped_column(Double)
    labeled: Mapped[int] = mapped_column(Integer, default=0)
    pseudo_unique: Mapped[int] = mapped_column(Integer, default=0)
    pseudo_with_copies: Mapped[int] = mapped_column(Integer, default=0)


class ManifestEntry(Base):
    """One item of a manifest. Duplicates are a copy count, not repeated rows; soft targets are
    not copied here but computed at export from the job's ``labels.probs``.

    No foreign keys on purpose: this is the bulk-insert table (PostgreSQL's per-row key checks
    would add a third to a build), ``manifest_inputs`` already pins the datasets and jobs, and
    entries are written only together with their manifest row, in one transaction.
    """

    __tablename__ = "manifest_entries"

    manifest_key: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(8))  # labeled | pseudo
    job_id: Mapped[int | None] = mapped_column(Integer)
    target_class: Mapped[int] = mapped_column(Integer)
    copies: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float | None] = mapped_column(REAL)
