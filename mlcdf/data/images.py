"""Image decoding shared by every stage (prepare's checks, datasets, the cache, embeddings, predict, explain).

Every decoder goes through :func:`open_image`, which refuses an image declaring more than a pixel limit
before any pixel is decoded: a few dozen bytes of PNG can declare 100000 x 100000 pixels (30 GB once
decoded). The limit is Pillow's own (:data:`DEFAULT_MAX_PIXELS`, about 9459 x 9459) unless the
``MLCDF_MAX_PIXELS`` environment variable says otherwise (the commands' ``--max-pixels`` sets it).
A refused image raises ``OSError`` like any unreadable file, so every caller reports or skips it the
same way.

Memory while decoding an image within the limit: a JPEG is decoded directly at 1/2, 1/4 or 1/8 scale
when the target size allows (``draft``), so a 12000 x 12000 JPEG costs about 1/64 of its full size. PNG
and the other formats cannot be decoded reduced: the whole image is decoded once (Pillow keeps RGB at 4
bytes a pixel, so up to 4 x the limit, 358 MB at the default), then reduced and resized without a second
full-size copy where the mode allows (RGB and grey images are resized before the conversion to RGB;
RGBA and palette images still need one full-size conversion). Measured peak memory of one 12000 x 12000
image decoded to 224 px (``/usr/bin/time -v``, with the limit raised): RGB PNG 582 MB (1131 MB before
the conversion was moved after the resize), RGBA PNG 1131 MB, JPEG 41 MB.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from mlcdf.errors import MlcdfError

#: Extensions tried when a folder of user images is given.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

#: Pillow's decompression-bomb limit, taken as mlcdf's default pixel limit.
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
#: Environment variable holding the pixel limit in force (set by ``--max-pixels``; read by worker processes too).
MAX_PIXELS_ENV = "MLCDF_MAX_PIXELS"

# Modes that resize channel by channel to the same colours as their RGB conversion would, so the
# full-size image need not be converted (copied) first. RGBA is not one: Pillow resizes it premultiplied.
_RESIZE_BEFORE_CONVERT = ("RGB", "L")


def pixel_limit() -> int:
    """The pixel limit in force: ``MLCDF_MAX_PIXELS`` when set, else :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        MlcdfError: ``MLCDF_MAX_PIXELS`` is not a positive whole number.
    """
    text = os.environ.get(MAX_PIXELS_ENV)
    if text is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise MlcdfError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive whole number of pixels")
    return value


@contextlib.contextmanager
def open_image(path: str | Path, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """``Image.open``, refusing images that declare more than ``max_pixels`` (default :func:`pixel_limit`).

    Only the header has been read when the image is yielded; decoding happens on first use.

    Raises:
        OSError: the file cannot be opened, is not an image, or is over the limit (naming its size and
            the limit).
    """
    limit = pixel_limit() if max_pixels is None else max_pixels
    # Pillow's own guard (an error above twice its limit) must not refuse what this limit allows; it is
    # only ever raised, and its warning is redundant with the check below.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        pillow_limit = Image.MAX_IMAGE_PIXELS
        assert pillow_limit is not None, "Pillow raises DecompressionBombError only while its limit is set"
        raise OSError(
            f"declares more than {2 * pillow_limit:,} pixels, which exceeds the limit of {limit:,} pixels (--max-pixels)"
        ) from None
    with image:
        width, height = image.size
        if width * height > limit:
            raise OSError(f"{width}x{height} = {width * height:,} pixels exceeds the limit of {limit:,} pixels (--max-pixels)")
        yield image


def resize(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """``image`` resized to ``target`` (width, height) as every decoder here does it: bicubic, antialiased."""
    return image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)


def _decode(path: str | Path, target_size: Callable[[int, int], tuple[int, int]] | None, max_pixels: int | None) -> np.ndarray:
    """Decode ``path`` as RGB, resized to ``target_size(width, height)`` when given."""
    try:
        with open_image(path, max_pixels) as image:
            target = None if target_size is None else target_size(*image.size)
            if target is not None and target != image.size:
                image.draft("RGB", target)  # JPEG only: decode at a reduced scale that is still >= target
                if image.mode not in _RESIZE_BEFORE_CONVERT:
                    image = image.convert("RGB")
                image = resize(image, target)
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8)
    except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        # Pillow's other ways of saying "corrupt" (and its bomb guard on frames and tiles).
        raise OSError(str(error) or type(error).__name__) from None


def load_rgb(path: str | Path, size: int | None = None, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image as ``uint8`` RGB (H, W, 3), optionally resized to ``size`` x ``size``.

    Resizing uses a bicubic filter with Pillow's antialiasing (after an exact box reduction when the image
    is over 3 times larger), so a 1024 px image shrinks without aliasing. See the module docstring for
    the pixel limit and memory.

    Raises:
        OSError: the file cannot be read or decoded, or is over the pixel limit (PIL's
            ``UnidentifiedImageError`` is an OSError).
    """
    return _decode(path, None if size is None else lambda width, height: (size, size), max_pixels)


def load_rgb_within(path: str | Path, longest_side: int, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image as ``uint8`` RGB, shrunk (aspect kept, never enlarged) so no side exceeds ``longest_side``.

    Raises:
        OSError: as :func:`load_rgb`.
    """

    def within(width: int, height: int) -> tuple[int, int]:
        scale = min(1.0, longest_side / max(width, height, 1))
        return max(1, round(width * scale)), max(1, round(height * scale))

    return _decode(path, within, max_pixels)


def verify_image(path: str | Path, max_pixels: int | None = None) -> str | None:
    """Fully decode ``path``; return ``None`` if it is a good image, else a short reason."""
    try:
        with open_image(path, max_pixels) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        return str(error) or type(error).__name__
    return None
