"""Image perturbations at five intensity levels, and the spec strings that name them.

Images reach an analyst re-encoded by platforms: compressed, resized, blurred, noisy. Deepfake-forensics
work therefore reports results under perturbations. The suite here follows DeeperForensics-1.0 (Jiang,
Li, Wu, Qian, Loy, CVPR 2020): six distortions, five levels each, with the parameters of the authors'
perturbation code (``perturbation/add_distortion_to_video.py``, ``get_distortion_parameter``, and
``perturbation/distortions.py`` of github.com/EndlessSora/DeeperForensics-1.0, MIT licence). Two more
(real JPEG and WebP encoding) are ours. The image operations are Pillow's.

=============  ==========================  ====================================  =================
name           DeeperForensics name        parameter at levels 1..5              source
=============  ==========================  ====================================  =================
saturation     CS, colour saturation       chroma factor 0.4, 0.3, 0.2, 0.1, 0   DeeperForensics
contrast       CC, colour contrast         pixel factor 0.85 .. 0.35              DeeperForensics
block          BW, local block-wise        8x8 grey blocks: 16, 32, 48, 64, 80    DeeperForensics
noise          GNC, Gaussian noise colour  variance 0.001, .002, .005, .01, .05   DeeperForensics
blur           GB, Gaussian blur           kernel 7, 9, 13, 17, 21 (sigma k/6)    DeeperForensics
resize         JPEG (see below)            shrink factor 2, 3, 4, 5, 6            DeeperForensics
jpeg           -                           quality 90, 70, 50, 30, 10             ours
webp           -                           quality 90, 70, 50, 30, 10             ours
=============  ==========================  ====================================  =================

How each follows the reference (``x`` is a pixel in [0, 255]):

- saturation: DeeperForensics scales the Cb and Cr components about their middle and keeps Y. With
  ITU-R 601 luma ``Y``, that is ``Y + f (x - Y)``: Pillow's ``ImageEnhance.Color``.
- contrast: the reference multiplies every pixel by ``f`` and truncates (``int(x f)``), which darkens
  the image; done so here, with a Pillow lookup table.
- block: the reference pastes ``n * (min(H, W) // 256)`` grey (128) 8x8 blocks at random places, i.e. none
  on an image under 256 px. Here images of 256 px and more follow that rule; smaller ones get ``n``
  blocks of ``8 * min(H, W) / 256`` px (at least 1), so each level still does something.
- noise: white Gaussian noise of variance ``v`` (on values scaled to [0, 1]) added to Y, Cb and Cr
  (Pillow's full-range YCbCr); the reference's studio-range rescaling makes its noise about 16 % stronger.
- blur: a Gaussian of standard deviation ``k / 6``, the reference's ``cv2.GaussianBlur`` with a
  ``k`` x ``k`` kernel (Pillow's ``GaussianBlur``, which approximates it with box blurs: within 3 grey
  levels, about 1 on average, of the exact kernel; within the kernel's half width of the border Pillow
  extends the edge pixels where OpenCV reflects them).
- resize: the reference's "JPEG compression" is in fact a shrink by the factor and an enlargement back
  (``jpeg_compression`` in ``distortions.py``); we call it what it does and use Pillow's bilinear filter.
- jpeg, webp: Pillow's encoder at the quality, decoded again (4:2:0 chroma subsampling, Pillow's default).

Only ``noise`` and ``block`` draw random numbers; :func:`apply` takes their seed, so a perturbed image is
a function of (image, condition, seed). Level 0 is no perturbation. :func:`draw_condition` draws a
random condition from a seed (training augmentation, ``mlcdf perturb --spec random``).

Spec strings (:func:`parse_spec`) name conditions: ``jpeg:1,3,5`` (levels 1, 3, 5), ``jpeg`` (levels 1
to 5), ``all`` (every type, every level); several specs are joined with ``+`` or given one by one. The
numbers are always *levels* 1..5, never raw parameters, so ``blur:2`` and ``jpeg:2`` both mean "the second
strongest but one"; :func:`describe` gives each condition's raw parameter.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from mlcdf.errors import MlcdfError

LEVELS = (1, 2, 3, 4, 5)
#: Below this many pixels (the shorter side), block sizes shrink with the image (see the module docstring).
_BLOCK_REFERENCE_SIDE = 256
_BLOCK_WIDTH = 8
_BLOCK_GREY = 128


@dataclass(frozen=True)
class Condition:
    """One perturbation at one level (1..5); level 0 is the clean image."""

    name: str
    level: int

    def __str__(self) -> str:
        return CLEAN if self.level == 0 else f"{self.name}:{self.level}"

    @property
    def parameter(self) -> float | None:
        return None if self.level == 0 else PERTURBATIONS[self.name].parameters[self.level - 1]


CLEAN = "clean"
CLEAN_CONDITION = Condition(CLEAN, 0)


def _saturation(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Color(image).enhance(factor)


def _contrast(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    table = [int(value * factor) for value in range(256)]
    return image.point(table * 3)


def block_layout(width: int, height: int, count: int) -> tuple[int, int]:
    """(number of blocks, block side in pixels) of the block-wise distortion on a ``width`` x ``height`` image."""
    side = min(width, height)
    if side >= _BLOCK_REFERENCE_SIDE:
        return count * (side // _BLOCK_REFERENCE_SIDE), _BLOCK_WIDTH
    return count, max(1, round(_BLOCK_WIDTH * side / _BLOCK_REFERENCE_SIDE))


def _block(image: Image.Image, count: float, rng: np.random.Generator) -> Image.Image:
    blocks, width = block_layout(*image.size, int(count))
    pixels = np.array(image)
    height, image_width = pixels.shape[:2]
    tops = rng.integers(0, height - width + 1, size=blocks)
    lefts = rng.integers(0, image_width - width + 1, size=blocks)
    for top, left in zip(tops, lefts):
        pixels[top : top + width, left : left + width] = _BLOCK_GREY
    return Image.fromarray(pixels)


def _noise(image: Image.Image, variance: float, rng: np.random.Generator) -> Image.Image:
    ycbcr = np.asarray(image.convert("YCbCr"), dtype=np.float32)
    noisy = ycbcr + np.float32(255.0 * math.sqrt(variance)) * rng.standard_normal(ycbcr.shape, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), mode="YCbCr").convert("RGB")


def _blur(image: Image.Image, kernel: float, rng: np.random.Generator) -> Image.Image:
    # Pillow's blur is a Gaussian of the given standard deviation (approximated by three box blurs,
    # untruncated): the reference's kernel of k pixels spans +-3 sigma, so it cuts off nothing that matters.
    return image.filter(ImageFilter.GaussianBlur(radius=kernel / 6.0))


def _resize(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    small = image.resize((max(1, width // int(factor)), max(1, height // int(factor))), Image.Resampling.BILINEAR)
    return small.resize((width, height), Image.Resampling.BILINEAR)


def encode(image: Image.Image, format: str, quality: int) -> Image.Image:
    """``image`` encoded by Pillow as ``format`` (JPEG or WEBP) at ``quality`` and decoded again, as RGB."""
    buffer = io.BytesIO()
    image.save(buffer, format=format, quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _jpeg(image: Image.Image, quality: float, rng: np.random.Generator) -> Image.Image:
    return encode(image, "JPEG", int(quality))


def _webp(image: Image.Image, quality: float, rng: np.random.Generator) -> Image.Image:
    return encode(image, "WEBP", int(quality))


@dataclass(frozen=True)
class Perturbation:
    """A named distortion: its function and its raw parameter at levels 1..5."""

    name: str
    parameters: tuple[float, ...]
    unit: str
    function: Callable[[Image.Image, float, np.random.Generator], Image.Image]


#: Every perturbation, in the order of tables and figures.
PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("saturation", (0.4, 0.3, 0.2, 0.1, 0.0), "chroma factor", _saturation),
        Perturbation("contrast", (0.85, 0.725, 0.6, 0.475, 0.35), "pixel factor", _contrast),
        Perturbation("block", (16, 32, 48, 64, 80), "grey blocks", _block),
        Perturbation("noise", (0.001, 0.002, 0.005, 0.01, 0.05), "noise variance", _noise),
        Perturbation("blur", (7, 9, 13, 17, 21), "kernel size", _blur),
        Perturbation("resize", (2, 3, 4, 5, 6), "shrink factor", _resize),
        Perturbation("jpeg", (90, 70, 50, 30, 10), "JPEG quality", _jpeg),
        Perturbation("webp", (90, 70, 50, 30, 10), "WebP quality", _webp),
    )
}
ALL = "all"


def describe(condition: Condition) -> str:
    """``jpeg:3 (JPEG quality 50)``; ``clean``."""
    if condition.level == 0:
        return CLEAN
    return f"{condition} ({PERTURBATIONS[condition.name].unit} {condition.parameter:g})"


def apply(image: Image.Image, condition: Condition, seed: int | Sequence[int] = 0) -> Image.Image:
    """``image`` (RGB) under ``condition``; the random draws (noise, block) come from ``seed``.

    The same image, condition and seed always give the same pixels. Level 0 returns ``image`` itself.
    """
    if condition.level == 0:
        return image
    perturbation = PERTURBATIONS[condition.name]
    if image.mode != "RGB":
        image = image.convert("RGB")
    rng = np.random.default_rng(seed)
    parameter = condition.parameter
    assert parameter is not None, "a condition above level 0 has a parameter"
    return perturbation.function(image, parameter, rng)


def _valid_names() -> str:
    return f"{', '.join(PERTURBATIONS)}, or {ALL}; a type takes levels as in jpeg:1,3,5 (levels {LEVELS[0]}-{LEVELS[-1]})"


def _parse_one(text: str) -> list[Condition]:
    name, colon, levels_text = text.strip().partition(":")
    name = name.strip().lower()
    if name == ALL and not colon:
        return [Condition(n, level) for n in PERTURBATIONS for level in LEVELS]
    if name not in PERTURBATIONS:
        raise MlcdfError(f"unknown perturbation {name!r} in spec {text!r}; valid: {_valid_names()}")
    if not colon:
        return [Condition(name, level) for level in LEVELS]
    levels = []
    for item in levels_text.split(","):
        try:
            level = int(item)
        except ValueError:
            level = None
        if level not in LEVELS:
            parameters = ", ".join(f"{lvl}={p:g}" for lvl, p in zip(LEVELS, PERTURBATIONS[name].parameters))
            raise MlcdfError(
                f"level {item.strip()!r} in spec {text!r}: levels are whole numbers {LEVELS[0]}-{LEVELS[-1]}, not raw "
                f"parameters ({name} levels: {parameters} {PERTURBATIONS[name].unit})"
            )
        levels.append(level)
    return [Condition(name, level) for level in levels]


def parse_spec(specs: str | Iterable[str]) -> list[Condition]:
    """The conditions named by one or several spec strings, in order, each once (see the module docstring).

    Raises:
        MlcdfError: an unknown name or a level outside 1..5, listing the valid names.
    """
    texts = [specs] if isinstance(specs, str) else list(specs)
    parts = [part for text in texts for part in text.split("+")]
    if not parts or any(not part.strip() for part in parts):
        raise MlcdfError(f"empty perturbation spec; valid: {_valid_names()}")
    return list(dict.fromkeys(condition for part in parts for condition in _parse_one(part)))


def all_conditions() -> list[Condition]:
    return parse_spec(ALL)


def draw_condition(seed: int | Sequence[int], probability: float = 1.0) -> Condition:
    """A random condition for ``seed``: with ``probability``, a type and level drawn uniformly from
    :func:`all_conditions`, else clean. The same seed always draws the same condition.

    Used per training image (``train --augment-perturb``) and per image of ``mlcdf perturb --spec random``;
    :func:`apply` then takes the same seed for the condition's own draws.
    """
    rng = np.random.default_rng(seed)
    if rng.random() >= probability:
        return CLEAN_CONDITION
    conditions = all_conditions()
    return conditions[int(rng.integers(len(conditions)))]
