"""The six DeeperForensics-1.0 perturbations against the reference's own formulas, run with OpenCV.

The reference is ``perturbation/distortions.py`` of github.com/EndlessSora/DeeperForensics-1.0 (MIT
licence), with the levels of ``get_distortion_parameter`` in ``perturbation/add_distortion_to_video.py``.
The functions below restate what it computes, in our words, with cv2 and numpy as it uses them; they
work on BGR frames as it does. OpenCV is a test-only dependency (the ``dev`` extra): the library does not
import it. Where the reference draws random numbers, the draws are ours, given to both.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from mlcdf.data import perturb
from mlcdf.data.perturb import Condition, apply, block_layout

cv2 = pytest.importorskip("cv2")


# --- the reference, restated -------------------------------------------------------------------------


def ref_to_ycbcr(bgr: np.ndarray) -> np.ndarray:
    """``bgr2ycbcr``: OpenCV's YCrCb of the float pixels, reordered to Y, Cb, Cr, scaled to the studio
    ranges (Y to [16, 235], chroma to [16, 240]) and divided by 255."""
    ycrcb = cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2YCrCb)
    ycbcr = ycrcb[:, :, (0, 2, 1)].astype(np.float32)
    ycbcr[:, :, 0] = (ycbcr[:, :, 0] * 219 + 16) / 255.0
    ycbcr[:, :, 1:] = (ycbcr[:, :, 1:] * 224 + 16) / 255.0
    return ycbcr


def ref_to_bgr(ycbcr: np.ndarray) -> np.ndarray:
    """``ycbcr2bgr``: the inverse of :func:`ref_to_ycbcr`, with OpenCV's inverse conversion."""
    ycbcr = ycbcr.astype(np.float32)
    ycbcr[:, :, 0] = (ycbcr[:, :, 0] * 255.0 - 16) / 219
    ycbcr[:, :, 1:] = (ycbcr[:, :, 1:] * 255.0 - 16) / 224
    return cv2.cvtColor(ycbcr[:, :, (0, 2, 1)].astype(np.float32), cv2.COLOR_YCrCb2BGR)


def ref_saturation(bgr: np.ndarray, factor: float) -> np.ndarray:
    ycbcr = ref_to_ycbcr(bgr)
    ycbcr[:, :, 1:] = 0.5 + (ycbcr[:, :, 1:] - 0.5) * factor
    return ref_to_bgr(ycbcr).astype(np.uint8)


def ref_contrast(bgr: np.ndarray, factor: float) -> np.ndarray:
    return (bgr.astype(np.float32) * factor).astype(np.uint8)


def ref_block(bgr: np.ndarray, count: int, corners: list[tuple[int, int]]) -> np.ndarray:
    """``block_wise`` with the corners (top, left) given instead of drawn."""
    out = bgr.copy()
    assert len(corners) == min(bgr.shape[:2]) // 256 * count
    for top, left in corners:
        out[top : top + 8, left : left + 8, :] = 128
    return out


def ref_noise(bgr: np.ndarray, variance: float, draws: np.ndarray) -> np.ndarray:
    """``gaussian_noise_color`` with standard normal ``draws`` (H x W x 3, in Y, Cb, Cr order) in place
    of ``np.random.randn``."""
    ycbcr = ref_to_ycbcr(bgr) / 255
    noisy = (ycbcr + math.sqrt(variance) * draws.astype(np.float64)) * 255
    return np.clip(ref_to_bgr(noisy), 0, 255).astype(np.uint8)


def ref_noise_drawn(bgr: np.ndarray, variance: float, seed: int) -> np.ndarray:
    """``gaussian_noise_color`` with its own draws (numpy's global generator)."""
    np.random.seed(seed)
    return ref_noise(bgr, variance, np.random.randn(*bgr.shape))


def ref_blur(bgr: np.ndarray, kernel: int) -> np.ndarray:
    return cv2.GaussianBlur(bgr, (kernel, kernel), kernel * 1.0 / 6)


