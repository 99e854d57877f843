"""Photos decoded at full size for face finding, with the pixel limit of :mod:`mlcdf.data.images`.

Alignment needs the photo's own pixels (a face is cut from it, not from a resized copy), and modes that a
plain ``convert("RGB")`` gets wrong are handled here: Pillow clips 16-bit grey (``I;16``, ``I``) to
255 instead of scaling it, so such photos are scaled to 8 bits first; CMYK is converted by Pillow's
formula (no colour profile), close enough to find and judge a face.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mlcdf.data.images import open_image

#: Pillow's modes of 16-bit (and 32-bit integer, as 16-bit PNGs may open) grey images.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_photo(path: str | Path) -> np.ndarray:
    """Decode ``path`` as ``uint8`` RGB (H, W, 3) at its full size, within the pixel limit.

    Raises:
        OSError: the file cannot be read, is not an image, is over the pixel limit, or holds floating-point
            pixels (whose range is unknown).
    """
    try:
        with open_image(path) as image:
            if image.mode in _WIDE_GREY_MODES:
                grey = np.asarray(image, dtype=np.float64)
                # 16-bit PNGs hold 0..65535: 257 maps 65535 to 255 and 257 to 1.
                scaled = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
                return np.repeat(scaled[:, :, None], 3, axis=2)
            if image.mode == "F":
                raise OSError("floating-point pixels (mode F) have no known range; save the photo as 8- or 16-bit")
            return np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
    except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise OSError(str(error) or type(error).__name__) from None
