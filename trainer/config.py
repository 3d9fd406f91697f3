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

from nst import noise


class RecipeError(ValueError):
    """A recipe value that would fail only once training runs, with the field it is in."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem

    def as_option(self) -> str:
        """The message as the command line names the field."""
        return f"--{self.field.replace('_', '-')}: {self.problem}"


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
        """Raise RecipeError for a recipe that would fail only once training runs."""
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


@dataclass
class TrainConfig:
    service: ServiceLink
    recipe: Recipe = field(default_factory=Recipe)
    runtime: Runtime = field(default_factory=Runtime)
    lineage: Lineage = field(default_factory=Lineage)

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
