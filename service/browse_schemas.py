"""Bodies of the label browser's endpoints (tiles of labels, manifest entries and flips) and
of the comparison of two jobs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ClassProbability(BaseModel):
    index: int
    probability: float


class Tile(BaseModel):
    """One image as the label browser shows it."""

    item_id: int
    uri: str
    class_index: int = Field(description="The predicted class (labels) or the target class (entries)")
    confidence: float | None = Field(description="The teacher's top probability; null for labeled entries")
    entropy: float | None = Field(description="Of the teacher's distribution, in nats")
    top: list[ClassProbability] = Field(description="The teacher's most probable classes, best first")
    rest_mass: float | None = Field(description="Probability outside the stored top-k; null when all stored")
    true_class: int | None = Field(
        description="The dataset's own label, in the same class order; null if none"
    )
    correct: bool | None = Field(description="class_index == true_class; null without a true label")


class TilesPage(BaseModel):
    classes: list[str]
    has_truth: bool = Field(description="Whether true labels are known, so wrong ones can be marked")
    count: int = Field(description="Rows passing the filters, over all pages")
    data: list[Tile]
    next_cursor: str | None


class EntryTile(Tile):
    source: Literal["labeled", "pseudo"]
    copies: int
    job_id: int | None


class EntryTilesPage(TilesPage):
    data: list[EntryTile]


class ClassChange(BaseModel):
    from_class: int
    to_class: int
    count: int


class JobComparison(BaseModel):
    job_id: int
    other_job_id: int
    dataset_id: int
    classes: list[str]
    compared: int = Field(description="Items labeled by both jobs")
    flipped: int = Field(description="Items whose predicted class differs")
    flip_rate: float | None = Field(description="flipped / compared; null when nothing is compared")
    changes: list[ClassChange] = Field(description="Every from -> to pair with its count, largest first")


class FlipTile(Tile):
    """The other job's label of the item, and this job's class and confidence for it."""

    from_class: int
    from_confidence: float


class FlipsPage(BaseModel):
    classes: list[str]
    data: list[FlipTile]
    next_cursor: int | None
