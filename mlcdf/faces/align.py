"""Face crops aligned as FFHQ and CelebA-HQ were made: five landmarks -> an oriented square -> the crop.

Seq-DeepFake's images are aligned face crops: ``facial_attributes`` from FFHQ, ``facial_components``
from CelebA-HQ. Both datasets were cut from their photos by one recipe of Karras et al., written here
from its published formulas (no code copied; ``tests/test_align_reference.py`` transcribes both
references and checks this module against them):

- FFHQ: ``recreate_aligned_images`` in ``download_ffhq.py`` of github.com/NVlabs/ffhq-dataset, on dlib's
  68 landmarks (an eye's centre is the mean of its six points; the mouth corners are points 48 and 54).
- CelebA-HQ: ``create_celebahq`` in ``dataset_tool.py`` of github.com/tkarras/progressive_growing_of_gans,
  on CelebA's five landmarks, taken at pixel centres (``+ 0.5``); small faces are upsampled by a power of
  two before the transform ("simulate super-resolution"). Its later steps (the learned enhancement and
  the published per-image deltas) restore image quality, not geometry, and are not reproduced.

The recipe, with ``rot90(v) = (-v_y, v_x)``::

    eye_avg = (eye_l + eye_r) / 2,  mouth_avg = (mouth_l + mouth_r) / 2
    eye_to_eye = eye_r - eye_l,     eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - rot90(eye_to_mouth), scaled to length max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)
    y = rot90(x),  c = eye_avg + 0.1 eye_to_mouth
    quad = (c - x - y, c - x + y, c + x + y, c + x - y)   # top-left, bottom-left, bottom-right, top-right
    qsize = 2 |x|

then: shrink the photo by ``floor(qsize / size / 2)`` when that is over 1; crop to the quad plus a
border of ``max(rint(0.1 qsize), 3)``; where the quad still leaves the photo, reflect-pad by at least
``rint(0.3 qsize)``, blur the padding (sigma ``0.02 qsize``) and fade it to the median colour; map the quad
onto a square of ``4 x size`` (bilinear) and reduce it to ``size`` (Lanczos). The references make
1024 px crops; ``size`` here is the model's input size, so the crop is what the model sees.

Landmarks are five (x, y) points in pixels, in MTCNN's and CelebA's order: the eye on the image's left,
the other eye, the nose tip, the mouth corner on the image's left, the other corner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mlcdf.errors import MlcdfError

#: The alignments a crop can be made with (``none``, the third name a run may record, makes no crop).
FACE_ALIGNMENTS = ("ffhq", "celeba-hq")
#: Faces whose quad is smaller than this many pixels have no usable geometry (the padding maths divides by it).
MIN_QUAD_SIZE = 8.0
#: The references map the quad onto a square this many times the output size, then reduce (supersampling).
SUPERSAMPLING = 4


@dataclass(frozen=True)
class _Recipe:
    #: Added to the eye and mouth centres: CelebA's landmarks are pixel indices, taken at pixel centres.
    landmark_offset: float
    #: Upsample a face smaller than the output by a power of two before the transform (CelebA-HQ).
    superres: bool


_RECIPES = {"ffhq": _Recipe(landmark_offset=0.0, superres=False), "celeba-hq": _Recipe(landmark_offset=0.5, superres=True)}


def _recipe(alignment: str) -> _Recipe:
    if alignment not in _RECIPES:
        raise MlcdfError(f"unknown face alignment {alignment!r}; expected one of {', '.join(FACE_ALIGNMENTS)}")
    return _RECIPES[alignment]


def _rot90(v: np.ndarray) -> np.ndarray:
    return np.array([-v[1], v[0]])


def alignment_quad(landmarks: np.ndarray, alignment: str) -> tuple[np.ndarray, float]:
    """The oriented square a face is cut along: its corners (4, 2) (top-left, bottom-left, bottom-right,
    top-right, in the photo's pixels) and its side ``qsize``.

    Raises:
        MlcdfError: an unknown alignment.
        ValueError: landmarks that are not five finite points, or that give no square (coincident points).
    """
    recipe = _recipe(alignment)
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise ValueError(f"expected five finite (x, y) landmarks, got an array of shape {points.shape}")
    eye_left, eye_right, _, mouth_left, mouth_right = points
    eye_avg = (eye_left + eye_right) * 0.5 + recipe.landmark_offset
    mouth_avg = (mouth_left + mouth_right) * 0.5 + recipe.landmark_offset
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - _rot90(eye_to_mouth)
    length = np.hypot(*x)
    if length == 0:
        raise ValueError("the landmarks coincide: no face orientation")
    x = x / length * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = _rot90(x)
    centre = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])
    return quad, float(np.hypot(*x) * 2)


def _bounds(quad: np.ndarray) -> tuple[int, int, int, int]:
    return (
        int(np.floor(quad[:, 0].min())),
        int(np.floor(quad[:, 1].min())),
        int(np.ceil(quad[:, 0].max())),
        int(np.ceil(quad[:, 1].max())),
    )


def _pad_reflected(image: Image.Image, pad: tuple[int, int, int, int], qsize: float) -> Image.Image:
    """Reflect-pad by ``pad`` (left, top, right, bottom), blurring the padding and fading it to the median
    colour the further it lies from the photo, so that the edge of the photo does not show in the crop."""
    from scipy.ndimage import gaussian_filter

    left, top, right, bottom = pad
    pixels = np.pad(np.asarray(image, dtype=np.float32), ((top, bottom), (left, right), (0, 0)), "reflect")
    height, width, _ = pixels.shape
    rows, cols, _ = np.ogrid[:height, :width, :1]
    # 0 inside the photo, rising to 1 at the outer edge of the padding.
    mask = np.maximum(
        1.0 - np.minimum(np.float32(cols) / left, np.float32(width - 1 - cols) / right),
        1.0 - np.minimum(np.float32(rows) / top, np.float32(height - 1 - rows) / bottom),
    )
    blur = qsize * 0.02
    pixels += (gaussian_filter(pixels, [blur, blur, 0]) - pixels) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    pixels += (np.median(pixels, axis=(0, 1)) - pixels) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(pixels), 0, 255)), "RGB")


def align_face(image: Image.Image, landmarks: np.ndarray, alignment: str, size: int) -> Image.Image:
    """The ``size`` x ``size`` RGB crop of the face with ``landmarks`` in ``image``, made as ``alignment``'s dataset was.

    Memory stays bounded whatever the photo's size: a large face is shrunk first (to at most about
    4 x ``size``), and only the quad's surroundings are padded and transformed.

    Raises:
        MlcdfError: an unknown alignment.
        ValueError: landmarks that give no square, or a face under :data:`MIN_QUAD_SIZE` pixels.
    """
    recipe = _recipe(alignment)
    quad, qsize = alignment_quad(landmarks, alignment)
    if qsize < MIN_QUAD_SIZE:
        raise ValueError(f"the face spans {qsize:.1f} px, under the {MIN_QUAD_SIZE:g} px an alignment needs")
    image = image.convert("RGB") if image.mode != "RGB" else image

    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        reduced = (max(1, int(np.rint(image.size[0] / shrink))), max(1, int(np.rint(image.size[1] / shrink))))
        image = image.resize(reduced, Image.Resampling.LANCZOS)
        quad, qsize = quad / shrink, qsize / shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    left, top, right, bottom = _bounds(quad)
    crop = (max(left - border, 0), max(top - border, 0), min(right + border, image.size[0]), min(bottom + border, image.size[1]))
    if crop[2] <= crop[0] or crop[3] <= crop[1]:
        raise ValueError("the face lies outside the image")
    if crop[2] - crop[0] < image.size[0] or crop[3] - crop[1] < image.size[1]:
        image = image.crop(crop)
        quad = quad - crop[0:2]

    if recipe.superres:
        superres = int(np.exp2(np.ceil(np.log2(size / qsize))))
        if superres > 1:
            image = image.resize((image.size[0] * superres, image.size[1] * superres), Image.Resampling.LANCZOS)
            quad, qsize = quad * superres, qsize * superres

    left, top, right, bottom = _bounds(quad)
    pad = (max(-left + border, 0), max(-top + border, 0), max(right - image.size[0] + border, 0), max(bottom - image.size[1] + border, 0))
    if max(pad) > border - 4:
        least = int(np.rint(qsize * 0.3))
        padding = (max(pad[0], least), max(pad[1], least), max(pad[2], least), max(pad[3], least))
        image = _pad_reflected(image, padding, qsize)
        quad = quad + padding[0:2]

    transform_size = SUPERSAMPLING * size
    image = image.transform(
        (transform_size, transform_size), Image.Transform.QUAD, tuple((quad + 0.5).flatten().tolist()), Image.Resampling.BILINEAR
    )
    return image.resize((size, size), Image.Resampling.LANCZOS)


def to_crop_coordinates(points: np.ndarray, landmarks: np.ndarray, alignment: str, size: int) -> np.ndarray:
    """Where ``points`` (N, 2) of the photo land in the ``size`` px crop that :func:`align_face` makes
    from ``landmarks``: the quad's corners go to the crop's, and the map between is affine."""
    quad, _ = alignment_quad(landmarks, alignment)
    # Crop pixel (u, v) samples the photo at quad[0] + (u + 0.5) / size * (quad[3] - quad[0]) + (v + 0.5) / size * (quad[1] - quad[0]).
    axes = np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1)
    fractions = np.linalg.solve(axes, (np.asarray(points, dtype=np.float64) - quad[0]).T).T
    return fractions * size - 0.5
