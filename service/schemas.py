"""Request and response bodies, named by role (``XCreate``, ``XPublic``, ``XsPublic``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator, model_validator

from nst import inference
from nst.states import JobState, ShardState, TeacherStatus, WorkerState
from nst.targets import TEMPERATURE_MAX, TEMPERATURE_MIN
from nst.teacher_metadata import TeacherMetadata
from nst.text import Text
from service.models import recorded_names

# Integers a request may carry, as the INTEGER columns they meet hold them.
RowId = Annotated[int, Field(ge=1, le=2**31 - 1)]
PATH_MAX = 4096  # PATH_MAX on Linux

# Timestamps are stored as naive UTC; they leave the API marked as UTC.
UtcDatetime = Annotated[
    datetime, PlainSerializer(lambda d: d.replace(tzinfo=UTC).isoformat(), return_type=str)
]


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- datasets -------------------------------------------------------------------------------


# Request bodies are strict: `true` is not a batch size, "yes" not a flag, "1" not an ID.
_REQUEST = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class DatasetCreate(BaseModel):
    model_config = _REQUEST

    name: Text = Field(min_length=1, max_length=200)
    kind: Literal["labeled", "unlabeled"]
    split: Literal["train", "val", "test"] | None = None
    path: Text = Field(
        min_length=1,
        max_length=PATH_MAX,
        description="A folder (ImageFolder layout when labeled) or a .csv/.jsonl/.txt list, "
        "absolute or relative to the first data root; it must lie under a data root.",
    )
    classes: list[Annotated[Text, Field(min_length=1, max_length=200)]] | None = Field(
        None, max_length=100_000, description="Class order for a labeled dataset; default: sorted names."
    )
    modality: Literal["image"] = "image"

    @model_validator(mode="after")
    def _split_and_classes(self) -> DatasetCreate:
        if self.kind == "labeled" and self.split is None:
            raise ValueError("split: a labeled dataset needs a split (train, val or test)")
        if self.kind == "unlabeled" and self.classes is not None:
            raise ValueError("classes: an unlabeled dataset has no classes")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes: class names must be unique")
        return self


class ChannelStats(BaseModel):
    mean: list[float]
    std: list[float]


class PixelStats(BaseModel):
    L: ChannelStats
    RGB: ChannelStats
    sample: int = Field(description="Images measured (an even spread of the dataset, at most 256)")


class DatasetPublic(_Public):
    id: int
    name: str
    kind: str
    split: str | None
    modality: str
    source_path: str
    source_format: str
    classes: list[str] | None
    item_count: int
    pixel_stats: PixelStats | None = Field(
        None, description="Per-channel pixel mean and std (0-1) of a sample, as grayscale and RGB"
    )
    created_at: UtcDatetime
    class_counts: dict[str, int] | None = None


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


class ItemPublic(_Public):
    id: int
    ordinal: int
    uri: str
    label: int | None


class ItemsPage(BaseModel):
    data: list[ItemPublic]
    next_cursor: int | None


# --- teachers -------------------------------------------------------------------------------


class StrictTeacherMetadata(TeacherMetadata):
    """A request body's metadata: strict like every body (strictness is not inherited by a
    nested model; a checkpoint's own header is read by ``TeacherMetadata``)."""

    model_config = ConfigDict(strict=True)


class TeacherCreate(BaseModel):
    model_config = _REQUEST

    path: Text = Field(min_length=1, max_length=PATH_MAX, description="A .safetensors file under a data root")
    metadata: StrictTeacherMetadata | None = Field(
        None, description="Default: the metadata the `nst teachers convert` command embedded"
    )


class TeacherPublic(_Public):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: str
    name: str
    architecture: str
    class_names: list[str]
    image_size: int
    channels: int
    mean: list[float]
    std: list[float]
    interpolation: str
    crop_pct: float
    model_kwargs: dict[str, Any]
    parent_id: str | None
    manifest_id: str | None
    generation: int
    metrics: dict[str, Any]
    calibrated_temperature: float | None = Field(
        None, description="Softmax temperature fitted on a val split (`nst evaluate --fit-temperature`)"
    )
    status: TeacherStatus
    status_reason: str | None
    size_bytes: int
    created_at: UtcDatetime


