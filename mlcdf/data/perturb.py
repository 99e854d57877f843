"""Image perturbations at five intensity levels, and the spec strings that name them.

Images reach an analyst re-encoded by platforms: compressed, resized, blurred, noisy. Deepfake-forensics
work therefore reports results under perturbations. The suite here follows DeeperForensics-1.0 (Jiang,
Li, Wu, Qian, Loy, CVPR 2020): six distortions, five levels each, with the parameters of the authors'
perturbation code (``perturbation/add_distortion_to_video.py``, ``get_distortion_parameter``, and
``perturbation/distortions.py`` of github.com/EndlessSora/DeeperForensics-1.0, MIT licence), and the
same pixels: each of the six is written here in numpy after the reference's formulas, with OpenCV's
colour conversion, Gaussian kernel and bilinear resize, and ``tests/test_perturb_reference.py`` checks it
against a transcription of the reference run with OpenCV. Two more (real JPEG and WebP encoding, by
Pillow) are ours. The reference works on OpenCV's BGR frames; the formulas do not depend on the order.

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

How each follows the reference (``x`` is a pixel in [0, 255]). Where the reference computes in floats,
it ends by truncating to whole levels (``astype(np.uint8)``), which darkens by half a level on average;
so do we.

- saturation: the reference converts to YCbCr (OpenCV's BT.601 ``cvtColor`` on float pixels, then each
  component to its studio range, Y to [16, 235] and Cb, Cr to [16, 240], over 255), scales Cb and Cr by
  ``f`` about 0.5, and converts back with OpenCV's (slightly inexact) inverse. The chain is affine in the
  pixel, so it is applied here as one 3 x 3 matrix and an offset: the reference's values but for float
  rounding (a few values in 10^5 land on the other side of a whole level).
- contrast: the reference multiplies every pixel by ``f`` in float32 and truncates, which darkens the
  image; the same products here, as a lookup table.
- block: the reference pastes ``n * (min(H, W) // 256)`` grey (128) 8x8 blocks whose corners are drawn
  uniformly from 0 to ``side - 9`` (Python's ``random.randint``, bounds included). Our draws come from
  numpy's generator (a seed per image, see :func:`apply`), from the same range. A departure that stays: the
  reference pastes none on an image under 256 px; here images of 256 px and more follow its rule and
  smaller ones get ``n`` blocks of ``8 * min(H, W) / 256`` px (at least 1), so that each level still does
  something on the small images of the synthetic stand-in and of training at the model's input size.
- noise: as the reference, white Gaussian noise of standard deviation ``sqrt(v)`` added to Y, Cb and Cr
  after they are scaled to the studio range and divided by 255 twice, then multiplied back by 255 once:
  in effect noise of 255 sqrt(v) grey levels on components that span 219 (Y) or 224 (Cb, Cr) levels,
  i.e. ``255 / 219`` and ``255 / 224`` times stronger once converted back. Given the same draws, the
  reference's values but for float rounding (at most 2 values in 10^4, by 1 level). A departure that
  stays: the draws come from numpy's ``Generator`` seeded per image and condition, not from the global
  ``np.random.randn``, so that results are reproducible whatever the worker count; the same
  distribution, not the same numbers.
- blur: OpenCV's ``cv2.GaussianBlur`` with a ``k`` x ``k`` kernel and standard deviation ``k / 6``, as
  OpenCV computes it on 8-bit images: integer weights summing to 2**8 (:func:`gaussian_taps`), rows then
  columns in integers, rounded once, the border mirrored without repeating the edge pixel. Bit-exact.
- resize: the reference's "JPEG compression" is in fact a shrink by the factor and an enlargement back
  (``jpeg_compression`` in ``distortions.py``, ``cv2.resize`` with its default ``INTER_LINEAR`` both
  ways); we call it what it does. The shrink does not smooth first, so it aliases fine detail (Pillow's
  bilinear shrink smooths, which is why it is not used). Done here as OpenCV's 8-bit bilinear resize:
  its pixel-centre alignment, its 11-bit weights and its vectorised rounding. A departure that stays:
  OpenCV rounds the last few values of each row (those that fill no whole SIMD vector, a number that
  depends on the machine) in its scalar code, 1 grey level apart at times; we round every value alike.
  A side shorter than the factor shrinks to 1 pixel, where the reference's ``cv2.resize`` fails.
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
from PIL import Image

from mlcdf.errors import MlcdfError

LEVELS = (1, 2, 3, 4, 5)
#: Below this many pixels (the shorter side), block sizes shrink with the image (see the module docstring).
_BLOCK_REFERENCE_SIDE = 256
_BLOCK_WIDTH = 8
_BLOCK_GREY = 128
#: OpenCV's ``INTER_RESIZE_COEF_BITS``: the fractional bits of its bilinear weights on 8-bit images.
_RESIZE_COEF_BITS = 11
#: The fractional bits of OpenCV's Gaussian weights on 8-bit images.
_BLUR_COEF_BITS = 8


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


#: OpenCV's BT.601 conversion of float RGB to YCrCb and back (the ``cvtColor`` formulas of its documentation),
#: which the reference uses: luma weights of R, G, B; the scales of R - Y (Cr) and B - Y (Cb); the inverse's
#: factors of Cr for R, of Cr and Cb for G, and of Cb for B. The inverse is OpenCV's rounded one, not exact.
_LUMA = (0.299, 0.587, 0.114)
_CR_SCALE, _CB_SCALE = 0.713, 0.564
_R_CR, _G_CR, _G_CB, _B_CB = 1.403, -0.714, -0.344, 1.773
#: OpenCV centres the chroma of a float image at 0.5, whatever its range: the reference converts pixels in
#: [0, 255], so its Cb and Cr are differences centred at 0.5, not at 128.
_CHROMA_MIDDLE = 0.5
#: The reference's studio ranges: Y to [16, 235], Cb and Cr to [16, 240] (``bgr2ycbcr``), over 255.
_LUMA_SPAN, _CHROMA_SPAN, _FOOT = 235 - 16, 240 - 16, 16


def _to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """Y, Cb, Cr (last axis) of float RGB as the reference's ``bgr2ycbcr`` has them: OpenCV's conversion,
    then each component scaled to its studio range and divided by 255."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = red * _LUMA[0] + green * _LUMA[1] + blue * _LUMA[2]
    cb = (blue - luma) * _CB_SCALE + _CHROMA_MIDDLE
    cr = (red - luma) * _CR_SCALE + _CHROMA_MIDDLE
    return np.stack([(luma * _LUMA_SPAN + _FOOT) / 255, (cb * _CHROMA_SPAN + _FOOT) / 255, (cr * _CHROMA_SPAN + _FOOT) / 255], axis=-1)