def ref_resize(bgr: np.ndarray, factor: int) -> np.ndarray:
    """``jpeg_compression``: a bilinear shrink by ``factor`` and back, OpenCV's default interpolation."""
    height, width = bgr.shape[:2]
    small = cv2.resize(bgr, (width // factor, height // factor))
    return cv2.resize(small, (width, height))


# --- the images ----------------------------------------------------------------------------------------


def _face(size: int) -> np.ndarray:
    from mlcdf.data.synth_faces import ATTRIBUTES, render, sample_face, to_uint8

    rng = np.random.default_rng(1)
    pixels = to_uint8(render(sample_face(rng, {name: bool(rng.integers(2)) for name in ATTRIBUTES}), size))
    return pixels.transpose(1, 2, 0) if pixels.shape[0] == 3 else pixels


def _texture(height: int, width: int) -> np.ndarray:
    """Fine, colourful detail on an odd, non-square size: aliasing, borders and rounding show on it."""
    rng = np.random.default_rng(2)
    y, x = np.mgrid[0:height, 0:width] / 100
    wave = np.sin(7 * x * y + 3 * x)[..., None] * np.array([100, 70, -40])
    return np.clip(128 + wave + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    """RGB images: a synthetic face (256 px), a texture of 301 x 517, and a small one of 37 x 53."""
    return {"face256": _face(256), "texture": _texture(301, 517), "small": _texture(37, 53)}


def _ours(rgb: np.ndarray, name: str, level: int, seed: int = 0) -> np.ndarray:
    return np.asarray(apply(Image.fromarray(rgb), Condition(name, level), seed))


def _theirs(rgb: np.ndarray, function: Callable[..., np.ndarray], *args: object) -> np.ndarray:
    return np.ascontiguousarray(function(np.ascontiguousarray(rgb[:, :, ::-1]), *args)[:, :, ::-1])


def _parameter(name: str, level: int) -> float:
    return perturb.PERTURBATIONS[name].parameters[level - 1]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _assert_close(ours: np.ndarray, theirs: np.ndarray, *, differing: float, what: str) -> None:
    """At most a fraction ``differing`` of the values differ, each by at most 1 grey level."""
    difference = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    assert ours.shape == theirs.shape, what
    assert difference.max() <= 1, f"{what}: {difference.max()} levels apart, PSNR {_psnr(ours, theirs):.1f} dB"
    assert difference.astype(bool).mean() <= differing, f"{what}: {difference.astype(bool).mean():.2%} differ"


# --- the tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", perturb.LEVELS)
def test_saturation_is_the_reference(images: dict[str, np.ndarray], level: int) -> None:
    for label, rgb in images.items():
        theirs = _theirs(rgb, ref_saturation, _parameter("saturation", level))
        # Float rounding may put a value a hair either side of a whole level.
        _assert_close(_ours(rgb, "saturation", level), theirs, differing=1e-4, what=f"{label} saturation:{level}")


@pytest.mark.parametrize("level", perturb.LEVELS)
def test_contrast_is_the_reference(images: dict[str, np.ndarray], level: int) -> None:
    for label, rgb in images.items():
        theirs = _theirs(rgb, ref_contrast, _parameter("contrast", level))
        assert np.array_equal(_ours(rgb, "contrast", level), theirs), f"{label} contrast:{level}"


@pytest.mark.parametrize("level", perturb.LEVELS)
def test_blur_is_the_reference_bit_for_bit(images: dict[str, np.ndarray], level: int) -> None:
    for label, rgb in images.items():
        theirs = _theirs(rgb, ref_blur, int(_parameter("blur", level)))
        assert np.array_equal(_ours(rgb, "blur", level), theirs), f"{label} blur:{level}"


@pytest.mark.parametrize("level", perturb.LEVELS)
def test_resize_is_the_references_bilinear_shrink_and_enlargement(images: dict[str, np.ndarray], level: int) -> None:
    for label, rgb in images.items():
        theirs = _theirs(rgb, ref_resize, int(_parameter("resize", level)))
        # OpenCV rounds the last values of a row (those filling no whole vector) its scalar way.
        _assert_close(_ours(rgb, "resize", level), theirs, differing=0.05, what=f"{label} resize:{level}")


@pytest.mark.parametrize("level", perturb.LEVELS)
def test_noise_is_the_reference_given_the_same_draws(images: dict[str, np.ndarray], level: int) -> None:
    for seed, (label, rgb) in enumerate(images.items()):
        # Our draws: the seed's generator, standard normals in Y, Cb, Cr order, one per component.
        draws = np.random.default_rng(seed).standard_normal(rgb.shape, dtype=np.float32)
        theirs = _theirs(rgb, ref_noise, _parameter("noise", level), draws)
        _assert_close(_ours(rgb, "noise", level, seed), theirs, differing=1e-3, what=f"{label} noise:{level}")


@pytest.mark.parametrize("level", perturb.LEVELS)
def test_noise_is_as_strong_as_the_references_own(images: dict[str, np.ndarray], level: int) -> None:
    """Independently of how the draws are made: the noise's standard deviation within 2 % of the
    reference's with its own generator, over the 256 px face (about 200,000 values)."""
    rgb = images["face256"]
    clean = rgb.astype(np.float64)
    ours = _ours(rgb, "noise", level, seed=7).astype(np.float64) - clean
    theirs = _theirs(rgb, ref_noise_drawn, _parameter("noise", level), 7).astype(np.float64) - clean
    assert np.std(ours) / np.std(theirs) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("level", perturb.LEVELS)
def test_block_is_the_reference_at_our_corners(level: int) -> None:
    rgb = _texture(300, 520)  # 256 px and more: the reference's rule, 1 x the level's count
    count = int(_parameter("block", level))
    blocks, width = block_layout(520, 300, count)
    assert (blocks, width) == (count, 8)
    rng = np.random.default_rng(3)
    tops = rng.integers(0, 300 - 8, size=blocks)
    lefts = rng.integers(0, 520 - 8, size=blocks)
    theirs = _theirs(rgb, ref_block, count, [(int(t), int(left)) for t, left in zip(tops, lefts)])
    assert np.array_equal(_ours(rgb, "block", level, seed=3), theirs)


def test_block_corners_cover_the_references_range_and_no_more() -> None:
    """The reference draws corners from 0 to side - 9 inclusive: the last row and column are never grey,
    the ones before them are, on some seed."""
    black = np.zeros((256, 264, 3), dtype=np.uint8)
    grey = np.zeros((256, 264), dtype=bool)
    for seed in range(100):
        grey |= _ours(black, "block", 5, seed)[:, :, 0] == 128
    assert grey[0, :].any() and grey[:, 0].any()
    assert grey[-2, :].any() and grey[:, -2].any()
    assert not grey[-1, :].any() and not grey[:, -1].any()


def test_the_library_does_not_import_opencv():
    """OpenCV is for these tests only: applying every perturbation loads no cv2."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from PIL import Image\n"
        "from mlcdf.data.perturb import all_conditions, apply\n"
        "image = Image.fromarray(np.zeros((40, 30, 3), dtype=np.uint8))\n"
        "for condition in all_conditions():\n"
        "    apply(image, condition)\n"
        "assert 'cv2' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