class TeachersPublic(BaseModel):
    data: list[TeacherPublic]
    count: int


class TeacherTemperature(BaseModel):
    model_config = _REQUEST

    temperature: float | None = Field(
        ge=TEMPERATURE_MIN,
        le=TEMPERATURE_MAX,
        description="The calibrated softmax temperature, in [0.01, 100]; null clears it",
    )


# --- jobs -----------------------------------------------------------------------------------


InferenceMode = Literal[inference.SETTINGS]


class JobCreate(BaseModel):
    model_config = _REQUEST

    teacher_id: Text = Field(min_length=1, max_length=64)
    dataset_id: RowId
    batch_size: int = Field(inference.DEFAULT_BATCH_SIZE, ge=1, le=4096)
    temperature: float | Literal["calibrated"] = Field(
        1.0,
        description='softmax(logits / T), T in [0.01, 100]; "calibrated": the teacher\'s '
        "calibrated_temperature (422 when it has none); the job records the number used",
    )
    top_k: int = Field(10, ge=1, le=1000, description="Classes kept when not storing them all")
    full_distribution_max: int = Field(
        100, ge=0, le=10000, description="Store the whole distribution up to this many classes"
    )
    shard_size: int = Field(1000, ge=1, le=1_000_000)
    inference: InferenceMode = Field(
        "auto",
        description="How the teacher runs: eager (float32, the reference), bf16, compile, "
        "openvino (CPU); auto: the worker's default for its device",
    )
    noised_teacher: bool = Field(
        False,
        description="The paper's ablation, not for real use: label with the teacher's noise on "
        "(RandAugment on its inputs, dropout 0.5 and stochastic depth 0.2 active, normalisation "
        "in eval), in eager float32 whatever `inference` says",
    )

    @field_validator("temperature")
    @classmethod
    def _temperature_range(cls, value: float | str) -> float | str:
        if value != "calibrated" and not TEMPERATURE_MIN <= value <= TEMPERATURE_MAX:
            raise ValueError(f"{value} is outside [{TEMPERATURE_MIN}, {TEMPERATURE_MAX:g}]")
        return value


class JobPublic(BaseModel):
    id: int
    teacher_id: str
    dataset_id: int
    state: JobState
    batch_size: int
    temperature: float
    top_k: int
    full_distribution_max: int
    shard_size: int
    inference: InferenceMode
    inference_used: list[str] = Field(description="The modes that labeled its shards so far")
    noised_teacher: bool
    num_classes: int
    items_total: int
    items_done: int
    items_failed: int
    shards_total: int
    shards_done: int
    shards_failed: int
    errors: list[str]
    throughput_items_per_s: float | None
    eta_s: float | None
    worker_idle_s: float | None = Field(
        description="Seconds since a worker last claimed, renewed or finished one of its shards (or since "
        "they were last sent); 0 while one labels it, null once the job has ended"
    )
    waiting_for_worker: bool = Field(
        description="In progress and untouched by any worker for a minute or more, or for 10 s or more "
        "while no worker is online (GET /workers): no worker runs, none reaches this broker and database, "
        "or all are busy with other jobs"
    )
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


# --- workers --------------------------------------------------------------------------------


class WorkerPublic(BaseModel):
    name: str = Field(description="Celery's node name (`--hostname`), e.g. worker1@host")
    pid: int = Field(description="Its main process")
    device: str
    concurrency: int = Field(description="Shards it labels at once")
    state: WorkerState = Field(
        description="online; stopped (shut down cleanly); lost (silent for three of its heartbeats: "
        "killed, its host down, or cut off from the database)"
    )
    silent_s: float = Field(description="Seconds since its last report")
    started_at: UtcDatetime
    last_seen_at: UtcDatetime
    stopped_at: UtcDatetime | None
    software: dict[str, str] | None = Field(
        description="What it runs, each with its version (nst, python, torch, timm, openvino, ...); "
        "null from a worker that does not report it"
    )


