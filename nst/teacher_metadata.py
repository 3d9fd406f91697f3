"""The teacher metadata contract: everything a worker needs to rebuild a model and its un-noised
preprocessing. The checkpoint writer embeds it, the trainer fills it in, the API validates it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TeacherMetadata(BaseModel):
    """Everything a worker needs to rebuild the model and its un-noised preprocessing."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str | None = Field(None, max_length=200)
    architecture: str = Field(min_length=1, max_length=200, description="timm model name")
    class_names: list[str] = Field(min_length=2, description="Output order of the classifier")
    image_size: int = Field(ge=8, le=4096)
    channels: Literal[1, 3] = 3
    mean: list[float]
    std: list[float]
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    crop_pct: float = Field(1.0, gt=0.0, le=1.0, description="Resize to size/crop_pct, crop size")
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    parent_id: str | None = None
    manifest_id: str | None = None
    generation: int = Field(0, ge=0)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @field_validator("class_names")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        return names

    @model_validator(mode="after")
    def _normalisation_matches_channels(self) -> TeacherMetadata:
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise ValueError(f"{key}: needs {self.channels} values, one per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std: every value must be positive")
        return self
