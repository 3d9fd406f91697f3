"""Thumbnails of dataset images, made on the server: decoded, oriented, fitted into a square of
the requested size and encoded as JPEG. Pure functions on files, local or in an object store
(``nst.storage``); the route decides which files."""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from nst import storage
from nst.storage import Location

SIZES = (64, 128, 256)
QUALITY = 85
READ_BLOCK = 1 << 20  # an object is fetched as Pillow reads it, a block at a time, never whole


class ThumbnailError(ValueError):
    """The file is not an image Pillow can read."""


def render(path: Location, size: int) -> bytes:
    """Raises ``ThumbnailError`` for a file that is no image (or one too large to decode), a
    ``storage.StorageError`` when the file cannot be read."""
    try:
        with storage.open_binary(path, block_size=READ_BLOCK) as source, Image.open(source) as image:
            image.draft("RGB", (size, size))  # JPEG decodes at a reduced scale: far less work
            image = ImageOps.exif_transpose(image)
            image = image.convert("L" if image.mode in ("1", "L", "I;16", "I") else "RGB")
    except storage.StorageError:
        raise  # the store failed, not the file
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ThumbnailError(f"{storage.name(path)} is not a readable image ({exc})") from None
    scale = size / max(image.size)
    fitted = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # Small images (28 px Fashion-MNIST) are enlarged with hard pixel edges, not blurred.
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    image = image.resize(fitted, resample, reducing_gap=3.0 if scale < 1 else None)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=QUALITY)
    return buffer.getvalue()