class WorkersPublic(BaseModel):
    data: list[WorkerPublic] = Field(description="Workers heard from in the last day, online ones first")
    count: int
    online: int
    software_differs: dict[str, dict[str, list[str]]] = Field(
        description="Each package the API and the online workers run in more than one version: "
        '{package: {version: ["API" or worker names]}}; empty when they agree'
    )


class ShardPublic(_Public):
    index: int
    start_ordinal: int
    end_ordinal: int
    state: ShardState
    items_done: int
    items_failed: int
    attempts: int
    error: str | None
    inference: list[str] = Field(
        description="The modes that labeled its items, in name order: more than one when its attempts "
        "ran in different modes (another worker's device, a fallback to eager); empty until a worker "
        "starts it"
    )
    workers: list[str] = Field(
        description="The workers (Celery node names, as GET /workers lists them) that labeled its items, "
        "in name order: more than one when its attempts ran on different workers"
    )
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None

    @field_validator("inference", "workers", mode="before")
    @classmethod
    def _names(cls, recorded: object) -> object:
        return recorded_names(recorded) if recorded is None or isinstance(recorded, str) else recorded


class ShardsPage(BaseModel):
    data: list[ShardPublic]
    next_cursor: int | None = Field(description="The next page's first shard index; null on the last page")
    count: int = Field(description="How many of the job's shards match, on every page")


class LabelPublic(BaseModel):
    item_id: int
    uri: str
    predicted: int
    confidence: float
    entropy: float
    probs: list[float] = Field(description="All classes, or the top-k of `top_indices`")
    top_indices: list[int] | None
    rest_mass: float | None


class LabelsPage(BaseModel):
    data: list[LabelPublic]
    next_cursor: int | None


class ItemErrorPublic(BaseModel):
    item_id: int
    uri: str
    message: str


class ItemErrorsPage(BaseModel):
    data: list[ItemErrorPublic]
    next_cursor: int | None = Field(description="The next page's first item ID; null on the last page")
    count: int = Field(description="How many items of the job failed, on every page")


# --- statistics -----------------------------------------------------------------------------


class ClassStats(BaseModel):
    index: int
    pseudo_labeled: int
    above_threshold: int
    mean_confidence: float | None = Field(description="null when the class has no labels")
    histogram: list[int] = Field(description="Counts per confidence bin, see `bin_edges`")
    labeled: int | None = Field(description="The labeled dataset's count; null without one")


class StatsTotals(BaseModel):
    pseudo_labeled: int
    above_threshold: int
    labeled: int | None


class JobStats(BaseModel):
    job_id: int
    teacher_id: str
    dataset_id: int
    state: JobState
    threshold: float
    labeled_dataset_id: int | None
    bin_edges: list[float] = Field(description="Bin i is [edges[i], edges[i+1]); the last is closed")
    classes: dict[str, ClassStats] = Field(description="By class name, in the teacher's order")
    totals: StatsTotals
    imbalance_ratio: float | None = Field(
        description="Largest over smallest pseudo-labeled class; null when a class has none"
    )
    imbalance_ratio_above_threshold: float | None
    labeled_imbalance_ratio: float | None


# --- manifests ------------------------------------------------------------------------------


