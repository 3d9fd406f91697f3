"""8-bit greyscale and RGB PNGs decoded by OpenCV: a third of Pillow's time for a 28-pixel
Fashion-MNIST PNG (22 against 72 us, docs/BENCHMARKS.md), and the same pixels. A PNG is
lossless, and these two layouts are the samples as stored: nothing to convert, no palette to
expand, no bit depth to scale. Any other file returns None, and Pillow decodes it as before,
as it does a PNG over Pillow's decompression-bomb limit, which Pillow then refuses.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

cv2.setNumThreads(1)  # decode processes are sized against the cores already (workers/cores.py)
# A file OpenCV cannot decode goes to Pillow, whose error is recorded on the item: OpenCV's
# warning on stderr would only repeat it, once per bad file.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR's colour type for the layout a teacher of 1 or 3 channels takes: greyscale, truecolour.
_COLOUR_TYPE = {1: 0, 3: 2}


def decode(data: bytes, channels: int) -> np.ndarray | None:
    """The pixels of an 8-bit PNG already in the teacher's layout, (H, W) greyscale or (H, W, 3)
    RGB; None for anything else, or for a file OpenCV cannot decode (Pillow then says why)."""
    if (
        data[:8] != _SIGNATURE
        or data[12:16] != b"IHDR"
        or len(data) < 26
        or data[24] != 8  # bit depth
        or data[25] != _COLOUR_TYPE.get(channels)
    ):
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        return None  # Pillow's decompression-bomb check decides, as for every other file
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    # A transparent colour (tRNS) comes back as an alpha channel: Pillow's, which drops it.
    expected = (2,) if channels == 1 else (3, 3)
    if pixels is None or pixels.dtype != np.uint8 or (pixels.ndim, *pixels.shape[2:]) != expected:
        return None
    return pixels if channels == 1 else np.ascontiguousarray(pixels[..., ::-1])  # OpenCV's BGR
