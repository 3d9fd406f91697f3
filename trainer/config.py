"""Training configuration: plain values in four parts, saved whole into every checkpoint.

The recipe is what changes the student a run makes; the runtime is how the run is carried out;
the service link is where its data comes from and goes to; the lineage places the student among
its teachers. Field names are unique across the parts, so one flat name per field serves the
command line.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nst import noise


class RecipeError(ValueError):
    """A setting (of the recipe, or any other part) that would fail only once training runs, or
    train something other than it says, with the field it is in."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem

    def as_option(self) -> str:
        """The message as the command line names the field."""
        return f"--{self.field.replace('_', '-')}: {self.problem}"


# What a teacher's metadata accepts (nst.teacher_metadata): a student trained here must register.
IMAGE_SIZES = (8, 4096)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# NumPy takes 32-bit seeds, and every rank seeds it with seed * 100 + rank (trainer.train).
MAX_SEED = 2**32 // 100 - 1


def _require(field: str, value, ok: bool, rule: str) -> None:
    if not ok:
        raise RecipeError(field, f"must be {rule}, not {value!r}")


def _in_range(field: str, value, low, high, rule: str) -> None:
    """``low <= value <= high`` (None: unbounded); ``rule`` says it in words."""
    ok = (low is None or value >= low) and (high is None or value <= high)
    _require(field, value, ok, rule)


def _probability_below_one(field: str, value: float) -> None:
    _require(field, value, 0 <= value < 1, "0 or more and below 1")


