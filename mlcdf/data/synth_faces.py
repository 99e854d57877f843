"""Procedural faces for the synthetic Seq-DeepFake stand-in: parameters, rendering and region masks.

A face is a frozen :class:`FaceParams` (geometry, colours, hair style, the five attribute states and a
texture seed). :func:`render` turns it into float RGB pixels, optionally only inside a window, so that an
edit can re-render just the pixels it replaces. Because every random texture comes from the params' seed,
rendering the same params twice gives the same pixels, and rendering params that differ in one attribute
changes only the pixels that attribute covers. :func:`region` gives the soft mask of a face part (nose,
eye, ...) in the same geometry; the manipulations in :mod:`mlcdf.data.synth` transplant and edit through
these masks.

Coordinates: image coordinates are normalised to [0, 1] (x right, y down). Face coordinates ``(u, v)`` are
relative to the face ellipse: ``x = cx + u * fw``, ``y = cy + v * fh``, so the face spans ``u, v`` in
[-1, 1] (forehead top at ``v = -1``, chin at ``v = 1``).
"""

from __future__ import annotations

import collections
import functools
import math
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageFilter

#: Names of the attribute states a face carries (the ``facial_attributes`` vocabulary, lower-cased).
ATTRIBUTES = ("bangs", "eyeglasses", "beard", "smiling", "young")

#: Face parts :func:`region` knows.
PARTS = ("nose", "eye", "eyebrow", "lip", "hair", "face", "forehead", "jaw", "glasses", "beard", "fringe")

Window = tuple[int, int, int, int]
"""A pixel rectangle ``(top, bottom, left, right)``, bottom/right exclusive."""

Colour = tuple[float, float, float]

_SKIN_LIGHT = np.array([0.97, 0.82, 0.72], np.float32)
_SKIN_DARK = np.array([0.38, 0.25, 0.18], np.float32)
_HAIR_COLOURS = np.array(
    [
        [0.08, 0.06, 0.05],  # black
        [0.20, 0.13, 0.08],  # dark brown
        [0.38, 0.25, 0.14],  # brown
        [0.70, 0.56, 0.36],  # blond
        [0.55, 0.25, 0.12],  # auburn
        [0.55, 0.53, 0.52],  # grey
    ],
    np.float32,
)
_HAIR_WEIGHTS = np.array([0.3, 0.25, 0.2, 0.12, 0.08, 0.05])
_IRIS_COLOURS = np.array([[0.25, 0.15, 0.08], [0.12, 0.08, 0.05], [0.25, 0.38, 0.55], [0.3, 0.4, 0.25]], np.float32)
_FRAME_COLOURS = np.array([[0.05, 0.05, 0.05], [0.30, 0.18, 0.10], [0.72, 0.60, 0.30], [0.62, 0.63, 0.66]], np.float32)
HAIR_STYLES = ("bald", "short", "medium", "long")


@dataclass(frozen=True)
class FaceParams:
    """Everything that decides what a face looks like. Lengths are in face units unless noted.

    The attribute fields (``bangs`` ... ``young``) are the visible states; an edit flips one of them
    (:meth:`toggled`) and re-renders.
    """

    seed: int
    cx: float  # face centre and half-sizes, image units
    cy: float
    fw: float
    fh: float
    jaw: float  # how much the lower face narrows towards the chin
    skin: Colour
    light: tuple[float, float]  # lighting gradient (dx, dy); brighter towards this direction
    background: tuple[Colour, Colour]
    background_angle: float
    clothes: Colour
    hair_colour: Colour
    hair_style: str
    hairline: float  # v of the hairline at the centre
    fringe: float  # gap between the fringe's lower edge and the brows, when ``bangs``
    eye_y: float
    eye_sep: float  # u of each eye centre
    eye_w: float
    eye_h: float
    iris: Colour
    gaze: float
    brow_gap: float
    brow_thick: float
    brow_arch: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_thick: float
    lip_colour: Colour
    glasses_round: float  # superellipse exponent of the rims: 2 round ... 6 square
    glasses_colour: Colour
    beard_density: float
    sensor_noise: float  # std of per-pixel noise, in [0, 1] intensity units
    bangs: bool
    eyeglasses: bool
    beard: bool
    smiling: bool
    young: bool

    def toggled(self, attribute: str) -> FaceParams:
        """The same face with one attribute state flipped (``attribute`` from :data:`ATTRIBUTES`)."""
        # Typed Any: the field is named at run time, so mypy cannot match it to one of replace's fields.
        changes: dict[str, Any] = {attribute: not getattr(self, attribute)}
        return replace(self, **changes)

    def attribute_states(self) -> dict[str, bool]:
        return {name: bool(getattr(self, name)) for name in ATTRIBUTES}


