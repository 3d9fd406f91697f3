"""The noised-teacher ablation: a job labels with the teacher's noise on, every item still once;
the method's default teacher stays clean."""

import dataclasses
import random

import numpy as np
import timm
import torch
from PIL import Image

from nst import noise
from service.core.db import session_scope
from service.models import Shard
from tests.utils import factories
from tests.utils.teacher import TEACHER_ARCH, direct_probs
from workers import labeling
from workers.teacher_model import ImageFormat, eval_transform, image_transform, normalise, pixel_transform

LABEL = "workers.tasks.label_shard"
FORMAT = ImageFormat(1, 28, "bilinear", (0.286,), (0.353,), 1.0)


def test_model_noise_is_dropout_and_stochastic_depth_with_normalisation_in_eval():
    torch.manual_seed(0)
    model = timm.create_model(TEACHER_ARCH, num_classes=10, in_chans=1, drop_rate=0.5, drop_path_rate=0.2)
    noise.model_noise_on(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    before = [m.running_mean.clone() for m in norms]
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        first, second = model(x), model(x)
    assert not torch.allclose(first, second)  # a fresh draw of the noise each pass
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms, strict=True))
    with torch.inference_mode():
        clean = model.eval()(x)
    assert torch.equal(clean, model(x))


def test_input_noise_is_randaugment_before_the_eval_transform(fmnist):
    noised = dataclasses.replace(FORMAT, randaugment=noise.randaugment_spec(28))
    assert image_transform(FORMAT) is eval_transform(FORMAT)
    paths = sorted((fmnist / "unlabeled").rglob("*.png"))[:20]
    random.seed(0)  # timm's RandAugment draws its ops from numpy, each op's chance from random
    np.random.seed(0)
    changed = 0
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("L")
            augmented, clean = image_transform(noised)(image), eval_transform(FORMAT)(image)
        assert augmented.shape == clean.shape == (1, 28, 28)
        changed += not torch.equal(augmented, clean)
    # 8 of 20 with these seeds: each of the two ops runs with probability 0.5, and some (Color,
    # AutoContrast on a grey image that already spans 0-255) leave the image as it was.
    assert changed >= 5


def test_the_workers_split_transform_gives_the_same_noised_and_clean_images(fmnist):
    """A decode process makes uint8 pixels and normalises the batch (workers/decode.py): the
    same tensors as the one-image transform, RandAugment's draws included."""
    paths = sorted((fmnist / "unlabeled").rglob("*.png"))[:20]
    for image_format in (FORMAT, dataclasses.replace(FORMAT, randaugment=noise.randaugment_spec(28))):
        expected, pixels = [], []
        for seed, path in enumerate(paths):
            with Image.open(path) as image:
                image = image.convert("L")
                random.seed(seed), np.random.seed(seed)
                expected.append(image_transform(image_format)(image))
                random.seed(seed), np.random.seed(seed)
                pixels.append(pixel_transform(image_format)(image))
        assert all(p.dtype == torch.uint8 for p in pixels)
        assert torch.equal(normalise(torch.stack(pixels), image_format), torch.stack(expected))


def test_a_noised_job_labels_every_item_once_with_labels_the_clean_teacher_would_not_give(
    client, enqueued, teacher_file, fmnist
):
    pool = factories.unlabeled_dataset(client, fmnist / "unlabeled")
    teacher = factories.ready_teacher(client, teacher_file)
    job = factories.job(
        client, teacher, pool, shard_size=150, batch_size=64, inference="openvino", noised_teacher=True
    )
    assert job["noised_teacher"] is True
    settings = labeling.LabelingSettings("cpu", decode_workers=0, commit_rows=1024, commit_seconds=1.0)
    results = [labeling.label_shard(arg, settings) for name, arg in enqueued if name == LABEL]
    assert [r.state for r in results] == ["succeeded"] * 2

    job = client.get(f"/jobs/{job['id']}").json()
    assert (job["state"], job["items_done"], job["inference_used"]) == ("succeeded", 300, ["eager"])
    labels = client.get(f"/jobs/{job['id']}/labels", params={"limit": 1000}).json()["data"]
    assert len(labels) == len({label["item_id"] for label in labels}) == 300
    clean = direct_probs(teacher_file, fmnist / "unlabeled")
    moved = [abs(label["confidence"] - float(clean[label["uri"]].max())) for label in labels]
    assert sum(m > 0.01 for m in moved) >= 150
    with session_scope() as session:
        assert {s.inference for s in session.query(Shard).filter_by(job_id=job["id"])} == {"eager"}


def test_the_teacher_is_clean_unless_asked(client, teacher_file, fmnist):
    pool = factories.unlabeled_dataset(client, fmnist / "unlabeled")
    teacher = factories.ready_teacher(client, teacher_file)
    assert factories.job(client, teacher, pool)["noised_teacher"] is False
    response = client.post(
        "/jobs", json={"teacher_id": teacher["id"], "dataset_id": pool["id"], "noised_teacher": "sometimes"}
    )
    assert response.status_code == 422 and "noised_teacher" in response.text