@dataclass
class Recipe:
    # the student
    architecture: str = "resnet18"
    image_size: int = 28
    channels: int = 1
    # None: the pretrained checkpoint's, else the manifest's labeled data's (measured at registration)
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    pretrained_path: str | None = None  # a safetensors file to start from (e.g. converted)

    # noise (each switchable, for the paper's ablations)
    randaugment: bool = True
    randaugment_magnitude: int | None = None  # None: default_magnitude(image_size)
    randaugment_ops: int = noise.RANDAUGMENT_OPS
    randaugment_increasing: bool = False  # timm's inc1 ops (see noise.randaugment_spec)
    dropout: float = noise.DROPOUT
    drop_path: float = noise.DROP_PATH
    crop_scale_min: float | None = None  # None: 0.6 below 128 px, else 0.08 (Inception crop)
    hflip: float = 0.0  # off unless asked for: a flip turns digits and text into other classes

    # optimisation
    steps: int = 1000
    batch_size: int = 64  # labeled images per step
    pseudo_ratio: float = 3.0  # pseudo-labeled images per labeled image in a step
    label_smoothing: float = 0.1  # labeled data only
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    ema_decay: float = 0.999
    seed: int = 0

    # optional: the paper's train/test resolution fix, run after training (0 steps: off)
    finetune_steps: int = 0
    finetune_image_size: int | None = None  # None: 1.25 x image_size
    finetune_lr: float = 1e-4
    finetune_freeze: float = 0.5  # fraction of parameter tensors (shallowest first) frozen

    @property
    def magnitude(self) -> int:
        if self.randaugment_magnitude is None:
            return noise.default_magnitude(self.image_size)
        return self.randaugment_magnitude

    @property
    def randaugment_spec(self) -> str:
        return noise.randaugment_spec(
            self.image_size, self.magnitude, self.randaugment_ops, increasing=self.randaugment_increasing
        )

    def check(self) -> None:
        """Raise RecipeError for a recipe that would fail only once training runs (most after the
        manifest's download), or would quietly train something other than it says."""
        self._check_student()
        self._check_noise()
        self._check_optimisation()
        self._check_randaugment()

    def _check_student(self) -> None:
        import timm  # here: the defaults above are read without timm

        _require("architecture", self.architecture, timm.is_model(self.architecture), "a timm model name")
        sizes = f"from {IMAGE_SIZES[0]} to {IMAGE_SIZES[1]} (pixels)"
        _in_range("image_size", self.image_size, *IMAGE_SIZES, sizes)
        _require("channels", self.channels, self.channels in (1, 3), "1 or 3")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None:
                _require(
                    name, values, len(values) == self.channels, f"one value per channel ({self.channels})"
                )
        if self.std is not None:
            _require("std", self.std, all(s > 0 for s in self.std), "positive")
        _require(
            "interpolation",
            self.interpolation,
            self.interpolation in INTERPOLATIONS,
            " or ".join(INTERPOLATIONS),
        )
        _in_range("crop_pct", self.crop_pct, 0.01, 1.0, "from 0.01 to 1")
        if self.pretrained_path is not None:
            found = Path(self.pretrained_path).is_file()
            _require("pretrained_path", self.pretrained_path, found, "an existing safetensors file")

    def _check_noise(self) -> None:
        _probability_below_one("dropout", self.dropout)
        _probability_below_one("drop_path", self.drop_path)
        if self.crop_scale_min is not None:
            _require(
                "crop_scale_min", self.crop_scale_min, 0 < self.crop_scale_min <= 1, "above 0 and at most 1"
            )
        _in_range("hflip", self.hflip, 0, 1, "a probability from 0 to 1")
        _in_range("randaugment_ops", self.randaugment_ops, 0, None, "0 or more")
        if self.randaugment_magnitude is not None:
            _in_range("randaugment_magnitude", self.randaugment_magnitude, 0, None, "0 or more")

    def _check_optimisation(self) -> None:
        from timm.optim import list_optimizers

        _in_range("steps", self.steps, 1, None, "1 or more")
        _in_range("batch_size", self.batch_size, 1, None, "1 or more")
        _in_range("pseudo_ratio", self.pseudo_ratio, 0, None, "0 or more (0: the labeled entries only)")
        _probability_below_one("label_smoothing", self.label_smoothing)
        # timm reads "lookahead_adamw" as adamw with lookahead
        known = self.optimizer.lower().split("_")[-1] in list_optimizers()
        _require(
            "optimizer", self.optimizer, known, "one of timm's optimizers (timm.optim.list_optimizers())"
        )
        _require("lr", self.lr, self.lr > 0, "positive")
        _in_range("weight_decay", self.weight_decay, 0, None, "0 or more")
        _in_range("warmup_steps", self.warmup_steps, 0, None, "0 or more")
        _require("ema_decay", self.ema_decay, 0 <= self.ema_decay < 1, "0 (no EMA) or more and below 1")
        _in_range("seed", self.seed, 0, MAX_SEED, f"from 0 to {MAX_SEED}")
        _in_range("finetune_steps", self.finetune_steps, 0, None, "0 (off) or more")
        if self.finetune_image_size is not None:
            sizes = f"from {IMAGE_SIZES[0]} to {IMAGE_SIZES[1]} (pixels)"
            _in_range("finetune_image_size", self.finetune_image_size, *IMAGE_SIZES, sizes)
        _require("finetune_lr", self.finetune_lr, self.finetune_lr > 0, "positive")
        _in_range("finetune_freeze", self.finetune_freeze, 0, 1, "a fraction from 0 to 1")

    def _check_randaugment(self) -> None:
        if self.randaugment:
            try:
                noise.check_randaugment(self.randaugment_spec)
            except ValueError as error:
                hint = "9 or less with the increasing ops" if self.randaugment_increasing else "3 or more"
                raise RecipeError("randaugment_magnitude", f"{error}; it needs {hint}") from None

    @property
    def crop_scale(self) -> tuple[float, float]:
        low = self.crop_scale_min
        if low is None:
            low = 0.6 if self.image_size < 128 else 0.08
        return (low, 1.0)

    @property
    def pseudo_batch_size(self) -> int:
        """Pseudo-labeled images per step: at least one unless the ratio is 0, which trains on the
        labeled entries only."""
        if self.pseudo_ratio == 0:
            return 0
        return max(1, round(self.batch_size * self.pseudo_ratio))

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    @property
    def image_format(self) -> dict:
        """How the student takes its images: written into its checkpoint, read back by
        ``nst.transforms.eval_transform``."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }


@dataclass
class Runtime:
    out_dir: str = "runs/student"
    workers: int = 2
    amp: bool = True  # on GPU only
    eval_every: int = 0  # steps; 0: only at the end
    checkpoint_every: int = 200
    resume: bool = False
    progress: bool = True

    def check(self) -> None:
        _in_range("workers", self.workers, 0, None, "0 (decode in the main process) or more")
        _in_range("eval_every", self.eval_every, 0, None, "0 (only at the end) or more")
        _in_range("checkpoint_every", self.checkpoint_every, 0, None, "0 (only at the end) or more")


@dataclass
class ServiceLink:
    manifest_id: str
    api_url: str = "http://127.0.0.1:8000"
    api_token: str | None = None
    eval_dataset_id: int | None = None
    register: bool = True


@dataclass
class Lineage:
    parent_id: str | None = None
    generation: int = 0
    name: str | None = None

    def check(self) -> None:
        _in_range("generation", self.generation, 0, 2**31 - 1, "0 or more")
        if self.name is not None:
            _require("name", self.name, 0 < len(self.name) <= 200, "1 to 200 characters")


@dataclass
class TrainConfig:
    service: ServiceLink
    recipe: Recipe = field(default_factory=Recipe)
    runtime: Runtime = field(default_factory=Runtime)
    lineage: Lineage = field(default_factory=Lineage)

    def check(self) -> None:
        """Raise RecipeError for a setting that would fail only once training runs."""
        self.recipe.check()
        self.runtime.check()
        self.lineage.check()

    @classmethod
    def parts(cls) -> dict[str, type]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def field_names(cls) -> dict[str, str]:
        """Every field's name and the part that holds it."""
        return {f.name: part for part, kind in cls.parts().items() for f in dataclasses.fields(kind)}

    @classmethod
    def from_flat(cls, values: dict) -> TrainConfig:
        """From one value per field name (the command line's options); names that are no field
        are refused."""
        unknown = sorted(values.keys() - cls.field_names().keys())
        if unknown:
            raise TypeError(f"TrainConfig has no fields {unknown}")
        return cls(
            **{
                name: part(**{f.name: values[f.name] for f in dataclasses.fields(part) if f.name in values})
                for name, part in cls.parts().items()
            }
        )

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """From a saved config: nested, as ``to_dict`` writes it, or flat, as older checkpoints
        hold it (their fields since removed are dropped)."""
        parts = cls.parts()
        if not parts.keys() & data.keys():
            known = cls.field_names()
            return cls.from_flat({k: v for k, v in data.items() if k in known})
        return cls(**{name: parts[name](**data[name]) for name in parts if name in data})

    def to_dict(self) -> dict:
        data = asdict(self)
        data["service"].pop("api_token")  # a secret never goes into a checkpoint
        return data