def sample_face(rng: np.random.Generator, attributes: dict[str, bool]) -> FaceParams:
    """Draw a random face with the given attribute states (keys from :data:`ATTRIBUTES`)."""
    fw = rng.uniform(0.25, 0.28)
    tone = rng.uniform(0.0, 1.0) ** 1.2
    skin = (1 - tone) * _SKIN_LIGHT + tone * _SKIN_DARK + rng.normal(0, 0.02, 3)
    # Nothing but the attribute fields depends on the attribute states (no greyer hair for older
    # skin, say): an edit switches one state, and nothing else may give the edit away.
    hair = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=_HAIR_WEIGHTS)] * rng.uniform(0.85, 1.15)
    light_angle = rng.uniform(0, 2 * math.pi)
    light_amount = rng.uniform(0.05, 0.25)
    background = tuple(_muted_colour(rng) for _ in range(2))
    lip = skin * np.array([0.92, 0.62, 0.62]) + np.array([0.08, 0.0, 0.02]) * rng.uniform(0.5, 1.5)
    return FaceParams(
        seed=int(rng.integers(2**31)),
        cx=0.5 + rng.uniform(-0.025, 0.025),
        cy=0.52 + rng.uniform(-0.02, 0.02),
        fw=fw,
        fh=fw * rng.uniform(1.28, 1.42),
        jaw=rng.uniform(0.05, 0.35),
        skin=_colour(skin),
        light=(light_amount * math.cos(light_angle), light_amount * math.sin(light_angle)),
        background=background,  # type: ignore[arg-type]
        background_angle=rng.uniform(0, 2 * math.pi),
        clothes=_muted_colour(rng),
        hair_colour=_colour(hair),
        hair_style=str(rng.choice(HAIR_STYLES, p=[0.06, 0.4, 0.27, 0.27])),
        hairline=rng.uniform(-0.72, -0.45),
        fringe=rng.uniform(0.03, 0.1),
        eye_y=rng.uniform(-0.12, -0.04),
        eye_sep=rng.uniform(0.36, 0.42),
        eye_w=rng.uniform(0.17, 0.21),
        eye_h=rng.uniform(0.05, 0.075),
        iris=_colour(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * rng.uniform(0.8, 1.2)),
        gaze=rng.uniform(-0.25, 0.25),
        brow_gap=rng.uniform(0.13, 0.19),
        brow_thick=rng.uniform(0.045, 0.075),
        brow_arch=rng.uniform(0.02, 0.07),
        nose_len=rng.uniform(0.28, 0.38),
        nose_w=rng.uniform(0.13, 0.19),
        mouth_y=rng.uniform(0.52, 0.6),
        mouth_w=rng.uniform(0.3, 0.42),
        lip_thick=rng.uniform(0.045, 0.075),
        lip_colour=_colour(lip),
        glasses_round=rng.uniform(2.0, 6.0),
        glasses_colour=_colour(_FRAME_COLOURS[rng.integers(len(_FRAME_COLOURS))]),
        beard_density=rng.uniform(0.55, 0.95),
        sensor_noise=rng.uniform(0.004, 0.012),
        bangs=attributes["bangs"],
        eyeglasses=attributes["eyeglasses"],
        beard=attributes["beard"],
        smiling=attributes["smiling"],
        young=attributes["young"],
    )


def _muted_colour(rng: np.random.Generator) -> Colour:
    grey = rng.uniform(0.25, 0.85)
    return _colour(grey + rng.normal(0, 0.08, 3))


def _colour(values: np.ndarray) -> Colour:
    r, g, b = (float(value) for value in np.clip(values, 0.0, 1.0))
    return (r, g, b)


# --------------------------------------------------------------------------------------------- textures


class _Noise(NamedTuple):
    pores: np.ndarray  # (S, S) white noise: skin grain and beard stubble
    sensor: np.ndarray  # (3, S, S) white noise: camera noise
    blotch: np.ndarray  # (S, S) low-frequency noise: skin unevenness, background
    strands: np.ndarray  # (S, S) noise stretched vertically: hair strands