class ManifestCreate(BaseModel):
    model_config = _REQUEST

    labeled_dataset_ids: list[RowId] = Field(
        default_factory=list,
        max_length=1000,
        description="Labeled train splits; may be empty only if jobs are given",
    )
    job_ids: list[RowId] = Field(
        default_factory=list,
        max_length=1000,
        description="Succeeded labeling jobs; empty for a labeled-only manifest",
    )
    threshold: float = Field(0.3, ge=0.0, le=1.0, description="Keep pseudo labels at or above")
    target_per_class: int | None = Field(
        None,
        ge=1,
        le=2**31 - 1,
        description="Pseudo-labeled images per class (with copies). Default: the filtered pool "
        "spread evenly ('even') or split like the labeled set ('labeled_distribution'); with "
        "'labeled_distribution' a number sets the mean per class",
    )
    target_mode: Literal["even", "labeled_distribution"] = "even"
    balance: bool = Field(True, description="Cap and duplicate to the target; off: keep all once")
    soft: bool = Field(True, description="Soft targets (the teacher's distribution) or hard (argmax)")
    temperature: float = Field(
        1.0, ge=TEMPERATURE_MIN, le=TEMPERATURE_MAX, description="Soft targets are p^(1/T), renormalised"
    )
    per_class_thresholds: bool = Field(
        False,
        description="Per class, the highest threshold on a 0.01 grid, at or above `threshold`, that "
        "still leaves the target (the authors' code); the pool above it is then sampled to the target",
    )
    seed: int = Field(0, ge=0, lt=2**31, description="Seeds which images get the fractional copy")

    @model_validator(mode="after")
    def _consistent(self) -> ManifestCreate:
        if not self.labeled_dataset_ids and not self.job_ids:
            raise ValueError("labeled_dataset_ids: give labeled datasets, labeling jobs, or both")
        if self.per_class_thresholds and not self.balance:
            raise ValueError("per_class_thresholds: needs balance, which sets the target they leave")
        if self.target_mode == "labeled_distribution" and not self.labeled_dataset_ids:
            raise ValueError("target_mode: 'labeled_distribution' needs labeled_dataset_ids")
        return self


class ManifestProvenance(BaseModel):
    teacher_ids: list[str]
    job_ids: list[int]
    labeled_dataset_ids: list[int]
    unlabeled_dataset_ids: list[int]


class ManifestClassCounts(BaseModel):
    labeled: int
    pseudo_unique: int
    pseudo_with_copies: int
    target: int | None = Field(description="Pseudo-labeled target; null with balancing off")
    threshold: float | None = Field(description="The threshold applied to this class's pseudo labels")


class ManifestTotals(BaseModel):
    labeled: int
    pseudo_unique: int
    pseudo_with_copies: int
    entries: int = Field(description="Entry rows: labeled + pseudo_unique")
    samples: int = Field(description="Training samples per epoch: labeled + pseudo_with_copies")


class ManifestPublic(BaseModel):
    id: str = Field(description="sha256 of everything that determines the entries")
    classes: list[str] = Field(description="Class names in target index order")
    params: dict[str, Any] = Field(description="The canonical request; null where it cannot matter")
    provenance: ManifestProvenance
    class_counts: dict[str, ManifestClassCounts]
    totals: ManifestTotals
    created_at: UtcDatetime


class ManifestsPublic(BaseModel):
    data: list[ManifestPublic]
    count: int


class ManifestEntryPublic(BaseModel):
    item_id: int
    uri: str
    source: Literal["labeled", "pseudo"]
    target: int | list[float] = Field(
        description="Class index (labeled, hard pseudo) or the soft distribution over `classes`"
    )
    copies: int = Field(ge=1)
    confidence: float | None = Field(description="The teacher's top probability; null for labeled")


class ManifestEntriesPage(BaseModel):
    data: list[ManifestEntryPublic]
    next_cursor: int | None


# --- pseudo-label quality -------------------------------------------------------------------


class QualityPoint(BaseModel):
    threshold: float
    kept: int = Field(description="Labels at or above the threshold")
    right: int = Field(description="Kept labels whose predicted class is the item's true class")
    coverage: float | None = Field(description="kept / labels; null when there are none")
    precision: float | None = Field(description="right / kept; null when none is kept")


class ClassQuality(BaseModel):
    index: int
    labels: int = Field(description="Labels predicting this class")
    points: list[QualityPoint]


class JobQuality(BaseModel):
    job_id: int
    teacher_id: str
    dataset_id: int
    labels: int = Field(description="Labels of items that carry a true label")
    overall: list[QualityPoint]
    classes: dict[str, ClassQuality] = Field(
        description="By predicted class name, in the teacher's order: what a per-class threshold keeps"
    )
