"""Image decoding shared by every stage (prepare's checks, datasets, embeddings, predict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: Extensions tried when a folder of user images is given.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def load_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """Decode an image as ``uint8`` RGB (H, W, 3), optionally resized to ``size`` x ``size``.

    Resizing uses a bicubic filter with Pillow's antialiasing, so a 1024 px image shrinks without
    aliasing. JPEGs are decoded at a reduced scale first (``draft``) when much larger than ``size``.

    Raises:
        OSError: the file cannot be read or decoded (PIL's ``UnidentifiedImageError`` is an OSError).
    """
    with Image.open(path) as image:
        if size is not None and image.format == "JPEG":
            image.draft("RGB", (size, size))
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
        return np.asarray(image, dtype=np.uint8)


def verify_image(path: str | Path) -> str | None:
    """Fully decode ``path``; return ``None`` if it is a good image, else a short reason."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError) as error:
        return str(error) or type(error).__name__
    return None