@functools.lru_cache(maxsize=2)
def _noise_bank(size: int) -> _Noise:
    """Noise fields 1.5 times the image size, drawn once per size and process from a fixed seed.

    A face takes its fields as crops at offsets drawn from its own seed: as good as fresh noise for a
    texture, and it keeps drawing (and upsampling) noise out of the per-image cost.
    """
    rng = np.random.default_rng(0x5EED)
    side = size + size // 2
    strands = _upsample(rng.standard_normal((max(4, side // 12), side), dtype=np.float32), side, side)
    fields = _Noise(
        pores=rng.standard_normal((side, side), dtype=np.float32),
        sensor=rng.standard_normal((3, side, side), dtype=np.float32),
        blotch=_upsample(rng.standard_normal((15, 15), dtype=np.float32), side, side),
        strands=strands / strands.std(),
    )
    for field in fields:
        field.flags.writeable = False
    return fields


@functools.lru_cache(maxsize=8)
def _noise(seed: int, size: int) -> _Noise:
    """The random textures of one face; cached because edits re-render the same face several times."""
    bank = _noise_bank(size)
    y, x, blotch_y, blotch_x = np.random.default_rng(seed).integers(0, size // 2 + 1, size=4)
    return _Noise(
        pores=bank.pores[y : y + size, x : x + size],
        sensor=bank.sensor[:, y : y + size, x : x + size],
        blotch=bank.blotch[blotch_y : blotch_y + size, blotch_x : blotch_x + size],
        strands=bank.strands[y : y + size, x : x + size],
    )


def _upsample(field: np.ndarray, height: int, width: int) -> np.ndarray:
    image = Image.fromarray(field, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.array(image, dtype=np.float32)


def blur(array: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (h, w) mask or a (3, h, w) image of values in [0, 1]; ``sigma`` in pixels.

    Runs in Pillow at 8-bit precision (values are clipped to [0, 1] and rounded to 1/255), which is
    what the images are written at anyway, at a fraction of the cost of a float blur in numpy.
    """
    if sigma < 0.3:
        return np.asarray(array, np.float32)
    image = Image.fromarray(to_uint8(array))
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(sigma)))
    if array.ndim == 3:
        blurred = np.moveaxis(blurred, -1, 0)
    return np.ascontiguousarray(blurred, dtype=np.float32) * np.float32(1 / 255)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as ``uint8``: an (h, w) mask as is, planar (3, h, w) pixels as (h, w, 3)."""
    scaled = pixels * np.float32(255)
    scaled += np.float32(0.5)
    np.clip(scaled, 0, 255, out=scaled)
    if scaled.ndim == 2:
        return scaled.astype(np.uint8)
    interleaved = np.empty(scaled.shape[1:] + (3,), np.uint8)
    np.copyto(interleaved, scaled.transpose(1, 2, 0), casting="unsafe")  # truncates: rounded by the +0.5
    return interleaved


# --------------------------------------------------------------------------------------------- geometry


class _Area(NamedTuple):
    """A pixel rectangle with its normalised coordinates, as broadcastable column / row vectors."""

    window: Window
    x: np.ndarray  # (1, w)
    y: np.ndarray  # (h, 1)


def _area(size: int, box: tuple[float, float, float, float], clip: Window) -> _Area | None:
    """The pixels of the normalised box ``(left, top, right, bottom)`` inside ``clip``; None if empty."""
    left, top, right, bottom = box
    x0 = max(clip[2], math.floor(left * size))
    x1 = min(clip[3], math.ceil(right * size))
    y0 = max(clip[0], math.floor(top * size))
    y1 = min(clip[1], math.ceil(bottom * size))
    if x0 >= x1 or y0 >= y1:
        return None
    x = ((np.arange(x0, x1, dtype=np.float32) + 0.5) / size)[None, :]
    y = ((np.arange(y0, y1, dtype=np.float32) + 0.5) / size)[:, None]
    return _Area((y0, y1, x0, x1), x, y)


def _edge(distance_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance to an edge in pixels (positive inside)."""
    coverage = distance_px + np.float32(0.5)
    # Two ufuncs in place: np.clip's Python wrapper costs more than the work on small areas.
    np.maximum(coverage, 0.0, out=coverage)
    return np.minimum(coverage, 1.0, out=coverage)


class _Face:
    """Face-unit helpers for one face at one image size."""

    def __init__(self, params: FaceParams, size: int) -> None:
        self.p = params
        self.size = size
        self.px = 1.0 / (params.fw * size)  # one pixel in u units

    def box(self, u0: float, v0: float, u1: float, v1: float) -> tuple[float, float, float, float]:
        p = self.p
        return (p.cx + u0 * p.fw, p.cy + v0 * p.fh, p.cx + u1 * p.fw, p.cy + v1 * p.fh)

    def uv(self, area: _Area) -> tuple[np.ndarray, np.ndarray]:
        return (area.x - self.p.cx) / self.p.fw, (area.y - self.p.cy) / self.p.fh

    def ellipse(self, u: np.ndarray, v: np.ndarray, cu: float, cv: float | np.ndarray, ru: float, rv: float) -> np.ndarray:
        """Coverage of an axis-aligned ellipse given in face units (``cv`` may vary along ``u``, as the mouth's line)."""
        r = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
        return _edge((1 - r) * min(ru, rv * self.p.fh / self.p.fw) / self.px)

    def between(self, v: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        """Coverage of the band between two curves ``v = top(u)`` and ``v = bottom(u)``."""
        scale = self.p.fh / self.p.fw / self.px
        return _edge((v - top) * scale) * _edge((bottom - v) * scale)

    def stroke(self, v: np.ndarray, curve: np.ndarray, half_width_px: float) -> np.ndarray:
        """Coverage of a line ``v = curve(u)`` drawn ``2 * half_width_px`` pixels thick."""
        return _edge(half_width_px - np.abs(v - curve) * self.p.fh / self.p.fw / self.px)

    def glow(self, u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
        """A Gaussian blob (1 at the centre, ``exp(-1)`` at the radii): soft shading and highlights."""
        return np.exp(-(((u - cu) / ru) ** 2) - ((v - cv) / rv) ** 2)

    def head(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Coverage of the face: an ellipse whose lower half narrows towards the chin."""
        narrowing = 1 - self.p.jaw * np.clip(v, 0, 1) ** 2
        r = np.sqrt((u / narrowing) ** 2 + v**2)
        return _edge((1 - r) / self.px)


# --------------------------------------------------------------------------------------------- shapes
# Each ``_*_alpha`` returns the coverage of one element over ``area``; rendering and :func:`region` share
# them so that masks follow the drawn pixels.


def _hair_alpha(face: _Face, area: _Area) -> np.ndarray:
    """Hair on and around the head, by style; it never covers the face or the neck (the fringe does)."""
    p = face.p
    u, v = face.uv(area)
    cap_top = -1.12 - 0.05 * (p.hair_style != "bald")
    cap = face.ellipse(u, v, 0.0, -0.12, 1.1, -cap_top - 0.12)
    hairline = p.hairline + 0.5 * np.clip(np.abs(u), 0, 1) ** 3  # temples recede towards the ears
    if p.hair_style == "bald":
        hairline = hairline - 0.35
    alpha = cap * _edge((hairline - v) * p.fh / p.fw / face.px)
    if p.hair_style in ("medium", "long"):
        bottom = 0.85 if p.hair_style == "medium" else 1.7
        centre, half = (bottom - 1.1) / 2, (bottom + 1.1) / 2
        across, down = np.abs(u / 1.28), np.abs((v - centre) / half)
        r = np.cbrt(across * across * across + down * down * down)  # a superellipse of power 3
        mane = _edge((1 - r) * 1.28 / face.px) * (1 - face.head(u, v)) * (1 - _neck_alpha(face, u, v))
        alpha = np.maximum(alpha, mane)
    return alpha


def _neck_alpha(face: _Face, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _edge((0.48 - np.abs(u) - 0.05 * np.clip(v - 1.2, 0, None)) / face.px) * _edge((v - 0.3) / face.px)


def _fringe_alpha(face: _Face, area: _Area, noise: _Noise) -> np.ndarray:
    """Bangs: hair over the forehead, down to a ragged edge above the brows."""
    p = face.p
    u, v = face.uv(area)
    x0, x1 = area.window[2:]
    ragged = 0.03 * noise.strands[0, x0:x1][None, :]  # a fixed row: the same edge in every window
    brow_top = p.eye_y - p.brow_gap - p.brow_arch - p.brow_thick
    bottom = brow_top - p.fringe + 0.08 * u**2 + ragged
    return face.between(v, np.full_like(u, -1.2), bottom) * face.head(u * 1.02, v * 1.02)


def _beard_alpha(face: _Face, area: _Area) -> np.ndarray:
    """Beard and moustache: the jaw below the cheeks, leaving the lips free."""
    p = face.p
    u, v = face.uv(area)
    jaw = face.head(u, v) * _edge((v - (p.mouth_y - 0.22 + 0.25 * u**2)) * p.fh / p.fw / face.px)
    lips = face.ellipse(u, v, 0.0, p.mouth_y, p.mouth_w * 0.95, p.lip_thick * 1.3)
    return jaw * (1 - lips)


def _glasses_alpha(face: _Face, area: _Area) -> np.ndarray:
    """Rims, bridge and temple arms of a pair of glasses."""
    p = face.p
    u, v = face.uv(area)
    half_px = max(0.8, 0.012 * p.fw * face.size)
    alpha = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
    rim_u, rim_v = _rim_radii(p)
    for side in (-1, 1):
        du = (u - side * p.eye_sep) / rim_u
        dv = (v - p.eye_y - 0.02) / rim_v
        r = (np.abs(du) ** p.glasses_round + np.abs(dv) ** p.glasses_round) ** (1 / p.glasses_round)
        alpha = np.maximum(alpha, _edge(half_px - np.abs(r - 1) * rim_u / face.px))
        outer = side * (p.eye_sep + rim_u)
        arm_u = np.clip((u - outer) * side, 0, None)
        arm = face.stroke(v, np.full_like(u, p.eye_y - 0.03), half_px * 0.8) * _edge(arm_u / face.px * 2)
        alpha = np.maximum(alpha, arm * _edge((1.02 - np.abs(u)) / face.px))
    inner = p.eye_sep - rim_u
    bridge = face.stroke(v, p.eye_y - 0.05 + 0.04 * (u / inner) ** 2, half_px)
    return np.maximum(alpha, bridge * _edge((inner + 0.02 - np.abs(u)) / face.px))


def _rim_radii(params: FaceParams) -> tuple[float, float]:
    """Half-width and half-height (face units) of a glasses rim: round rims look round."""
    return params.eye_w * 1.45, params.eye_w * params.fw / params.fh


def _lens_alpha(face: _Face, area: _Area) -> np.ndarray:
    p = face.p
    u, v = face.uv(area)
    rim_u, rim_v = _rim_radii(p)
    return np.maximum(
        face.ellipse(u, v, -p.eye_sep, p.eye_y + 0.02, rim_u, rim_v),
        face.ellipse(u, v, p.eye_sep, p.eye_y + 0.02, rim_u, rim_v),
    )


# --------------------------------------------------------------------------------------------- rendering


class _Canvas:
    """The pixels of one window of a ``size`` x ``size`` image, painted in place.

    Pixels are planar, (3, h, w): masks of shape (h, w) then broadcast over the channels along whole
    rows, several times faster in numpy than (h, w, 3) with its 3-long inner loops.
    """

    def __init__(self, size: int, window: Window) -> None:
        self.size = size
        self.window = window
        top, bottom, left, right = window
        self.pixels = np.zeros((3, bottom - top, right - left), np.float32)

    def area(self, box: tuple[float, float, float, float]) -> _Area | None:
        return _area(self.size, box, self.window)

    def view(self, area: _Area) -> np.ndarray:
        top, _, left, _ = self.window
        y0, y1, x0, x1 = area.window
        return self.pixels[:, y0 - top : y1 - top, x0 - left : x1 - left]

    def paint(self, area: _Area, alpha: np.ndarray, colour: np.ndarray | Colour) -> None:
        """Blend ``colour`` (RGB or a per-pixel (3, h, w) array) over ``area`` with coverage ``alpha``."""
        view = self.view(area)
        change = _planar(colour) - view
        change *= alpha
        view += change

    def shade(self, area: _Area, factor: np.ndarray) -> None:
        """Multiply the pixels of ``area`` by ``factor`` (per pixel)."""
        view = self.view(area)
        view *= factor


def _planar(colour: np.ndarray | Colour) -> np.ndarray:
    """An RGB triple as a (3, 1, 1) array (broadcasts over planar pixels); a (3, h, w) array unchanged."""
    colour = np.asarray(colour, np.float32)
    return colour.reshape(3, 1, 1) if colour.ndim == 1 else colour


def full_window(size: int) -> Window:
    return (0, size, 0, size)


def render(params: FaceParams, size: int, window: Window | None = None, *, keep_base: bool = False) -> np.ndarray:
    """Draw the face as planar float32 RGB in [0, 1] (about), shape (3, h, w) of ``window`` (default: all).

    With ``keep_base``, the layers that no attribute but ``young`` changes (background, body, skin,
    hair) are drawn for the whole image and kept, so that re-rendering the face with other attribute
    states (an edit sequence) only draws the layers above them.
    """
    window = window or full_window(size)
    canvas = _Canvas(size, window)
    canvas.pixels[:] = _base_layers(params, size, window, keep=keep_base)
    face = _Face(params, size)
    noise = _noise(params.seed, size)
    if params.beard:
        _draw_beard(canvas, face, noise)
    _draw_nose(canvas, face)
    _draw_mouth(canvas, face)
    _draw_eyes(canvas, face)
    _draw_brows(canvas, face, noise)
    if params.bangs:
        _draw_hair(canvas, face, noise, functools.partial(_fringe_alpha, noise=noise))
    if params.eyeglasses:
        _draw_glasses(canvas, face)
    _draw_light(canvas, face, noise)
    return canvas.pixels


#: Full-frame base layers of recently kept faces (see :func:`render`), keyed by :func:`_base_key`.
_BASE_CACHE: collections.OrderedDict[tuple[FaceParams, int], np.ndarray] = collections.OrderedDict()
_BASE_CACHE_SIZE = 4


def _base_key(params: FaceParams) -> FaceParams:
    """The params with the attributes drawn above the base layers cleared (``young`` changes the skin)."""
    return replace(params, bangs=False, eyeglasses=False, beard=False, smiling=False)


def _base_layers(params: FaceParams, size: int, window: Window, *, keep: bool) -> np.ndarray:
    """Background, body, skin and hair over ``window``; with ``keep``, drawn whole and cached."""
    key = (_base_key(params), size)
    top, bottom, left, right = window
    if key in _BASE_CACHE:
        _BASE_CACHE.move_to_end(key)
        return _BASE_CACHE[key][:, top:bottom, left:right]
    if keep:
        _BASE_CACHE[key] = _base_layers(params, size, full_window(size), keep=False)
        _BASE_CACHE[key].flags.writeable = False
        if len(_BASE_CACHE) > _BASE_CACHE_SIZE:
            _BASE_CACHE.popitem(last=False)
        return _BASE_CACHE[key][:, top:bottom, left:right]
    canvas = _Canvas(size, window)
    face = _Face(params, size)
    noise = _noise(params.seed, size)
    _draw_background(canvas, face, noise)
    _draw_body(canvas, face)
    _draw_skin(canvas, face, noise)
    _draw_hair(canvas, face, noise, _hair_alpha)
    return canvas.pixels


def hair_texture(params: FaceParams, size: int, window: Window) -> np.ndarray:
    """The face's hair colour and strands over ``window`` (as if hair covered it), lit like the face."""
    canvas = _Canvas(size, window)
    face = _Face(params, size)
    noise = _noise(params.seed, size)
    area = canvas.area((0, 0, 1, 1))
    assert area is not None  # the window lies inside the image
    canvas.view(area)[:] = _hair_colours(face, area, noise)
    _draw_light(canvas, face, noise)
    return canvas.pixels


def _draw_background(canvas: _Canvas, face: _Face, noise: _Noise) -> None:
    """A two-colour gradient, mottled by the face's low-frequency noise."""
    area = canvas.area((0, 0, 1, 1))
    assert area is not None
    p = face.p
    y0, y1, x0, x1 = area.window
    t = (area.x - 0.5) * math.cos(p.background_angle) + (area.y - 0.5) * math.sin(p.background_angle)
    mottle = 1 + 0.05 * noise.blotch[y0:y1, x0:x1]
    c0, c1 = (np.array(c, np.float32) for c in p.background)
    pixels = canvas.view(area)
    np.multiply(mottle * np.clip(t + 0.5, 0, 1), _planar(c1 - c0), out=pixels)
    pixels += mottle * _planar(c0)


def _draw_body(canvas: _Canvas, face: _Face) -> None:
    p = face.p
    skin = np.array(p.skin, np.float32) * 0.8
    neck = canvas.area(face.box(-0.55, 0.3, 0.55, 1.9))
    if neck is not None:
        canvas.paint(neck, _neck_alpha(face, *face.uv(neck)), skin)
    shoulders = canvas.area(face.box(-2.6, 1.2, 2.6, 3.2))
    if shoulders is not None:
        u, v = face.uv(shoulders)
        alpha = face.ellipse(u, v, 0.0, 2.55, 2.3, 1.25)
        canvas.paint(shoulders, alpha, p.clothes)
        collar = face.ellipse(u, v, 0.0, 1.32, 0.5, 0.18) * _edge((v - 1.3) * p.fh / p.fw / face.px)
        canvas.paint(shoulders, collar, skin * 0.85)


def _hair_colours(face: _Face, area: _Area, noise: _Noise) -> np.ndarray:
    p = face.p
    y0, y1, x0, x1 = area.window
    u, v = face.uv(area)
    sheen = 1 + 0.18 * np.exp(-(((v + 0.85) / 0.25) ** 2)) * np.exp(-((u / 0.6) ** 2))
    strands = 1 + 0.13 * noise.strands[y0:y1, x0:x1]
    return _planar(p.hair_colour) * (sheen * strands)


def _hair_box(params: FaceParams) -> tuple[float, float, float, float]:
    """Face-unit box holding the hair (and the fringe) of the face's style."""
    if params.hair_style in ("medium", "long"):
        return (-1.32, -1.2, 1.32, 0.9 if params.hair_style == "medium" else 1.75)
    return (-1.12, -1.2, 1.12, 0.35)


def _draw_hair(canvas: _Canvas, face: _Face, noise: _Noise, shape) -> None:
    area = canvas.area(face.box(*_hair_box(face.p)))
    if area is not None:
        canvas.paint(area, shape(face, area), _hair_colours(face, area, noise))


def _draw_skin(canvas: _Canvas, face: _Face, noise: _Noise) -> None:
    p = face.p
    skin = np.array(p.skin, np.float32)
    ears = canvas.area(face.box(-1.2, -0.3, 1.2, 0.35))
    if ears is not None:
        u, v = face.uv(ears)
        alpha = np.maximum(face.ellipse(u, v, -0.97, 0.0, 0.14, 0.2), face.ellipse(u, v, 0.97, 0.0, 0.14, 0.2))
        canvas.paint(ears, alpha, skin * 0.88)
    area = canvas.area(face.box(-1.0, -1.0, 1.0, 1.0))
    if area is None:
        return
    u, v = face.uv(area)
    y0, y1, x0, x1 = area.window
    grain = 0.015 if p.young else 0.03
    unevenness = 0.02 if p.young else 0.045
    roundness = 1 - 0.16 * (u**2 + 0.6 * v**2) ** 2
    texture = 1 + grain * noise.pores[y0:y1, x0:x1] + unevenness * noise.blotch[y0:y1, x0:x1]
    canvas.paint(area, face.head(u, v), _planar(skin) * (roundness * texture))
    for side in (-1, 1):
        cheek = canvas.area(face.box(side * 0.5 - 0.5, -0.2, side * 0.5 + 0.5, 0.65))
        if cheek is not None:
            blush = face.glow(*face.uv(cheek), side * 0.5, 0.22, 0.25, 0.18)
            canvas.shade(cheek, 1 + blush * _planar((0.03, -0.025, -0.015)))
    if not p.young:
        _draw_wrinkles(canvas, face, area)


def _draw_wrinkles(canvas: _Canvas, face: _Face, area: _Area) -> None:
    p = face.p
    u, v = face.uv(area)
    width = max(0.6, 0.004 * p.fw * face.size)
    lines = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
    span = _edge((0.5 - np.abs(u)) / face.px * 0.3)
    for k in range(3):
        lines = np.maximum(lines, span * face.stroke(v, p.hairline + 0.12 + 0.07 * k + 0.05 * u**2, width))
    for side in (-1, 1):  # nasolabial folds, from the nose wing to the mouth corner
        t = np.clip((v - p.eye_y - p.nose_len) / (p.mouth_y - p.eye_y - p.nose_len + 0.05), 0, 1)
        curve_u = side * (p.nose_w + 0.08 + (p.mouth_w - p.nose_w) * t)
        fold = _edge(width * 1.5 - np.abs(u - curve_u) / face.px) * np.sin(np.pi * t) ** 2
        lines = np.maximum(lines, fold)
        crow = face.stroke(v, p.eye_y + 0.9 * (u - side * (p.eye_sep + p.eye_w + 0.04)) * side, width)
        crow *= _edge((0.09 - np.abs(u - side * (p.eye_sep + p.eye_w + 0.08))) / face.px)
        lines = np.maximum(lines, crow)
    canvas.shade(area, 1 - 0.14 * lines)


def _draw_beard(canvas: _Canvas, face: _Face, noise: _Noise) -> None:
    area = canvas.area(face.box(-1.0, 0.0, 1.0, 1.05))
    if area is None:
        return
    p = face.p
    y0, y1, x0, x1 = area.window
    stubble = np.clip(0.5 + 0.5 * noise.pores[y0:y1, x0:x1], 0, 1)
    alpha = _beard_alpha(face, area) * (p.beard_density * (0.6 + 0.4 * stubble))
    colour = _planar(p.hair_colour) * (0.9 + 0.225 * noise.strands[y0:y1, x0:x1])
    canvas.paint(area, alpha, colour)


def _draw_nose(canvas: _Canvas, face: _Face) -> None:
    p = face.p
    area = canvas.area(face.box(-0.4, p.eye_y, 0.4, p.eye_y + p.nose_len + 0.3))
    if area is None:
        return
    u, v = face.uv(area)
    tip = p.eye_y + p.nose_len + 0.12
    bridge_t = np.clip((v - p.eye_y) / (tip - p.eye_y), 0, 1)
    shadow = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
    for side in (-1, 1):
        side_u = side * (0.07 + 0.5 * p.nose_w * bridge_t**2)
        shadow = np.maximum(shadow, np.exp(-(((u - side_u) / 0.045) ** 2)) * bridge_t * 0.6)
        shadow = np.maximum(shadow, face.ellipse(u, v, side * p.nose_w * 0.9, tip - 0.02, 0.07, 0.05) * 0.35)
    shadow = np.maximum(shadow, face.ellipse(u, v, 0, tip + 0.055, p.nose_w * 0.9, 0.035) * 0.45)
    canvas.shade(area, 1 - 0.22 * shadow)
    canvas.shade(area, 1 + 0.08 * face.glow(u, v, 0, tip - 0.04, p.nose_w * 0.45, 0.06))
    for side in (-1, 1):
        nostril = face.ellipse(u, v, side * p.nose_w * 0.42, tip + 0.02, p.nose_w * 0.3, 0.025)
        canvas.paint(area, nostril * 0.75, np.array(p.skin, np.float32) * 0.35)


def _draw_mouth(canvas: _Canvas, face: _Face) -> None:
    p = face.p
    area = canvas.area(face.box(-p.mouth_w - 0.1, p.mouth_y - 0.2, p.mouth_w + 0.1, p.mouth_y + 0.2))
    if area is None:
        return
    u, v = face.uv(area)
    t = np.clip(u / p.mouth_w, -1, 1)
    span = 1 - t**2
    lift = 0.09 if p.smiling else 0.01  # the corners rise when smiling
    line = p.mouth_y - lift * t**2 + (0.03 * span if p.smiling else 0)
    opening = (0.05 if p.smiling else 0.0) * span
    upper_top = line - p.lip_thick * span**0.6 * (1 - 0.35 * np.exp(-((u / 0.07) ** 2)))  # cupid's bow
    lower_bottom = line + opening + p.lip_thick * 1.25 * span**0.7
    inside = _edge((1 - np.abs(u) / p.mouth_w) / face.px * p.mouth_w)
    lips = face.between(v, upper_top, lower_bottom) * inside
    canvas.paint(area, lips, p.lip_colour)
    if p.smiling:
        mouth = face.between(v, line - 0.004, line + opening) * inside
        shade = 0.7 + 0.3 * _edge((v - line) * p.fh / p.fw / face.px * 0.5)
        teeth = _planar((0.93, 0.9, 0.84)) * shade
        canvas.paint(area, mouth, teeth)
    parting = face.stroke(v, line, max(0.6, 0.008 * p.fw * face.size)) * inside
    canvas.paint(area, parting, np.array(p.lip_colour, np.float32) * 0.45)
    highlight = face.ellipse(u, v, 0.0, line + opening + p.lip_thick * 0.6, p.mouth_w * 0.35, p.lip_thick * 0.3)
    canvas.shade(area, 1 + 0.08 * highlight)


def _draw_eyes(canvas: _Canvas, face: _Face) -> None:
    p = face.p
    for side in (-1, 1):
        cu = side * p.eye_sep
        area = canvas.area(face.box(cu - p.eye_w - 0.1, p.eye_y - 0.2, cu + p.eye_w + 0.1, p.eye_y + 0.15))
        if area is None:
            continue
        u, v = face.uv(area)
        canvas.shade(area, 1 - 0.1 * face.glow(u, v, cu, p.eye_y - 0.03, p.eye_w * 1.3, 0.11))
        t = np.clip((u - cu) / p.eye_w, -1, 1)
        span = 1 - t**2
        upper = p.eye_y - p.eye_h * span**0.8 + 0.015 * t * side
        lower = p.eye_y + p.eye_h * 0.65 * span
        inside = _edge((1 - np.abs(u - cu) / p.eye_w) * p.eye_w / face.px)
        eye = face.between(v, upper, lower) * inside
        canvas.paint(area, eye, (0.9, 0.88, 0.85))
        iris_u = cu + p.gaze * p.eye_w * 0.35
        iris = face.ellipse(u, v, iris_u, p.eye_y - 0.005, p.eye_w * 0.42, p.eye_w * 0.42 * p.fw / p.fh) * eye
        canvas.paint(area, iris, p.iris)
        pupil = face.ellipse(u, v, iris_u, p.eye_y - 0.005, p.eye_w * 0.18, p.eye_w * 0.18 * p.fw / p.fh) * eye
        canvas.paint(area, pupil, (0.03, 0.03, 0.03))
        glint = face.ellipse(u, v, iris_u + 0.03, p.eye_y - 0.025, 0.022, 0.016) * eye
        canvas.paint(area, glint * 0.8, (1.0, 1.0, 1.0))
        lash = face.stroke(v, upper, max(0.8, 0.014 * p.fw * face.size)) * inside
        canvas.paint(area, lash, (0.06, 0.05, 0.05))


def _draw_brows(canvas: _Canvas, face: _Face, noise: _Noise) -> None:
    p = face.p
    colour = 0.55 * np.array(p.hair_colour, np.float32) + 0.1 * np.array(p.skin, np.float32)
    for side in (-1, 1):
        cu = side * (p.eye_sep + 0.02)
        brow_v = p.eye_y - p.brow_gap
        area = canvas.area(face.box(cu - p.eye_w - 0.12, brow_v - 0.15, cu + p.eye_w + 0.12, brow_v + 0.1))
        if area is None:
            continue
        u, v = face.uv(area)
        t = np.clip((u - cu) / (p.eye_w * 1.25), -1, 1) * side  # -1 inner end, +1 tail
        base = p.eye_y - p.brow_gap - p.brow_arch * (1 - (t - 0.2) ** 2)
        thickness = p.brow_thick * (1 - 0.55 * np.clip(t, 0, 1))
        inside = _edge((1 - np.abs((u - cu) / (p.eye_w * 1.25))) * p.eye_w / face.px)
        alpha = face.between(v, base - thickness, base) * inside
        y0, y1, x0, x1 = area.window
        hairs = np.clip(0.75 + 0.35 * noise.pores[y0:y1, x0:x1], 0, 1)
        canvas.paint(area, alpha * hairs * 0.95, colour)


def _draw_glasses(canvas: _Canvas, face: _Face) -> None:
    p = face.p
    area = canvas.area(face.box(-1.05, p.eye_y - 0.25, 1.05, p.eye_y + 0.25))
    if area is None:
        return
    u, v = face.uv(area)
    lens = _lens_alpha(face, area)
    glare = np.clip(np.sin((u + v * 0.8) * 9.0), 0, 1) ** 8
    canvas.shade(area, 1 - 0.06 * lens)
    canvas.paint(area, 0.12 * lens * glare, (1.0, 1.0, 1.0))
    canvas.paint(area, _glasses_alpha(face, area), p.glasses_colour)


def _draw_light(canvas: _Canvas, face: _Face, noise: _Noise) -> None:
    area = canvas.area((0, 0, 1, 1))
    assert area is not None
    p = face.p
    gradient = 1 + 2 * ((area.x - 0.5) * p.light[0] + (area.y - 0.5) * p.light[1])
    y0, y1, x0, x1 = area.window
    pixels = canvas.view(area)
    pixels *= gradient
    pixels += np.float32(p.sensor_noise) * noise.sensor[:, y0:y1, x0:x1]


# --------------------------------------------------------------------------------------------- regions


def landmark(params: FaceParams, part: str) -> tuple[float, float, float, float]:
    """Where ``part`` sits and how big the face is around it: ``(x, y, scale_x, scale_y)``, image units.

    Mapping one face's landmark onto another's (centre on centre, scale by scale) aligns the part the
    way a face swap aligns landmarks: eyes land on eyes, brows on brows, and the part keeps its own shape.
    """
    p = params
    across = {"eye": p.eye_sep, "eyebrow": p.eye_sep + 0.02}.get(part, 1.0)
    v = {
        "nose": p.eye_y + 0.5 * p.nose_len + 0.1,
        "eye": p.eye_y,
        "eyebrow": p.eye_y - p.brow_gap,
        "lip": p.mouth_y,
    }.get(part, 0.0)
    return p.cx, p.cy + v * p.fh, across * p.fw, p.fh


@dataclass(frozen=True)
class Region:
    """A soft mask over a pixel window of the image: ``alpha`` has the window's shape."""

    window: Window
    alpha: np.ndarray

    def union(self, other: Region) -> Region:
        window = union_window(self.window, other.window)
        alpha = np.maximum(self._placed(window), other._placed(window))
        return Region(window, alpha)

    def minus(self, other: Region) -> Region:
        return Region(self.window, self.alpha * (1 - other._placed(self.window)))

    def feathered(self, sigma_px: float, size: int) -> Region:
        """A blending mask: fully on wherever the region is on at all, then falling off smoothly over
        about ``4 * sigma_px`` (a pixel that is partly the part is replaced whole, never half)."""
        grow = math.ceil(5 * sigma_px) + 1
        top, bottom, left, right = self.window
        window = (max(0, top - grow), min(size, bottom + grow), max(0, left - grow), min(size, right + grow))
        support = (self._placed(window) > 0).astype(np.float32)
        grown = (blur(support, sigma_px) > 0.1).astype(np.float32)  # about 1.3 sigma wider
        return Region(window, np.maximum(support, blur(grown, sigma_px)))

    def _placed(self, window: Window) -> np.ndarray:
        """``alpha`` on ``window`` (zero outside the own window)."""
        out = np.zeros((window[1] - window[0], window[3] - window[2]), np.float32)
        top = max(window[0], self.window[0])
        bottom = min(window[1], self.window[1])
        left = max(window[2], self.window[2])
        right = min(window[3], self.window[3])
        if top < bottom and left < right:
            out[top - window[0] : bottom - window[0], left - window[2] : right - window[2]] = self.alpha[
                top - self.window[0] : bottom - self.window[0], left - self.window[2] : right - self.window[2]
            ]
        return out


def union_window(a: Window, b: Window) -> Window:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def region(params: FaceParams, part: str, size: int) -> Region:
    """The soft mask of ``part`` (one of :data:`PARTS`) of the face, as drawn at ``size``.

    ``nose``, ``eye``, ``eyebrow`` and ``lip`` include some skin around the feature (what a face swap
    transplants); ``hair``, ``fringe``, ``beard`` and ``glasses`` follow the drawn element (the latter
    three whether or not the face has it); ``face`` is the face's outline, ears and hair aside;
    ``forehead`` and ``jaw`` are skin areas within it.
    """
    face = _Face(params, size)
    p = params
    image = full_window(size)

    def shape(box: tuple[float, float, float, float], alpha_of) -> Region:
        area = _area(size, face.box(*box), image)
        assert area is not None, f"{part} lies outside the image"
        return Region(area.window, alpha_of(area).astype(np.float32, copy=False) * np.ones((1, 1), np.float32))

    def ellipses(centres: list[tuple[float, float]], ru: float, rv: float) -> Region:
        us = [c[0] for c in centres]
        vs = [c[1] for c in centres]

        def alpha(area: _Area) -> np.ndarray:
            u, v = face.uv(area)
            return np.max([face.ellipse(u, v, cu, cv, ru, rv) for cu, cv in centres], axis=0)

        return shape((min(us) - ru, min(vs) - rv, max(us) + ru, max(vs) + rv), alpha)

    if part == "nose":
        return ellipses([(0.0, p.eye_y + 0.5 * p.nose_len + 0.1)], p.nose_w + 0.12, 0.5 * p.nose_len + 0.13)
    if part == "eye":
        return ellipses([(-p.eye_sep, p.eye_y), (p.eye_sep, p.eye_y)], p.eye_w * 1.35, p.eye_h * 2.4)
    if part == "eyebrow":
        centre_v = p.eye_y - p.brow_gap - p.brow_arch - 0.5 * p.brow_thick
        centres = [(-p.eye_sep - 0.02, centre_v), (p.eye_sep + 0.02, centre_v)]
        return ellipses(centres, p.eye_w * 1.45, p.brow_thick + 0.07)
    if part == "lip":
        return ellipses([(0.0, p.mouth_y + 0.02)], p.mouth_w + 0.1, p.lip_thick * 2.2 + 0.06)
    if part == "hair":
        return shape(_hair_box(p), lambda area: _hair_alpha(face, area))
    if part == "fringe":
        noise = _noise(p.seed, size)
        return shape((-1.05, -1.25, 1.05, p.eye_y), lambda area: _fringe_alpha(face, area, noise))
    if part == "beard":
        return shape((-1.0, 0.0, 1.0, 1.05), lambda area: _beard_alpha(face, area))
    if part == "glasses":
        box = (-1.05, p.eye_y - 0.25, 1.05, p.eye_y + 0.25)
        return shape(box, lambda area: np.maximum(_glasses_alpha(face, area), _lens_alpha(face, area)))
    if part == "forehead":
        top = p.hairline - 0.05

        def forehead(area: _Area) -> np.ndarray:
            u, v = face.uv(area)
            bottom = np.full_like(u, p.eye_y - p.brow_gap + 0.02)
            return face.between(v, np.full_like(u, top), bottom) * face.head(u, v)

        return shape((-1.0, top, 1.0, p.eye_y - p.brow_gap + 0.05), forehead)
    if part == "jaw":

        def jaw(area: _Area) -> np.ndarray:
            u, v = face.uv(area)
            return face.head(u, v) * _edge((v - p.mouth_y + 0.2) / face.px)

        return shape((-1.0, p.mouth_y - 0.25, 1.0, 1.0), jaw)
    if part == "face":
        return shape((-1.0, -1.0, 1.0, 1.0), lambda area: face.head(*face.uv(area)))
    raise ValueError(f"unknown face part {part!r}; expected one of {', '.join(PARTS)}")
