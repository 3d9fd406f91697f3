"""A dataset's per-channel pixel mean and std, measured once at registration on an evenly spread
sample of its images, so that a student's normalisation comes from its own data rather than
from a fixed default (``trainer/train.py`` reads it when the recipe names none). The images are
read through ``nst.storage``: local files and objects in a store alike."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from nst import storage

SAMPLE = 256
MIN_STD = 1e-3  # a blank sample still gives a usable divisor


class EvenSample:
    """At most ``size`` URIs spread evenly over rows that pass through ``watch``, however many
    there turn out to be, keeping at most twice ``size`` at a time: every ``stride``-th row is
    kept, and when the keep is full every other one goes and the stride doubles."""

    def __init__(self, size: int = SAMPLE) -> None:
        self.size, self.stride, self._kept = size, 1, []

    def watch(self, rows: Iterable[tuple]) -> Iterator[tuple]:
        for ordinal, row in enumerate(rows):
            if ordinal % self.stride == 0:
                self._kept.append(row[0])
                if len(self._kept) == 2 * self.size:
                    del self._kept[1::2]
                    self.stride *= 2
            yield row

    @property
    def uris(self) -> list[str]:
        return self._kept[:: max(1, -(-len(self._kept) // self.size))]


def measure(uris: Sequence[str]) -> dict | None:
    """``{"L": {"mean", "std"}, "RGB": {"mean", "std"}, "sample": n}`` over the images of
    ``uris`` (an ``EvenSample``'s), pixels in [0, 1]; None when none of them decodes (labeling
    then records why)."""
    if not uris:
        return None
    sums = {"L": np.zeros(1), "RGB": np.zeros(3)}
    squares = {"L": np.zeros(1), "RGB": np.zeros(3)}
    pixels = decoded = 0
    for uri in uris:
        try:
            with Image.open(storage.openable(uri)) as image:
                image.load()
                planes = {mode: image.convert(mode) for mode in sums}
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        for mode, plane in planes.items():
            values = np.asarray(plane, dtype=np.float64).reshape(-1, len(sums[mode])) / 255.0
            sums[mode] += values.sum(axis=0)
            squares[mode] += np.square(values).sum(axis=0)
        pixels += planes["L"].width * planes["L"].height
        decoded += 1
    if not decoded:
        return None
    stats: dict = {"sample": decoded}
    for mode in sums:
        mean = sums[mode] / pixels
        std = np.sqrt(np.maximum(squares[mode] / pixels - np.square(mean), 0.0))
        stats[mode] = {
            "mean": [round(float(m), 4) for m in mean],
            "std": [round(max(float(s), MIN_STD), 4) for s in std],
        }
    return stats
