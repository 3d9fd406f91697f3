"""The decode benchmark's baseline is the worker's own decode: its speed and fidelity figures
compare each candidate with what a labeling job's model sees."""

import numpy as np
import torch
from PIL import Image

from bench.decode_paths import paths
from workers.decode import ImageFiles
from workers.teacher_model import ImageFormat

FORMAT = ImageFormat(3, 48, "bicubic", (0.5,) * 3, (0.5,) * 3, 0.875)


def test_the_baseline_decodes_as_a_worker_and_every_candidate_gives_its_shape(tmp_path):
    rng = np.random.default_rng(0)
    candidates = paths(FORMAT)
    for i, size in enumerate([(160, 120), (64, 200)]):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path, quality=90)
        worker, _, error, _ = ImageFiles()[(i, str(path), FORMAT)]
        assert error == ""
        data = path.read_bytes()
        assert torch.equal(candidates["pillow (the worker's)"](data), worker)
        assert {tuple(decode(data).shape) for decode in candidates.values()} == {FORMAT.shape}
