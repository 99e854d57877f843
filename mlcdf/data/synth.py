"""A synthetic stand-in for Seq-DeepFake: procedural faces with real, stacked, learnable manipulations.

:func:`generate` writes ``ROOT/<subset>/images/<split>/<sequence or original>/<stem>.<ext>`` and
``ROOT/<subset>/annotations/<split>.csv`` exactly as the release lays them out (DESIGN.md §2), so that
``mlcdf prepare`` reads them through the code path it uses for the real data, plus ``ROOT/README.txt``
and ``ROOT/<subset>/synth.json`` saying how the data was made.

Each image is a face from :mod:`mlcdf.data.synth_faces` with 0 to 5 manipulations applied in order,
each on the output of the previous one:

* ``facial_components`` (nose, eye, eyebrow, lip, hair): the part is transplanted from a donor face (one
  donor per image), aligned on the part's landmarks, colour-corrected only partly, resampled, blurred or
  sharpened, and blended through a feathered mask, as face swaps do; a seam, a colour and lighting
  mismatch and a change of sharpness are left in the part's region.
* ``facial_attributes`` (Bangs, Eyeglasses, Beard, Smiling, Young): the attribute is switched (added or
  removed) by re-rendering the face with the other state and pasting the attribute's region (for Young,
  the skin) through an "editor" that synthesises it at a lower resolution, flatter and less saturated,
  shifts its colour and lighting, changes its noise and leaves a seam. Unedited faces show every
  attribute natively at the same rate as edited ones, so the presence of glasses (say) says nothing
  about the label: a detector has to find the edit.

Which manipulations an image gets follows the release (uniform) or a co-occurrence profile
(:mod:`mlcdf.data.synth_cooccurrence`). The traces scale with ``strength`` (1 is the default difficulty). Every image is drawn from its own random
stream, derived from ``(seed, subset, split, index)``, so the output is byte-identical for a seed whatever
the number of worker processes.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mlcdf import __version__
from mlcdf.config import check_count
from mlcdf.data import synth_faces as faces
from mlcdf.data.prepared import SPLITS, SYNTH_JSON, OutputOwner
from mlcdf.data.synth_cooccurrence import UNIFORM, Cooccurrence, label_statistics, load_cooccurrence
from mlcdf.errors import MlcdfError
from mlcdf.io import (
    atomic_dir,
    atomic_open,
    check_file_replaceable,
    check_output_folder,
    check_replaceable,
    holds_file,
    png_written_by,
    save_png,
    write_json,
)
from mlcdf.labels import REAL_FOLDER, SUBSETS, format_label_ids, ids_to_sequence, steps_of
from mlcdf.progress import ProgressFn, silent

#: Bump when the same seed and options would give different pixels; recorded in ``synth.json``.
SYNTH_VERSION = 1

IMAGE_FORMATS = ("png", "jpg")

#: Share of real (unmanipulated) images in the release.
OFFICIAL_REAL_FRACTION = {"facial_components": 1 / 28, "facial_attributes": 1 / 26}

#: Probability that a face shows each attribute. For ``facial_attributes`` this is the rate of the
#: *visible* state, edited or not, so that seeing an attribute says nothing about its label; for
#: ``facial_components`` it is the native rate (no glasses there: an eye transplant would cut frames).
ATTRIBUTE_RATES = {
    "facial_components": {"bangs": 0.15, "eyeglasses": 0.0, "beard": 0.15, "smiling": 0.45, "young": 0.7},
    "facial_attributes": {"bangs": 0.35, "eyeglasses": 0.3, "beard": 0.3, "smiling": 0.5, "young": 0.5},
}

_SIZE_RANGE = (32, 2048)
_STRENGTH_RANGE = (0.0, 4.0)
_PNG_COMPRESS_LEVEL = 1  # fast; higher levels save little on noisy images and cost more than drawing
_JPEG_QUALITY = 95
_README = "README.txt"
#: A subset folder is replaced only when it is a previous synthetic subset (its synth.json).
_SYNTH_OUTPUT: OutputOwner = {"command": "mlcdf synth", "is_own": holds_file(SYNTH_JSON)}
_PREVIEW_OUTPUT: OutputOwner = {"command": "mlcdf synth", "is_own": png_written_by("mlcdf synth")}


# --------------------------------------------------------------------------------------------- config


def default_workers() -> int:
    """The number of CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`generate` writes.

    Attributes:
        out: the dataset root (``ROOT``); each subset goes to ``ROOT/<subset>``.
        subsets: subset names from :data:`mlcdf.labels.SUBSETS`.
        train, val, test: images per split (per subset).
        size: image side in pixels (square images).
        image_format: ``png`` or ``jpg``.
        seed: the random seed; same seed, options and :data:`SYNTH_VERSION` give the same bytes.
        strength: how visible the manipulation traces are (1 = default difficulty, 0 = none).
        real_fraction: share of real images; ``None`` takes the release's share per subset.
        workers: processes drawing images (1 = in this process).
        preview: where to write a grid of examples, or ``None``.
        cooccurrence: ``uniform`` (the release's process), ``editing-habits`` or a profile JSON file.
        cooccurrence_strength: RHO, the probability that a fake image takes a recipe of the profile;
            ``None`` is 1 for a profile (and 0 for ``uniform``).
    """

    out: Path
    subsets: tuple[str, ...] = tuple(SUBSETS)
    train: int = 1000
    val: int = 200
    test: int = 200
    size: int = 256
    image_format: str = "png"
    seed: int = 0
    strength: float = 1.0
    real_fraction: float | None = None
    workers: int = 1
    preview: Path | None = None
    cooccurrence: str = UNIFORM
    cooccurrence_strength: float | None = None

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def cooccurrence_of(self, subset: str) -> Cooccurrence | None:
        """The profile applied to ``subset`` (``None`` for ``uniform``); reads and checks a profile file."""
        strength = 1.0 if self.cooccurrence_strength is None else self.cooccurrence_strength
        return load_cooccurrence(self.cooccurrence, subset, strength)

    def real_fraction_of(self, subset: str, cooccurrence: Cooccurrence | None = None) -> float:
        """``real_fraction`` if given, else the profile's, else the release's share."""
        if self.real_fraction is not None:
            return self.real_fraction
        if cooccurrence is not None and cooccurrence.real_fraction is not None:
            return cooccurrence.real_fraction
        return OFFICIAL_REAL_FRACTION[subset]

    def check(self) -> None:
        """Raise :class:`~mlcdf.errors.MlcdfError` naming the first invalid option."""
        unknown = [name for name in self.subsets if name not in SUBSETS]
        if unknown or not self.subsets:
            raise MlcdfError(f"subsets {list(self.subsets)}: expected some of {', '.join(SUBSETS)}")
        for split, count in self.split_sizes().items():
            if count < 0:
                raise MlcdfError(f"--{split} {count}: the number of images cannot be negative")
            check_count("images", count, option=f"--{split}")
        if sum(self.split_sizes().values()) == 0:
            raise MlcdfError("--train, --val and --test are all 0: nothing to generate")
        if not _SIZE_RANGE[0] <= self.size <= _SIZE_RANGE[1]:
            raise MlcdfError(f"--size {self.size}: expected {_SIZE_RANGE[0]} to {_SIZE_RANGE[1]} pixels")
        if self.image_format not in IMAGE_FORMATS:
            raise MlcdfError(f"--format {self.image_format}: expected one of {', '.join(IMAGE_FORMATS)}")
        if self.seed < 0:
            raise MlcdfError(f"--seed {self.seed}: expected a non-negative integer")
        if not _STRENGTH_RANGE[0] <= self.strength <= _STRENGTH_RANGE[1]:
            raise MlcdfError(f"--strength {self.strength}: expected {_STRENGTH_RANGE[0]} to {_STRENGTH_RANGE[1]}")
        if self.real_fraction is not None and not 0.0 <= self.real_fraction <= 1.0:
            raise MlcdfError(f"--real-fraction {self.real_fraction}: expected 0 to 1")
        if self.workers < 1:
            raise MlcdfError(f"--workers {self.workers}: expected at least 1")
        strength = self.cooccurrence_strength
        if strength is not None and not 0.0 <= strength <= 1.0:
            raise MlcdfError(f"--cooccurrence-strength {strength}: expected 0 to 1")
        if self.cooccurrence == UNIFORM and strength:
            raise MlcdfError(
                f"--cooccurrence-strength {strength} needs a profile (--cooccurrence editing-habits or FILE.json); uniform has none"
            )
        for subset in self.subsets:
            self.cooccurrence_of(subset)  # a bad profile file is an error before anything is written


@dataclass(frozen=True)
class SynthResult:
    """What :func:`generate` wrote: per subset and split, the number of images and of real ones."""

    root: Path
    images: dict[str, dict[str, int]]
    reals: dict[str, dict[str, int]]
    seconds: float
    preview: Path | None = None

    @property
    def total(self) -> int:
        return sum(sum(splits.values()) for splits in self.images.values())


# --------------------------------------------------------------------------------------------- one image


@dataclass(frozen=True)
class Sample:
    """One synthetic image, with what a test needs to know about it.

    Attributes:
        image: the manipulated face, ``uint8`` (size, size, 3).
        pristine: the same face before any manipulation.
        ids: the release label, manipulation ids in the order applied, zero-padded to 5.
        face: the face as ``image`` shows it (for ``facial_attributes``, with the edited states);
            :func:`~.synth_faces.region` of it gives where each part lies.
    """

    image: np.ndarray
    pristine: np.ndarray
    ids: tuple[int, ...]
    face: faces.FaceParams

    @property
    def attributes(self) -> dict[str, bool]:
        """The attribute states visible in ``image``, whether native or edited."""
        return self.face.attribute_states()


def make_sample(
    subset: str,
    split: str,
    index: int,
    *,
    seed: int,
    size: int,
    strength: float = 1.0,
    real_fraction: float | None = None,
    cooccurrence: Cooccurrence | None = None,
) -> Sample:
    """Draw image ``index`` of ``split`` of ``subset`` exactly as :func:`generate` writes it."""
    rng = _image_rng(subset, split, index, seed)
    real_fraction = OFFICIAL_REAL_FRACTION[subset] if real_fraction is None else real_fraction
    steps = sample_steps(rng, real_fraction, cooccurrence)
    names = [SUBSETS[subset][step - 1] for step in steps]
    visible = _draw_attributes(rng, subset)
    manipulate = _edit_attributes if subset == "facial_attributes" else _swap_components
    face, pixels, pristine = manipulate(names, visible, rng, strength, size)
    return Sample(faces.to_uint8(pixels), pristine, tuple(steps) + (0,) * (5 - len(steps)), face)


def sample_steps(rng: np.random.Generator, real_fraction: float, cooccurrence: Cooccurrence | None = None) -> list[int]:
    """A real image (no step) with probability ``real_fraction``; else a recipe of ``cooccurrence``
    (with its strength's probability) or 1 to 5 distinct steps, lengths equally likely, in random order
    (as in the release)."""
    if rng.uniform() < real_fraction:
        return []
    recipe = cooccurrence.draw(rng) if cooccurrence is not None else None
    if recipe is not None:
        return recipe
    length = int(rng.integers(1, 6))
    return [int(step) + 1 for step in rng.permutation(5)[:length]]


def image_steps(
    subset: str, split: str, index: int, *, seed: int, real_fraction: float, cooccurrence: Cooccurrence | None = None
) -> list[int]:
    """The manipulation ids of an image, without drawing it (they are its stream's first draws)."""
    return sample_steps(_image_rng(subset, split, index, seed), real_fraction, cooccurrence)


def _image_rng(subset: str, split: str, index: int, seed: int) -> np.random.Generator:
    """The random stream of one image: independent of every other image, hence of the worker count."""
    return np.random.default_rng(np.random.SeedSequence([seed, list(SUBSETS).index(subset), SPLITS.index(split), index]))


def _draw_attributes(rng: np.random.Generator, subset: str) -> dict[str, bool]:
    return {name: bool(rng.uniform() < rate) for name, rate in ATTRIBUTE_RATES[subset].items()}


def _swap_components(
    names: list[str], visible: dict[str, bool], rng: np.random.Generator, strength: float, size: int
) -> tuple[faces.FaceParams, np.ndarray, np.ndarray]:
    """Draw a face and transplant the named parts; return the face, its pixels and the pristine image."""
    face = faces.sample_face(rng, visible)
    pixels = faces.render(face, size)
    pristine = faces.to_uint8(pixels)
    if names:
        # One donor gives every transplanted part, as when a face is swapped part by part.
        donor = faces.sample_face(rng, _draw_attributes(rng, "facial_components"))
        donor_pixels = faces.render(donor, size)
        for name in names:  # the component names are face parts
            _transplant(pixels, face, donor, donor_pixels, name, rng, strength, size)
    return face, pixels, pristine


def _edit_attributes(
    names: list[str], visible: dict[str, bool], rng: np.random.Generator, strength: float, size: int
) -> tuple[faces.FaceParams, np.ndarray, np.ndarray]:
    """Draw a face and switch the named attributes; ``visible`` are the states the result shows."""
    attributes = [name.lower() for name in names]  # the vocabulary, lower-cased, names FaceParams fields
    # An edit flips a state, so the face starts in the opposite of the state the image will show.
    face = faces.sample_face(rng, {name: state ^ (name in attributes) for name, state in visible.items()})
    pixels = faces.render(face, size, keep_base=True)
    pristine = faces.to_uint8(pixels)
    for done, attribute in enumerate(attributes):
        edited = face.toggled(attribute)
        _edit_attribute(pixels, face, edited, attribute, attributes[:done], rng, strength, size)
        face = edited
    return face, pixels, pristine


# --------------------------------------------------------------------------------------------- manipulations


@dataclass(frozen=True)
class _Trace:
    """How a pasted region differs from what it replaces; every field is 0 (or 1) for no trace.

    Attributes:
        feather: blur of the blending mask, pixels (a soft seam; a hard one would be easier to see).
        colour_match: share of the mean colour difference at the seam that is corrected (a swap's
            colour transfer; an edit re-renders the same face and has nothing to correct).
        gain: per-channel colour gain of the pasted pixels.
        ramp: lighting gradient across the region, ``(x, y)`` change from its centre to its edge.
        blur: Gaussian blur of the pasted pixels, pixels; negative values sharpen by that amount.
        resample: paste through an image this many times smaller (an editor's low resolution).
        contrast: contrast of the pasted pixels around their mean (1 = unchanged).
        saturation: colour saturation of the pasted pixels (1 = unchanged).
        noise: std of fresh pixel noise added to the pasted pixels.
        halo: brightness change along the seam (what blending leaves where colours disagree).
    """

    feather: float
    colour_match: float = 0.0
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ramp: tuple[float, float] = (0.0, 0.0)
    blur: float = 0.0
    resample: int = 1
    contrast: float = 1.0
    saturation: float = 1.0
    noise: float = 0.0
    halo: float = 0.0


def _gain(rng: np.random.Generator, spread: float) -> tuple[float, float, float]:
    red, green, blue = (1 + float(value) for value in rng.normal(0, spread, 3))
    return (red, green, blue)


def _ramp(rng: np.random.Generator, amount: float) -> tuple[float, float]:
    angle = rng.uniform(0, 2 * math.pi)
    return (amount * math.cos(angle), amount * math.sin(angle))


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.uniform() < 0.5 else -1.0


def _swap_trace(rng: np.random.Generator, strength: float, size: int) -> _Trace:
    """Traces of a face swap: an imperfect colour transfer, a lighting mismatch, blur or sharpening."""
    scale = size / 256
    sharpen = rng.uniform() < 0.4
    return _Trace(
        feather=rng.uniform(2.5, 5.0) * scale,
        colour_match=float(np.clip(1 - rng.uniform(0.15, 0.4) * strength, 0, 1)),
        gain=_gain(rng, 0.015 * strength),
        ramp=_ramp(rng, rng.uniform(0.01, 0.04) * strength),
        blur=(-rng.uniform(0.4, 1.0) if sharpen else rng.uniform(0.6, 1.5) * scale) * strength,
        halo=_sign(rng) * rng.uniform(0.01, 0.03) * strength,
    )


def _edit_trace(rng: np.random.Generator, strength: float, size: int) -> _Trace:
    """Traces of a generative editor: low-resolution synthesis that is also smoother, flatter and less
    saturated than a photograph, a colour drift, other noise, a seam."""
    scale = size / 256
    return _Trace(
        feather=rng.uniform(2.0, 4.0) * scale,
        gain=_gain(rng, 0.025 * strength),
        ramp=_ramp(rng, rng.uniform(0.015, 0.04) * strength),
        resample=max(1, round(rng.uniform(1.6, 2.6) * scale * min(1.0, strength))),
        contrast=max(0.0, 1 - rng.uniform(0.14, 0.26) * strength),
        saturation=max(0.0, 1 - rng.uniform(0.2, 0.4) * strength),
        noise=rng.uniform(0.0, 0.01) * strength,
        halo=_sign(rng) * rng.uniform(0.015, 0.04) * strength,
    )


def _transplant(
    pixels: np.ndarray,
    target: faces.FaceParams,
    donor: faces.FaceParams,
    donor_pixels: np.ndarray,
    part: str,
    rng: np.random.Generator,
    strength: float,
    size: int,
) -> None:
    """Replace ``part`` of ``pixels`` (a render of ``target``, maybe already manipulated) by the donor's
    (``donor_pixels`` is its render), in place."""
    trace = _swap_trace(rng, strength, size)
    tx, ty, tsx, tsy = faces.landmark(target, part)
    dx, dy, dsx, dsy = faces.landmark(donor, part)
    # Landmark detectors are a few pixels off; the misalignment is one more trace.
    jitter = rng.normal(0, 0.015 * strength, 2) * target.fw
    scale = (dsx / tsx, dsy / tsy)
    offset = (dx - (tx + jitter[0]) * scale[0], dy - (ty + jitter[1]) * scale[1])
    mask = faces.region(target, part, size)
    if part != "hair":  # hair takes the donor's hair texture over the target's hair, not its hairstyle
        donor_mask = faces.region(donor, part, size)
        inverse = (1 / scale[0], 1 / scale[1]), (-offset[0] / scale[0], -offset[1] / scale[1])
        window = faces.union_window(mask.window, _map_window(donor_mask.window, *inverse, size))
        warped = _warp(donor_mask.alpha[None], donor_mask.window, scale, offset, window, size)[0]
        mask = mask.union(faces.Region(window, warped))
    blend = mask.feathered(trace.feather, size)
    if part == "hair":
        source_window = _map_window(blend.window, scale, offset, size)
        source = faces.hair_texture(donor, size, source_window)
    else:
        source_window, source = faces.full_window(size), donor_pixels
    _paste(pixels, _warp(source, source_window, scale, offset, blend.window, size), blend, trace, rng, size)


def _edit_attribute(
    pixels: np.ndarray,
    before: faces.FaceParams,
    after: faces.FaceParams,
    attribute: str,
    earlier: list[str],
    rng: np.random.Generator,
    strength: float,
    size: int,
) -> None:
    """Switch ``attribute`` in ``pixels`` (showing ``before``, after the ``earlier`` edits) to its state
    in ``after``, in place."""
    trace = _edit_trace(rng, strength, size)
    mask = _edit_region(before if getattr(before, attribute) else after, attribute, earlier, size)
    blend = mask.feathered(trace.feather, size)
    _paste(pixels, faces.render(after, size, blend.window, keep_base=True), blend, trace, rng, size)


#: Face parts an editor repaints to switch each attribute. Young repaints the skin: the face without
#: the eyes, brows and mouth (see :func:`_edit_region`).
EDITED_PARTS = {
    "bangs": ("fringe", "forehead"),
    "eyeglasses": ("glasses",),
    "beard": ("beard",),
    "smiling": ("lip",),
    "young": ("face",),
}


def _edit_region(face: faces.FaceParams, attribute: str, earlier: list[str], size: int) -> faces.Region:
    """Where an editor changes pixels to switch ``attribute`` (``face`` shows it).

    Young leaves out the eyes, brows and mouth, and the regions of the ``earlier`` edits, so that
    their traces survive it and stay where their labels say.
    """
    parts = [faces.region(face, part, size) for part in EDITED_PARTS[attribute]]
    mask = parts[0] if len(parts) == 1 else parts[0].union(parts[1])
    if attribute == "young":
        kept = ["eye", "eyebrow", "lip"] + [part for other in earlier for part in EDITED_PARTS[other]]
        for part in kept:
            mask = mask.minus(faces.region(face, part, size))
    return mask


def _map_window(window: faces.Window, scale: tuple[float, float], offset: tuple[float, float], size: int) -> faces.Window:
    """Where ``(x, y) -> (x * sx + ox, y * sy + oy)`` sends ``window``, with two pixels of margin, in the
    image: the source pixels :func:`_warp` reads to fill ``window``."""
    top, bottom, left, right = window
    xs = [(left * scale[0]) + offset[0] * size, (right * scale[0]) + offset[0] * size]
    ys = [(top * scale[1]) + offset[1] * size, (bottom * scale[1]) + offset[1] * size]
    return (
        max(0, math.floor(min(ys)) - 2),
        min(size, math.ceil(max(ys)) + 2),
        max(0, math.floor(min(xs)) - 2),
        min(size, math.ceil(max(xs)) + 2),
    )


def _warp(
    source: np.ndarray,
    source_window: faces.Window,
    scale: tuple[float, float],
    offset: tuple[float, float],
    window: faces.Window,
    size: int,
) -> np.ndarray:
    """Bilinear resampling of ``source`` (pixels of ``source_window``) onto ``window``.

    A target point ``(x, y)`` (image units) reads the source at ``(x * sx + ox, y * sy + oy)``. The map
    has no rotation, so rows and columns interpolate separately. Reads past the source edge repeat it.
    """

    def taps(start: int, stop: int, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centres = (np.arange(start, stop, dtype=np.float64) + 0.5) / size
        position = (centres * scale[axis] + offset[axis]) * size - 0.5 - source_window[2 * (1 - axis)]
        length = source.shape[2 - axis]
        low = np.clip(np.floor(position), 0, length - 1).astype(np.intp)
        high = np.minimum(low + 1, length - 1)
        weight = np.clip(position - low, 0, 1).astype(np.float32)
        return low, high, weight

    rows_low, rows_high, row_weight = taps(window[0], window[1], 1)
    cols_low, cols_high, col_weight = taps(window[2], window[3], 0)
    first, last = cols_low.min(), cols_high.max() + 1
    source = source[:, :, first:last]  # interpolate rows only where columns will be read
    rows = source[:, rows_low] * (1 - row_weight)[:, None] + source[:, rows_high] * row_weight[:, None]
    cols_low, cols_high = cols_low - first, cols_high - first
    return rows[:, :, cols_low] * (1 - col_weight) + rows[:, :, cols_high] * col_weight


def _paste(pixels: np.ndarray, content: np.ndarray, blend: faces.Region, trace: _Trace, rng: np.random.Generator, size: int) -> None:
    """Blend ``content`` (pixels of ``blend.window``) into ``pixels``, in place, through ``blend``, with
    ``trace``."""
    top, bottom, left, right = blend.window
    alpha = blend.alpha
    under = pixels[:, top:bottom, left:right]
    seam = 4 * alpha * (1 - alpha)  # peaks where the mask is half on
    gain = np.asarray(trace.gain, np.float32)
    if trace.colour_match > 0:
        # Match the mean colours where the two images meet; the later steps keep the mean.
        weight = seam.sum() + 1e-6
        target_mean = (under * seam).sum(axis=(1, 2)) / weight
        content_mean = (content * seam).sum(axis=(1, 2)) / weight
        gain = gain * ((target_mean + 0.02) / (content_mean + 0.02)) ** trace.colour_match
    if trace.resample > 1:
        content = _resample(content, trace.resample)
    if trace.blur > 0:
        content = faces.blur(content, trace.blur)
    elif trace.blur < 0:
        content = content + (-trace.blur) * (content - faces.blur(content, size / 256))
    if trace.saturation != 1:
        grey = content.mean(axis=0)
        content = grey + trace.saturation * (content - grey)
    if trace.contrast != 1:
        mean = ((content * alpha).sum(axis=(1, 2)) / (alpha.sum() + 1e-6))[:, None, None]
        content = mean + trace.contrast * (content - mean)
    height, width = bottom - top, right - left
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    content = content * ((1 + trace.ramp[0] * xs + trace.ramp[1] * ys) * gain[:, None, None])
    if trace.noise > 0:
        content += trace.noise * rng.standard_normal((height, width), dtype=np.float32)
    content -= under
    content *= alpha
    content += trace.halo * seam
    under += content


def _resample(content: np.ndarray, factor: int) -> np.ndarray:
    """Down- then up-sample by ``factor`` (bilinear both ways, 8-bit): detail finer than the factor is lost."""
    height, width = content.shape[1:]
    image = Image.fromarray(faces.to_uint8(content))
    small = image.resize((max(1, round(width / factor)), max(1, round(height / factor))), Image.Resampling.BILINEAR)
    restored = np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(np.moveaxis(restored, -1, 0), dtype=np.float32) * np.float32(1 / 255)


# --------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _ImageJob:
    """One image to draw and write (picklable, for worker processes)."""

    subset: str
    split: str
    index: int
    seed: int
    size: int
    strength: float
    real_fraction: float
    image_format: str
    subset_dir: str  # where ``<subset>/`` is being built
    cooccurrence: Cooccurrence | None

    def run(self) -> tuple[str, tuple[int, ...]]:
        """Write the image; return its ``file_path`` (relative to ROOT) and label ids."""
        sample = make_sample(
            self.subset,
            self.split,
            self.index,
            seed=self.seed,
            size=self.size,
            strength=self.strength,
            real_fraction=self.real_fraction,
            cooccurrence=self.cooccurrence,
        )
        folder = ids_to_sequence(sample.ids, SUBSETS[self.subset]) or REAL_FOLDER
        relative = f"images/{self.split}/{folder}/{self.index:06d}.{self.image_format}"
        path = Path(self.subset_dir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.image_format == "png":
            path.write_bytes(encode_png(sample.image))
        else:
            Image.fromarray(sample.image).save(path, format="JPEG", quality=_JPEG_QUALITY)
        return f"{self.subset}/{relative}", sample.ids


def encode_png(pixels: np.ndarray) -> bytes:
    """An RGB ``uint8`` image as PNG bytes: the "Sub" filter on every row, then fast deflate.

    Pillow's encoder tries all five PNG filters on every row, which takes longer than drawing the
    face; "Sub" alone compresses these images about as well, in a fraction of the time.
    """
    height, width, channels = pixels.shape
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), np.uint8)
    filtered[:, 0] = 1  # the filter type byte of each row: Sub
    filtered[:, 1 : channels + 1] = rows[:, :channels]
    np.subtract(rows[:, channels:], rows[:, :-channels], out=filtered[:, channels + 1 :])  # wraps mod 256
    deflate = zlib.compressobj(_PNG_COMPRESS_LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    data = deflate.compress(filtered.tobytes()) + deflate.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _run_job(job: _ImageJob) -> tuple[str, tuple[int, ...]]:
    return job.run()


@contextmanager
def _mapper(workers: int) -> Iterator[Callable[[list[_ImageJob]], Iterable[tuple[str, tuple[int, ...]]]]]:
    """An ordered ``map`` over jobs: in this process, or over a pool of ``workers`` processes."""
    if workers == 1:
        yield lambda jobs: map(_run_job, jobs)
        return
    # "fork" starts workers fast and works from any __main__ (a script on stdin, a notebook); the pool
    # is created before any progress bar starts its refresh thread. "spawn" where fork is missing.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield lambda jobs: pool.imap(_run_job, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))


def generate(config: SynthConfig, progress: ProgressFn = silent) -> SynthResult:
    """Write the synthetic dataset described by ``config`` (see the module docstring).

    Each subset is built under a temporary name and moved into place when complete, so an interrupted
    run leaves the previous output (or nothing). A previous synthetic subset at the same place is
    replaced; a folder that ``mlcdf synth`` did not write is never touched.

    Raises:
        MlcdfError: an invalid option, or ``ROOT/<subset>`` exists and is not synthetic.
    """
    config.check()
    root = Path(config.out)
    check_output_folder(root)
    for subset in config.subsets:
        check_replaceable(root / subset, **_SYNTH_OUTPUT)
    readme = root / _README
    if readme.exists() and not _is_own_readme(readme):
        raise MlcdfError(f"{readme}: exists and was not written by 'mlcdf synth'; not replacing it (choose another --out)")
    if config.preview is not None:
        check_file_replaceable(config.preview, **_PREVIEW_OUTPUT)
    start = time.perf_counter()
    images: dict[str, dict[str, int]] = {}
    reals: dict[str, dict[str, int]] = {}
    with _mapper(config.workers) as run_all:
        for subset in config.subsets:
            cooccurrence = config.cooccurrence_of(subset)
            all_ids: list[tuple[int, ...]] = []
            with atomic_dir(root / subset, **_SYNTH_OUTPUT) as building:
                images[subset], reals[subset] = {}, {}
                for split, count in config.split_sizes().items():
                    jobs = [
                        _ImageJob(
                            subset,
                            split,
                            index,
                            config.seed,
                            config.size,
                            config.strength,
                            config.real_fraction_of(subset, cooccurrence),
                            config.image_format,
                            str(building),
                            cooccurrence,
                        )
                        for index in range(count)
                    ]
                    rows = list(progress(run_all(jobs), f"{subset} {split}", total=count))
                    _write_annotations(building / "annotations" / f"{split}.csv", rows)
                    images[subset][split] = count
                    reals[subset][split] = sum(1 for _, ids in rows if not steps_of(ids))
                    all_ids += [ids for _, ids in rows]
                info = _provenance(config, subset, images[subset], reals[subset], cooccurrence)
                info["cooccurrence"]["label_statistics"] = label_statistics(
                    all_ids, SUBSETS[subset], cooccurrence.recipes if cooccurrence else ()
                )
                write_json(building / SYNTH_JSON, info)
    _write_readme(root)
    if config.preview is not None:
        write_preview(config.preview, config)
    return SynthResult(root, images, reals, time.perf_counter() - start, config.preview)


def _write_annotations(path: Path, rows: list[tuple[str, tuple[int, ...]]]) -> None:
    with atomic_open(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file_path", "label"])
        for file_path, ids in rows:
            writer.writerow([file_path, format_label_ids(ids)])


def _provenance(config: SynthConfig, subset: str, images: dict[str, int], reals: dict[str, int], cooccurrence: Cooccurrence | None) -> dict:
    return {
        "generator": "mlcdf synth",
        "mlcdf_version": __version__,
        "synth_version": SYNTH_VERSION,
        "subset": subset,
        "labels": list(SUBSETS[subset]),
        "seed": config.seed,
        "size": config.size,
        "format": config.image_format,
        "strength": config.strength,
        "real_fraction": config.real_fraction_of(subset, cooccurrence),
        "images": images,
        "real_images": reals,
        "cooccurrence": cooccurrence.describe() if cooccurrence else {"profile": UNIFORM, "strength": 0.0, "recipes": []},
    }


_README_HEADER = """\
SYNTHETIC DATA: a stand-in for Seq-DeepFake (Shao, Wu, Liu, ECCV 2022), written by `mlcdf synth`.

These are procedurally drawn faces, not photographs and not the Seq-DeepFake release. Each image
carries 0 to 5 manipulations, applied in sequence, each on the output of the previous one:
  facial_components  nose, eye, eyebrow, lip, hair: the part is transplanted from a donor face, aligned
                     on its landmarks, partly colour-corrected, blurred or sharpened, feather-blended.
  facial_attributes  Bangs, Eyeglasses, Beard, Smiling, Young: the attribute is switched (added or
                     removed) by an editor that re-synthesises its region at a lower resolution and
                     leaves a colour drift, a seam and other noise. Unedited faces show the same
                     attributes natively, at the same rates.
Folders, file names and annotation CSVs follow the release, so
`mlcdf prepare --root <this folder> --out <prepared>` reads them as it reads the real data.

How each subset was made (also in <subset>/synth.json):
"""


def _cooccurrence_text(info: dict) -> str:
    """``uniform`` or ``editing-habits at 0.9``; synth.json written before profiles existed is uniform."""
    cooccurrence = info.get("cooccurrence", {"profile": UNIFORM})
    if cooccurrence["profile"] == UNIFORM:
        return UNIFORM
    return f"{cooccurrence['profile']} at strength {cooccurrence['strength']}"


def _is_own_readme(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline() == _README_HEADER.splitlines(keepends=True)[0]
    except (OSError, UnicodeDecodeError):
        return False


def _write_readme(root: Path) -> None:
    """Describe every synthetic subset under ``root`` (not only this run's)."""
    lines = [_README_HEADER]
    for subset in SUBSETS:
        path = root / subset / SYNTH_JSON
        if not path.is_file():
            continue
        info = json.loads(path.read_text(encoding="utf-8"))
        counts = " / ".join(f"{split} {count}" for split, count in info["images"].items())
        lines.append(
            f"  {subset}: {counts} images of {info['size']}x{info['size']} {info['format']}, seed {info['seed']}, "
            f"strength {info['strength']}, real fraction {info['real_fraction']:.4f}, "
            f"co-occurrence {_cooccurrence_text(info)}; "
            f"mlcdf {info['mlcdf_version']}, synth version {info['synth_version']}\n"
        )
    with atomic_open(root / _README) as handle:
        handle.write("".join(lines))


# --------------------------------------------------------------------------------------------- preview


def write_preview(path: str | Path, config: SynthConfig) -> Path:
    """Write a PNG grid of examples from the first non-empty split of each subset of ``config``.

    Per subset: for each label, the first image manipulated by that label alone, then the first
    image with the longest sequence found. Each example shows the face before any manipulation, the
    image as written, and their difference (amplified 4 times), under its sequence.
    """
    split = next(name for name, count in config.split_sizes().items() if count > 0)
    cells = []
    for subset in config.subsets:
        cooccurrence = config.cooccurrence_of(subset)
        for index in _preview_indices(config, subset, split, cooccurrence):
            sample = make_sample(
                subset,
                split,
                index,
                seed=config.seed,
                size=config.size,
                strength=config.strength,
                real_fraction=config.real_fraction_of(subset, cooccurrence),
                cooccurrence=cooccurrence,
            )
            label = ids_to_sequence(sample.ids, SUBSETS[subset]) or REAL_FOLDER
            cells.append((f"{subset} {split} {index:06d}: {label}", sample))
    panel, pad, line, per_row = min(max(config.size, 128), 192), 6, 14, 2
    cell_width, cell_height = 3 * panel + 2 * pad, panel + line + 2 * pad
    rows = math.ceil(len(cells) / per_row)
    sheet = Image.new("RGB", (per_row * (cell_width + 2 * pad) + 2 * pad, rows * cell_height + 2 * line + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text(
        (2 * pad, pad),
        f"mlcdf synth: seed {config.seed}, {config.size} px, strength {config.strength}. Each example: before | after | difference x4",
        fill="black",
        font=font,
    )
    for position, (text, sample) in enumerate(cells):
        x = 2 * pad + (position % per_row) * (cell_width + 2 * pad)
        y = 2 * line + (position // per_row) * cell_height
        difference = np.abs(sample.image.astype(np.int16) - sample.pristine.astype(np.int16))
        difference = np.clip(difference * 4, 0, 255).astype(np.uint8)
        for column, pixels in enumerate((sample.pristine, sample.image, difference)):
            tile = Image.fromarray(pixels).resize((panel, panel), Image.Resampling.LANCZOS)
            sheet.paste(tile, (x + column * (panel + pad), y))
        draw.text((x, y + panel + 2), text, fill="black", font=font)
    path = Path(path)
    save_png(sheet, path, command=_PREVIEW_OUTPUT["command"])
    return path


def _preview_indices(config: SynthConfig, subset: str, split: str, cooccurrence: Cooccurrence | None, scan: int = 500) -> list[int]:
    """Image indices for the preview, chosen from the sequences alone (no image is drawn to choose)."""
    count = min(scan, config.split_sizes()[split])
    real_fraction = config.real_fraction_of(subset, cooccurrence)
    steps = [
        image_steps(subset, split, index, seed=config.seed, real_fraction=real_fraction, cooccurrence=cooccurrence)
        for index in range(count)
    ]
    chosen = [steps.index([label]) for label in range(1, 6) if [label] in steps]
    longest = max(range(count), key=lambda index: len(steps[index]))
    chosen.append(longest)
    # Small splits may lack some single-label images; the first others fill their places.
    chosen += [index for index in range(count) if index not in chosen][: 6 - len(chosen)]
    return sorted(set(chosen), key=chosen.index)
