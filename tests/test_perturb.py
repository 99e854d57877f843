"""Perturbations at every level against a direct computation with Pillow and numpy, and the spec parser."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from mlcdf.data import perturb
from mlcdf.data.perturb import CLEAN_CONDITION, LEVELS, Condition, apply, parse_spec
from mlcdf.errors import MlcdfError

LUMA = np.array([0.299, 0.587, 0.114])


def smooth_image(size: int = 32, seed: int = 0) -> Image.Image:
    """Colourful but smooth (a noise image would make blur and compression comparisons meaningless)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [128 + 100 * np.sin(2 * np.pi * (a * x + b * y) + c) for a, b, c in rng.uniform(0.5, 2, (3, 3))]
    return Image.fromarray(np.stack(channels, axis=-1).round().astype(np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


def condition(name: str, level: int) -> Condition:
    return Condition(name, level)


IMAGE = smooth_image()


def test_table_has_the_deeperforensics_parameters():
    """The five levels of each DeeperForensics distortion, as in the authors' get_distortion_parameter."""
    expected = {
        "saturation": (0.4, 0.3, 0.2, 0.1, 0.0),
        "contrast": (0.85, 0.725, 0.6, 0.475, 0.35),
        "block": (16, 32, 48, 64, 80),
        "noise": (0.001, 0.002, 0.005, 0.01, 0.05),
        "blur": (7, 9, 13, 17, 21),
        "resize": (2, 3, 4, 5, 6),
        "jpeg": (90, 70, 50, 30, 10),
        "webp": (90, 70, 50, 30, 10),
    }
    assert {name: p.parameters for name, p in perturb.PERTURBATIONS.items()} == expected


@pytest.mark.parametrize("level", LEVELS)
def test_saturation_blends_towards_luma(level):
    factor = perturb.PERTURBATIONS["saturation"].parameters[level - 1]
    x = pixels(IMAGE).astype(float)
    luma = (x @ LUMA)[..., None]
    expected = luma + factor * (x - luma)
    # Pillow rounds the luma to a whole grey level before blending: within 1.5 levels in all.
    assert np.abs(pixels(apply(IMAGE, condition("saturation", level))) - expected).max() <= 1.5


@pytest.mark.parametrize("level", LEVELS)
def test_contrast_multiplies_and_truncates(level):
    factor = perturb.PERTURBATIONS["contrast"].parameters[level - 1]
    # The reference's float32 product, truncated by its astype(uint8) (in float64, 0.35 * 180 is 62.99...).
    expected = (pixels(IMAGE).astype(np.float32) * np.float32(factor)).astype(np.int64)
    np.testing.assert_array_equal(pixels(apply(IMAGE, condition("contrast", level))), expected)


@pytest.mark.parametrize("level", LEVELS)
def test_block_paints_the_drawn_grey_blocks(level):
    count = perturb.PERTURBATIONS["block"].parameters[level - 1]
    blocks, width = perturb.block_layout(32, 32, count)
    assert (blocks, width) == (count, 1)  # 32 px: 8 * 32 / 256 = 1 px blocks
    rng = np.random.default_rng(7)
    expected = pixels(IMAGE).copy()
    # Corners from 0 to 32 - 1 - width inclusive, as the reference's random.randint(0, side - 1 - width).
    tops, lefts = rng.integers(0, 32 - width, size=blocks), rng.integers(0, 32 - width, size=blocks)
    for top, left in zip(tops, lefts):
        expected[top : top + width, left : left + width] = 128
    np.testing.assert_array_equal(pixels(apply(IMAGE, condition("block", level), seed=7)), expected)


def test_block_follows_the_reference_from_256_px():
    assert perturb.block_layout(256, 300, 16) == (16, 8)
    assert perturb.block_layout(1024, 1024, 80) == (320, 8)  # the reference's count * (min side // 256)
    assert perturb.block_layout(64, 64, 16) == (16, 2)


@pytest.mark.parametrize("level", LEVELS)
def test_noise_is_reproducible(level):
    got = apply(IMAGE, condition("noise", level), seed=(3, 4))
    np.testing.assert_array_equal(pixels(got), pixels(apply(IMAGE, condition("noise", level), seed=(3, 4))))
    assert not np.array_equal(pixels(got), pixels(apply(IMAGE, condition("noise", level), seed=(3, 5))))


@pytest.mark.parametrize("level", LEVELS[:4])  # level 5's noise is clipped at black and white
def test_noise_has_the_references_studio_range_strength(level):
    """On mid-grey, the luma of the change has the standard deviation 255 sqrt(v) * 255 / 219: the
    reference's noise of 255 sqrt(v) on a luma spanning 219 levels. (Pixel for pixel against the
    reference: tests/test_perturb_reference.py.)"""
    variance = perturb.PERTURBATIONS["noise"].parameters[level - 1]
    grey = Image.new("RGB", (128, 128), (128, 128, 128))
    change = pixels(apply(grey, condition("noise", level), seed=level)) - 128
    expected = 255 * math.sqrt(variance) * 255 / 219
    assert np.std(change @ LUMA) == pytest.approx(expected, rel=0.03)


def gaussian_blur_by_hand(x: np.ndarray, kernel: int) -> np.ndarray:
    """cv2.GaussianBlur((k, k), k / 6) written out: a separable, truncated kernel over a reflected border."""
    sigma = kernel / 6
    offsets = np.arange(kernel) - kernel // 2
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    weights /= weights.sum()
    pad = kernel // 2
    padded = np.pad(x.astype(float), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    rows = sum(w * padded[:, i : i + x.shape[1]] for i, w in enumerate(weights))
    return sum(w * rows[i : i + x.shape[0]] for i, w in enumerate(weights))


@pytest.mark.parametrize("level", LEVELS)
def test_blur_is_the_reference_gaussian(level):
    kernel = perturb.PERTURBATIONS["blur"].parameters[level - 1]
    expected = gaussian_blur_by_hand(pixels(IMAGE), kernel)
    got = pixels(apply(IMAGE, condition("blur", level)))
    # OpenCV's weights rounded to 8 bits, and one rounding at the end: within a grey level of the exact
    # kernel, border included (bit for bit against OpenCV: tests/test_perturb_reference.py).
    difference = np.abs(got - expected)
    assert difference.mean() < 0.4
    assert difference.max() < 1


def bilinear_by_hand(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's INTER_LINEAR written out in floats: output pixel i samples (i + 0.5) * scale - 0.5 between
    its two neighbours, the edge pixel outside the first and last centres; no smoothing; rounded."""

    def taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
        first = np.minimum(np.floor(position).astype(int), source - 1)
        return first, np.minimum(first + 1, source - 1), position - first

    left, right, a = taps(x.shape[1], width)
    top, bottom, b = taps(x.shape[0], height)
    rows = x[:, left] * (1 - a)[None, :, None] + x[:, right] * a[None, :, None]
    return np.floor(rows[top] * (1 - b)[:, None, None] + rows[bottom] * b[:, None, None] + 0.5)


@pytest.mark.parametrize("level", LEVELS)
def test_resize_shrinks_by_the_factor_and_back_without_smoothing(level):
    factor = perturb.PERTURBATIONS["resize"].parameters[level - 1]
    small = bilinear_by_hand(pixels(IMAGE).astype(float), 32 // factor, 32 // factor)
    expected = bilinear_by_hand(small, 32, 32)
    # OpenCV's 11-bit weights and its rounding, twice: within 2 grey levels of the exact arithmetic.
    assert np.abs(pixels(apply(IMAGE, condition("resize", level))) - expected).max() <= 2


@pytest.mark.parametrize("name,format", [("jpeg", "JPEG"), ("webp", "WEBP")])
@pytest.mark.parametrize("level", LEVELS)
def test_jpeg_and_webp_equal_pillows_encoding_at_the_quality(name, format, level):
    quality = (90, 70, 50, 30, 10)[level - 1]
    buffer = io.BytesIO()
    IMAGE.save(buffer, format=format, quality=quality)
    expected = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    np.testing.assert_array_equal(pixels(apply(IMAGE, condition(name, level))), pixels(expected))


def test_stronger_levels_change_the_image_more():
    for name in perturb.PERTURBATIONS:
        if name in ("webp",):  # WebP at 90 and 70 differ by a hair on a 32 px image; checked by value above
            continue
        changes = [np.abs(pixels(apply(IMAGE, condition(name, level), seed=1)) - pixels(IMAGE)).mean() for level in LEVELS]
        assert changes[0] > 0, name
        assert changes[-1] > changes[0], name


def test_level_zero_is_the_input():
    assert apply(IMAGE, CLEAN_CONDITION) is IMAGE
    assert str(CLEAN_CONDITION) == "clean"


def test_grey_and_rgba_inputs_come_out_rgb():
    for mode in ("L", "RGBA"):
        assert apply(IMAGE.convert(mode), condition("jpeg", 1)).mode == "RGB"


def test_spec_levels_type_and_all():
    assert parse_spec("jpeg:1,3,5") == [Condition("jpeg", 1), Condition("jpeg", 3), Condition("jpeg", 5)]
    assert parse_spec("blur") == [Condition("blur", level) for level in LEVELS]
    assert parse_spec(["jpeg:2", "jpeg:2+noise:1"]) == [Condition("jpeg", 2), Condition("noise", 1)]
    everything = parse_spec("all")
    assert len(everything) == 5 * len(perturb.PERTURBATIONS) == len(set(everything))
    assert perturb.describe(Condition("jpeg", 3)) == "jpeg:3 (JPEG quality 50)"


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("jpg", "unknown perturbation 'jpg'"),
        ("jpeg:90", "levels are whole numbers 1-5, not raw parameters"),
        ("jpeg:0", "levels are whole numbers 1-5"),
        ("blur:a", "level 'a'"),
        ("jpeg:", "level ''"),
        ("", "empty perturbation spec"),
        ("jpeg+", "empty perturbation spec"),
        ("all:1", "unknown perturbation 'all'"),
    ],
)
def test_bad_specs_say_what_is_valid(spec, fragment):
    with pytest.raises(MlcdfError) as caught:
        parse_spec(spec)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message
    if "unknown" in fragment or "empty" in fragment:
        assert all(name in message for name in perturb.PERTURBATIONS)


class ArraySource:
    """Rows of an in-memory uint8 array (an ImageSource)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def read(self, indices: list[int]) -> np.ndarray:
        return self.images[indices].copy()


def augmented(probability: float, keys: list[tuple[int, int]], seed: int = 5) -> np.ndarray:
    from mlcdf.data.dataset import Augment, MultiLabelImages

    images = np.stack([pixels(smooth_image(32, seed=i)).astype(np.uint8) for i in range(40)])
    dataset = MultiLabelImages(ArraySource(images), np.zeros((40, 2)), augment=Augment(perturb=probability), seed=seed)
    return dataset.__getitems__(keys)["images"].numpy()


def test_augment_perturb_is_drawn_per_seed_epoch_and_image():
    keys = [(epoch, index) for epoch in (0, 1) for index in range(40)]
    batch = augmented(1.0, keys)
    # A key's image is the same alone or in another batch: the draw depends on (seed, epoch, image) only.
    np.testing.assert_array_equal(augmented(1.0, [(1, 7)])[0], batch[keys.index((1, 7))])
    np.testing.assert_array_equal(augmented(1.0, [(1, 7), (0, 3)]), batch[[keys.index((1, 7)), keys.index((0, 3))]])
    # By hand: the condition and its own draws come from (seed, epoch, image, stream 1).
    for epoch, index in [(0, 3), (1, 3), (1, 30)]:
        seed = (5, epoch, index, 1)
        expected = apply(smooth_image(32, seed=index), perturb.draw_condition(seed), seed)
        np.testing.assert_array_equal(batch[keys.index((epoch, index))], pixels(expected))
    # Another epoch or seed draws other perturbations.
    assert not np.array_equal(batch[:40], batch[40:])
    assert not np.array_equal(augmented(1.0, keys[:40], seed=6), batch[:40])


def test_augment_perturb_probability():
    keys = [(0, index) for index in range(40)]
    clean = augmented(0.0, keys)
    changed = (augmented(0.5, keys) != clean).any(axis=(1, 2, 3))
    expected = [perturb.draw_condition((5, 0, index, 1), 0.5).level > 0 for index in range(40)]
    assert changed.tolist() == expected and 10 <= sum(expected) <= 30
    assert (augmented(1.0, keys) != clean).any(axis=(1, 2, 3)).sum() >= 35  # a level can leave a smooth image unchanged


def test_draw_condition_covers_every_type():
    drawn = {perturb.draw_condition((0, i)).name for i in range(400)}
    assert drawn == set(perturb.PERTURBATIONS)
    assert perturb.draw_condition((0, 1), 0.0) == CLEAN_CONDITION


def test_train_config_checks_augment_perturb():
    from mlcdf.config import TrainConfig

    assert TrainConfig(prepared="p", model="m", out="o", augment_perturb=0.3).resolve().augment_perturb == 0.3
    with pytest.raises(MlcdfError, match="augment_perturb must be a probability"):
        TrainConfig(prepared="p", model="m", out="o", augment_perturb=1.5).resolve()
