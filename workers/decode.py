"""The decode pipeline: image files to tensors in decode processes, in batches the model takes.

One DataLoader lives as long as the worker process and serves every shard of every teacher;
``ShardBatches.start`` points it at the next shard's items before each pass. ``reset`` drops it
when one of its processes died, so the next pass starts fresh ones.
"""

from __future__ import annotations

import errno
import io
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Sampler, default_collate
from torch.utils.data import Dataset as TorchDataset

from nst import storage
from workers import png
from workers.teacher_model import ImageFormat, keeps_pixels, normalise, pixel_transform

Batch = tuple[torch.Tensor, list[int], list[str]]

# Reading the file failed, not decoding it (a network file system or object storage that
# hiccupped): a later attempt may well read it.
_TRANSIENT_ERRNOS = {
    errno.EIO,
    errno.EAGAIN,
    errno.EINTR,
    errno.ETIMEDOUT,
    errno.ESTALE,
    errno.ENETDOWN,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.ECONNRESET,
    errno.ECONNABORTED,
}


class TransientError(str):
    """An item's error message whose cause may pass (see ``is_transient``): the shard retries
    the item in a later attempt instead of recording it for good."""


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (ConnectionError, TimeoutError)) or (
        isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS
    )


class ImageFiles(TorchDataset):
    """Decodes the image a key names, ``(item_id, uri, image_format)``, to its uint8 pixels
    (``pixel_transform``; ``collate`` normalises the batch): keyed rather than indexed, and the
    key says which teacher's transform applies, so one set of decode processes serves every
    shard of every teacher. An unreadable file becomes an error string, a ``TransientError``
    when reading it may succeed later."""

    def __getitem__(self, key: tuple[int, str, ImageFormat]):
        item_id, uri, image_format = key
        # Outside the try: a bad format is no item's fault.
        transform, size = pixel_transform(image_format), image_format.image_size
        as_is = keeps_pixels(image_format)  # then an image of the teacher's size skips the transform
        try:
            data = _read(uri)
            image, array = None, png.decode(data, image_format.channels)
            if array is None:  # Pillow for every other file (in memory: nothing to close)
                image = Image.open(io.BytesIO(data))
                if image.mode != image_format.mode:  # converting to its own mode would copy it
                    image = image.convert(image_format.mode)
                if as_is and image.size == (size, size):
                    array = np.array(image)
            if as_is and array is not None and array.shape[:2] == (size, size):
                pixels = _as_tensor(array)
            else:
                pixels = transform(image if image is not None else Image.fromarray(array))
            return pixels, item_id, "", image_format
        except Exception as exc:  # any decode failure is recorded on the item
            message = _why(exc)
            return (
                torch.zeros(image_format.shape, dtype=torch.uint8),
                item_id,
                TransientError(message) if is_transient(exc) else message,
                image_format,
            )


def _why(exc: Exception) -> str:
    """An item error's message. Pillow's for a file it cannot read names the in-memory buffer
    (``<_io.BytesIO object at 0x…>``), which says nothing; the item's URI says which file."""
    if isinstance(exc, UnidentifiedImageError):
        return "UnidentifiedImageError: not an image file Pillow can read"
    return f"{type(exc).__name__}: {exc}"[:500]


def _read(uri: str) -> bytes:
    """The file's bytes: a URL's through this process's own file system (nst.storage: safe
    after the fork; a store that did not answer raises a ConnectionError, transient), a local
    file's as ``open`` reads them (its errors as they are)."""
    if storage.is_url(uri):
        return storage.read_bytes(uri)
    with open(uri, "rb") as handle:
        return handle.read()


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) uint8 pixels as the (C, H, W) tensor ``pil_to_tensor`` makes."""
    pixels = torch.from_numpy(array)
    return pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)


class ShardBatches(Sampler):
    """The current shard's keys in decode batches; ``start`` sets them before each pass.

    A shard starts with an empty pipeline: the model waits until one decode process has made a
    whole first batch. So the first batches ramp up (a quarter, a quarter, a half of the batch,
    then whole ones) and the model starts after a quarter of the wait; ``model_batches`` joins
    them back into model batches of the job's size, so what the model sees is unchanged.
    """

    def __init__(self) -> None:
        self.batch_size = 1
        self.keys: list[tuple[int, str]] = []
        self.image_format: ImageFormat | None = None

    def start(self, keys: list[tuple[int, str]], image_format: ImageFormat, batch_size: int) -> None:
        self.keys, self.image_format, self.batch_size = keys, image_format, batch_size

    def sizes(self):
        b = self.batch_size
        yield from (s for s in (b // 4, b // 4, b - 2 * (b // 4)) if s)
        while True:
            yield b

    def __iter__(self):
        start = 0
        for size in self.sizes():
            if start >= len(self.keys):
                return
            # One format object for the whole batch: pickle sends it once, however many keys.
            yield [(item_id, uri, self.image_format) for item_id, uri in self.keys[start : start + size]]
            start += size

    def __len__(self) -> int:
        return sum(1 for _ in self)


def collate(samples: list) -> Batch:
    """Images stacked into one tensor and normalised; item ids and errors kept as plain lists.

    Every tensor a decode process returns costs the labeling loop a file-descriptor hand-over
    (a socket connection) to rebuild its shared storage; ids as a list travel inside the
    pickle, so a batch costs one hand-over instead of two.
    """
    images, item_ids, errors, (image_format, *_) = zip(*samples, strict=True)
    return normalise(default_collate(images), image_format), list(item_ids), list(errors)


@lru_cache(maxsize=1)
def decoder(device: str, workers: int) -> tuple[DataLoader, ShardBatches]:
    """One DataLoader for the worker process's life, whose decode processes serve every teacher.

    Starting them for every shard cost about 0.17 s a shard at 28 px (bench/label_profile.py), a
    fifth of a 1,000-image shard's time. Starting them for every teacher (the loop makes a new
    teacher each generation) forked each job's decode processes from the worker's whole heap:
    jobs with a new teacher each ran 5-8% slower than jobs that reused one
    (bench/label_throughput.py with and without --reuse-teacher).
    """
    batches = ShardBatches()
    loader = DataLoader(
        ImageFiles(),
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.startswith("cuda"),
    )
    return loader, batches


def reset(loader: DataLoader) -> None:
    """Drop the worker's DataLoader and stop its decode processes; the next ``decoder`` call
    starts fresh ones. After one of them died (SIGKILL: the OOM killer on a large image) the
    persistent iterator is broken for good: every later pass failed with "DataLoader worker
    exited unexpectedly" or ``KeyError: _ResumeIteration``."""
    decoder.cache_clear()
    iterator, loader._iterator = getattr(loader, "_iterator", None), None
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()  # torch's own clean-up: live processes exit, pids unregistered


def model_batches(loader: DataLoader, batch_size: int):
    """Decode batches joined into model batches of ``batch_size`` (see ``ShardBatches``)."""
    parts, count = [], 0
    for part in loader:
        parts.append(part)
        count += len(part[1])
        if count >= batch_size:
            yield join(parts)
            parts, count = [], 0
    if parts:
        yield join(parts)


def join(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    images, item_ids, errors = zip(*parts, strict=True)
    return torch.cat(images), [i for batch in item_ids for i in batch], [e for batch in errors for e in batch]
