"""Training configuration: plain values, saved whole into every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def default_magnitude(image_size: int) -> int:
    """RandAugment magnitude for an image size: 5 up to 64 px (the authors' SVHN script),
    6 at 224 px (small EfficientNets), rising to the paper's 27 at 800 px (EfficientNet-L2)."""
    points = [(64, 5), (224, 6), (800, 27)]
    if image_size <= points[0][0]:
        return points[0][1]
    for (s0, m0), (s1, m1) in zip(points, points[1:], strict=False):
        if image_size <= s1:
            return round(m0 + (m1 - m0) * (image_size - s0) / (s1 - s0))
    return points[-1][1]


@dataclass
class TrainConfig:
    manifest_id: str
    api_url: str = "http://127.0.0.1:8000"
    api_token: str | None = None
    out_dir: str = "runs/student"

    # the student
    architecture: str = "resnet18"
    image_size: int = 28
    channels: int = 1
    mean: list[float] = field(default_factory=lambda: [0.286])
    std: list[float] = field(default_factory=lambda: [0.353])
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    pretrained_path: str | None = None  # a safetensors file to start from (e.g. converted)

    # noise (each switchable, for the paper's ablations)
    randaugment: bool = True
    randaugment_magnitude: int | None = None  # None: default_magnitude(image_size)
    randaugment_ops: int = 2
    dropout: float = 0.5
    drop_path: float = 0.2
    crop_scale_min: float | None = None  # None: 0.6 below 128 px, else 0.08 (Inception crop)
    hflip: float = 0.5

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
    workers: int = 2
    amp: bool = True  # on GPU only

    # optional: the paper's train/test resolution fix, run after training (0 steps: off)
    finetune_steps: int = 0
    finetune_image_size: int | None = None  # None: 1.25 x image_size
    finetune_lr: float = 1e-4
    finetune_freeze: float = 0.5  # fraction of parameter tensors (shallowest first) frozen

    # evaluation and bookkeeping
    eval_dataset_id: int | None = None
    eval_every: int = 0  # steps; 0: only at the end
    checkpoint_every: int = 200
    resume: bool = False
    register: bool = True
    parent_id: str | None = None
    generation: int = 0
    name: str | None = None
    progress: bool = True

    @property
    def magnitude(self) -> int:
        return self.randaugment_magnitude or default_magnitude(self.image_size)

    @property
    def randaugment_spec(self) -> str:
        # mmax lifts timm's clip at 10, as the authors' magnitudes above 10 are not clipped.
        m = self.magnitude
        return f"rand-m{m}-n{self.randaugment_ops}-mmax{max(10, m)}"

    @property
    def crop_scale(self) -> tuple[float, float]:
        low = self.crop_scale_min
        if low is None:
            low = 0.6 if self.image_size < 128 else 0.08
        return (low, 1.0)

    @property
    def pseudo_batch_size(self) -> int:
        return max(1, round(self.batch_size * self.pseudo_ratio))

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("api_token")  # a secret never goes into a checkpoint
        return data