def _to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """The reference's ``ycbcr2bgr``: the inverse of :func:`_to_ycbcr`, with OpenCV's inverse conversion."""
    luma = (ycbcr[..., 0] * 255 - _FOOT) / _LUMA_SPAN
    cb = (ycbcr[..., 1] * 255 - _FOOT) / _CHROMA_SPAN - _CHROMA_MIDDLE
    cr = (ycbcr[..., 2] * 255 - _FOOT) / _CHROMA_SPAN - _CHROMA_MIDDLE
    return np.stack([luma + cr * _R_CR, luma + cr * _G_CR + cb * _G_CB, luma + cb * _B_CB], axis=-1)


def _affine(function: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, offset)`` with ``function(x) == x @ matrix + offset`` for colour vectors ``x`` (the last
    axis), for an affine ``function``: its value at 0 and the change along each axis, in float64."""
    values = function(np.vstack([np.zeros(3), np.eye(3)]))
    return values[1:] - values[0], values[0]


def _colour_map(pixels: np.ndarray, matrix: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """``pixels @ matrix + offset`` in float32 (H x W x 3), one output channel at a time: no BLAS call,
    whose threads would compete with the worker processes that perturb images side by side."""
    source = pixels.astype(np.float32)
    weights = matrix.astype(np.float32)
    out = np.empty(source.shape, dtype=np.float32)
    for channel in range(3):
        out[..., channel] = source[..., 0] * weights[0, channel]
        out[..., channel] += source[..., 1] * weights[1, channel]
        out[..., channel] += source[..., 2] * weights[2, channel]
        if offset is not None:
            out[..., channel] += np.float32(offset[channel])
    return out


def _truncated(pixels: np.ndarray) -> Image.Image:
    """Float RGB pixels clipped to [0, 255] and truncated to whole levels, as the reference's ``astype(np.uint8)``."""
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _saturation(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    # The reference's chain (to YCbCr, chroma scaled, back) is affine in the pixel: applied as one 3 x 3
    # matrix and an offset, equal to it but for float rounding.
    def chain(rgb: np.ndarray) -> np.ndarray:
        ycbcr = _to_ycbcr(rgb)
        # About 0.5 in the studio-scaled values, as the reference does (their middle is 128/255: in
        # effect a shift of under 0.005 grey levels, which its truncation can turn into one level).
        ycbcr[..., 1:] = 0.5 + (ycbcr[..., 1:] - 0.5) * factor
        return _to_rgb(ycbcr)

    return _truncated(_colour_map(np.asarray(image), *_affine(chain)))


def _contrast(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    # The reference's float32 product, truncated: a lookup table of the 256 values.
    table = (np.arange(256, dtype=np.float32) * np.float32(factor)).astype(np.uint8)
    return image.point(table.tolist() * 3)


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
    # The reference's corners run from 0 to side - 1 - width inclusive (one short of the last place a
    # block fits); the bound of 1 keeps a 1-pixel image working.
    tops = rng.integers(0, max(1, height - width), size=blocks)
    lefts = rng.integers(0, max(1, image_width - width), size=blocks)
    for top, left in zip(tops, lefts):
        pixels[top : top + width, left : left + width] = _BLOCK_GREY
    return Image.fromarray(pixels)


def _noise(image: Image.Image, variance: float, rng: np.random.Generator) -> Image.Image:
    # The reference divides the studio-scaled components by 255 once more, adds the noise, and multiplies
    # by 255: noise of standard deviation 255 sqrt(v) on components that span 219 (Y) or 224 (Cb, Cr),
    # i.e. 255 / 219 and 255 / 224 times stronger on the pixels than on full-range components. Its
    # conversion there and back is affine, and the noise passes through the linear part of the way back.
    pixels = np.asarray(image)
    draws = rng.standard_normal(pixels.shape, dtype=np.float32)  # Y, Cb, Cr
    back, _ = _affine(_to_rgb)
    noisy = _colour_map(pixels, *_affine(lambda rgb: _to_rgb(_to_ycbcr(rgb))))
    noisy += _colour_map(draws, back * (255 * math.sqrt(variance)))
    return _truncated(noisy)


def gaussian_taps(size: int) -> np.ndarray:
    """The ``size`` integer weights (summing to 2**8) of the reference's blur: OpenCV's bit-exact Gaussian
    kernel of standard deviation ``size / 6`` for 8-bit images.

    The exact weights ``exp(-x**2 / (2 sigma**2))`` (``x`` the distance from the centre), normalised to
    sum 1, are scaled by 2**8 and rounded from the outside in, each carrying the previous one's rounding
    error (error diffusion); the centre takes what is left of 2**8.
    """
    sigma = size / 6.0
    distance = np.arange(size) - (size - 1) / 2
    exact = np.exp(-(distance**2) / (2 * sigma * sigma))
    exact = exact / exact.sum() * (1 << _BLUR_COEF_BITS)
    taps = np.zeros(size, dtype=np.int64)
    error = 0.0
    for i in range(size // 2):
        value = exact[i] + error
        taps[i] = taps[size - 1 - i] = round(value)
        error = value - taps[i]
    taps[size // 2] = (1 << _BLUR_COEF_BITS) - 2 * taps[: size // 2].sum()
    return taps


def _blur_axis(pixels: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """``pixels`` (integers) correlated with ``taps`` along ``axis``, beyond the edges mirrored without
    repeating the edge pixel (OpenCV's default border, ``BORDER_REFLECT_101``: numpy's ``reflect``)."""
    reach = len(taps) // 2
    widths = [(0, 0)] * pixels.ndim
    widths[axis] = (reach, reach)
    padded = np.pad(pixels, widths, mode="reflect")
    length = pixels.shape[axis]

    def shifted(offset: int) -> np.ndarray:
        window = [slice(None)] * pixels.ndim
        window[axis] = slice(offset, offset + length)
        return padded[tuple(window)]

    total = int(taps[reach]) * shifted(reach)  # a new array: the sums below go into it in place
    for offset in range(reach):
        if taps[offset]:  # symmetric: the two taps at the same distance share one product
            total += int(taps[offset]) * (shifted(offset) + shifted(2 * reach - offset))
    return total


def _blur(image: Image.Image, kernel: float, rng: np.random.Generator) -> Image.Image:
    # OpenCV's GaussianBlur on 8-bit images in its exact integer arithmetic: rows, then columns, with the
    # weights of gaussian_taps (products with 8 then 16 fractional bits), rounded once at the end.
    taps = gaussian_taps(int(kernel))
    # Every partial sum of a row pass is at most 255 * 2**8, so it fits 16 bits (and runs faster there).
    rows = _blur_axis(np.asarray(image).astype(np.uint16), taps, axis=1)
    total = _blur_axis(rows.astype(np.int32), taps, axis=0)
    shift = 2 * _BLUR_COEF_BITS
    return Image.fromarray(np.clip((total + (1 << (shift - 1))) >> shift, 0, 255).astype(np.uint8))


def _linear_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``target`` output pixels along one axis: its two source pixels and their integer weights
    (summing to about 2**11), as OpenCV's ``INTER_LINEAR`` has them.

    Pixel centres are aligned (output ``i`` samples the source at ``(i + 0.5) * source / target - 0.5``,
    computed in float32), a sample outside the first or last centre takes that edge pixel, and each weight
    is rounded to ``_RESIZE_COEF_BITS`` fractional bits. No smoothing before a shrink: it aliases, as the
    reference does.
    """
    position = ((np.arange(target) + 0.5) * (source / target) - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    fraction = position - first.astype(np.float32)
    before, after = first < 0, first >= source - 1
    fraction[before | after] = 0
    first[before] = 0
    first[after] = source - 1
    second = np.minimum(first + 1, source - 1)
    one = np.float32(1 << _RESIZE_COEF_BITS)
    weight_first = np.rint((np.float32(1) - fraction) * one).astype(np.int32)
    weight_second = np.rint(fraction * one).astype(np.int32)
    return first, second, weight_first, weight_second


def _linear_resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """``pixels`` (H x W x 3, uint8) resized to ``width`` x ``height`` as OpenCV's ``cv2.resize`` with
    ``INTER_LINEAR`` does it on 8-bit images, in integers: each row is interpolated exactly (values times
    2**11), then the two rows' products are taken as OpenCV's vectorised code takes them (each row value
    shifted right by 4 bits, times its weight, shifted right by 16), added and rounded by 2 more bits.
    OpenCV's scalar code, used for the last few values of a row that fill no whole vector, rounds once
    instead: those can be 1 grey level apart.
    """
    left, right, weight_left, weight_right = _linear_taps(pixels.shape[1], width)
    top, bottom, weight_top, weight_bottom = _linear_taps(pixels.shape[0], height)
    source = pixels.astype(np.int32)
    rows = (source[:, left] * weight_left[None, :, None] + source[:, right] * weight_right[None, :, None]) >> 4
    upper = (rows[top] * weight_top[:, None, None]) >> 16
    lower = (rows[bottom] * weight_bottom[:, None, None]) >> 16
    return np.clip((upper + lower + 2) >> 2, 0, 255).astype(np.uint8)


def _resize(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    pixels = np.asarray(image)
    small = _linear_resize(pixels, max(1, width // int(factor)), max(1, height // int(factor)))
    return Image.fromarray(_linear_resize(small, width, height))


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


#: The largest seed of the perturbations' random draws: the range of a run's seed (numpy would take any
#: integer from 0, but a negative one fails only in the worker that first draws).
MAX_SEED = 2**32 - 1


def check_seed(seed: int, option: str = "seed") -> int:
    """``seed`` if it is an integer from 0 to :data:`MAX_SEED`; checked where a command or library
    function takes it, before any image is read.

    Raises:
        MlcdfError: naming ``option``, the value (shortened when huge) and the range.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        shown = f"a number of {len(str(abs(seed)))} digits" if isinstance(seed, int) and abs(seed) >= 10**15 else repr(seed)
        raise MlcdfError(f"{option} must be an integer from 0 to {MAX_SEED}, got {shown}")
    return seed


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
