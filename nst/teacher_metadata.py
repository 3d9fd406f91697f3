"""The teacher metadata contract: everything a worker needs to rebuild a model and its un-noised
preprocessing. The checkpoint writer embeds it, the trainer fills it in, the API validates it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nst.text import Text, check_json

# timm.create_model keyword arguments a teacher may carry: regularisation rates and the pooling.
# Never one that names a file, a URL or pretrained weights (checkpoint_path, pretrained,
# pretrained_cfg, cache_dir, ...): a worker would open or unpickle whatever it named.
# num_classes and in_chans come from class_names and channels.
RATE_KWARGS = frozenset(
    {"drop_rate", "drop_path_rate", "drop_block_rate", "proj_drop_rate", "attn_drop_rate", "pos_drop_rate"}
)
GLOBAL_POOLS = frozenset({"", "avg", "max", "avgmax", "catavgmax", "token", "map"})
SAFE_MODEL_KWARGS = RATE_KWARGS | {"global_pool"}


def check_model_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Raise ``ValueError`` naming the first keyword argument that is not known to be safe."""
    for key, value in kwargs.items():
        if key not in SAFE_MODEL_KWARGS:
            raise ValueError(f"{key[:100]!r} is not allowed; allowed: {', '.join(sorted(SAFE_MODEL_KWARGS))}")
        if key == "global_pool":
            if value not in GLOBAL_POOLS:
                raise ValueError(f"global_pool: {str(value)[:100]!r} is not one of {sorted(GLOBAL_POOLS)}")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise ValueError(f"{key}: {str(value)[:100]!r} is not a rate in [0, 1)")
    return kwargs


class TeacherMetadata(BaseModel):
    """Everything a worker needs to rebuild the model and its un-noised preprocessing."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    name: Text | None = Field(None, max_length=200)
    architecture: Text = Field(min_length=1, max_length=200, description="timm model name")
    class_names: list[Text] = Field(
        min_length=2, max_length=100_000, description="Output order of the classifier"
    )
    image_size: int = Field(ge=8, le=4096)
    channels: Literal[1, 3] = 3
    mean: list[float]
    std: list[float]
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    crop_pct: float = Field(1.0, ge=0.01, le=1.0, description="Resize to size/crop_pct, crop size")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description=f"timm.create_model arguments, only {sorted(SAFE_MODEL_KWARGS)}"
    )
    parent_id: Text | None = Field(None, max_length=64)
    manifest_id: Text | None = Field(None, max_length=64)
    generation: int = Field(0, ge=0, le=2**31 - 1)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @field_validator("class_names")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        return names

    @field_validator("model_kwargs")
    @classmethod
    def _safe_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        return check_model_kwargs(kwargs)

    @field_validator("metrics")
    @classmethod
    def _json_metrics(cls, metrics: dict[str, Any]) -> dict[str, Any]:
        return check_json(metrics)

    @model_validator(mode="after")
    def _normalisation_matches_channels(self) -> TeacherMetadata:
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise ValueError(f"{key}: needs {self.channels} values, one per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std: every value must be positive")
        return self
