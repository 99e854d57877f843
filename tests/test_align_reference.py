"""mlcdf.faces.align against transcriptions of the two references it follows.

``ffhq_reference`` transcribes ``recreate_aligned_images`` of NVlabs/ffhq-dataset ``download_ffhq.py``
(the body for one image, ``rotate_level=True``, ``random_shift=0``, ``enable_padding=True``);
``celebahq_reference`` transcribes ``process_func`` in ``create_celebahq`` of
tkarras/progressive_growing_of_gans ``dataset_tool.py`` up to the transform (the learned enhancement and
deltas after it restore quality, not geometry). Changes from the originals: the photo and landmarks are
arguments instead of files; 1024 and 4096 become ``output_size`` and ``4 * output_size``; Pillow's
``ANTIALIAS`` is its new name ``LANCZOS``; ``np.round`` as in the original. Both must give the same quad
and the same pixels as ours.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import scipy.ndimage

from mlcdf.faces.align import align_face, alignment_quad, to_crop_coordinates

# --------------------------------------------------------------------------------------------------
# Transcription of NVlabs/ffhq-dataset download_ffhq.py, recreate_aligned_images (one image).


def ffhq_quad(lm):
    lm_eye_left = lm[36:42]  # left-clockwise
    lm_eye_right = lm[42:48]  # left-clockwise
    lm_mouth_outer = lm[48:60]  # left-clockwise

    # Calculate auxiliary vectors.
    eye_left = np.mean(lm_eye_left, axis=0)
    eye_right = np.mean(lm_eye_right, axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_left = lm_mouth_outer[0]
    mouth_right = lm_mouth_outer[6]
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    # Choose oriented crop rectangle.
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c0 = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c0 - x - y, c0 - x + y, c0 + x + y, c0 + x - y])
    qsize = np.hypot(*x) * 2
    return quad, qsize


def ffhq_reference(img, lm, output_size):
    transform_size = 4 * output_size
    quad, qsize = ffhq_quad(lm)

    # Shrink.
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, PIL.Image.LANCZOS)
        quad /= shrink
        qsize /= shrink

    # Crop.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0), min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    # Pad.
    pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0), max(pad[2] - img.size[0] + border, 0), max(pad[3] - img.size[1] + border, 0))
    if max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = img.shape
        y, x, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(
            1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]),
            1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]),
        )
        blur = qsize * 0.02
        img += (scipy.ndimage.gaussian_filter(img, [blur, blur, 0]) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
        img = PIL.Image.fromarray(np.uint8(np.clip(np.rint(img), 0, 255)), "RGB")
        quad += pad[:2]

    # Transform.
    img = img.transform((transform_size, transform_size), PIL.Image.QUAD, (quad + 0.5).flatten(), PIL.Image.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), PIL.Image.LANCZOS)
    return img


# --------------------------------------------------------------------------------------------------
# Transcription of tkarras/progressive_growing_of_gans dataset_tool.py, create_celebahq, process_func.


def rot90(v):
    return np.array([-v[1], v[0]])


def celebahq_quad(lm, output_size):
    eye_avg = (lm[0] + lm[1]) * 0.5 + 0.5
    mouth_avg = (lm[3] + lm[4]) * 0.5 + 0.5
    eye_to_eye = lm[1] - lm[0]
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - rot90(eye_to_mouth)
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    zoom = output_size / (np.hypot(*x) * 2)
    return quad, zoom


def celebahq_reference(img, lm, output_size):
    quad, zoom = celebahq_quad(lm, output_size)

    # Shrink.
    shrink = int(np.floor(0.5 / zoom))
    if shrink > 1:
        size = (int(np.round(float(img.size[0]) / shrink)), int(np.round(float(img.size[1]) / shrink)))
        img = img.resize(size, PIL.Image.LANCZOS)
        quad /= shrink
        zoom *= shrink

    # Crop.
    border = max(int(np.round(output_size * 0.1 / zoom)), 3)
    crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0), min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    # Simulate super-resolution.
    superres = int(np.exp2(np.ceil(np.log2(zoom))))
    if superres > 1:
        img = img.resize((img.size[0] * superres, img.size[1] * superres), PIL.Image.LANCZOS)
        quad *= superres
        zoom /= superres

    # Pad.
    pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0), max(pad[2] - img.size[0] + border, 0), max(pad[3] - img.size[1] + border, 0))
    if max(pad) > border - 4:
        pad = np.maximum(pad, int(np.round(output_size * 0.3 / zoom)))
        img = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = img.shape
        y, x, _ = np.mgrid[:h, :w, :1]
        mask = 1.0 - np.minimum(
            np.minimum(np.float32(x) / pad[0], np.float32(y) / pad[1]),
            np.minimum(np.float32(w - 1 - x) / pad[2], np.float32(h - 1 - y) / pad[3]),
        )
        blur = output_size * 0.02 / zoom
        img += (scipy.ndimage.gaussian_filter(img, [blur, blur, 0]) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
        img = PIL.Image.fromarray(np.uint8(np.clip(np.round(img), 0, 255)), "RGB")
        quad += pad[0:2]

    # Transform.
    img = img.transform((4 * output_size, 4 * output_size), PIL.Image.QUAD, (quad + 0.5).flatten(), PIL.Image.BILINEAR)
    img = img.resize((output_size, output_size), PIL.Image.LANCZOS)
    return img


# --------------------------------------------------------------------------------------------------

#: Five landmarks (eye left, eye right, nose, mouth left, mouth right) of a face tilted by about 15 degrees.
TILTED = np.array([[201.7, 101.3], [246.2, 113.4], [221.0, 131.8], [195.5, 143.9], [233.8, 154.2]])
#: An upright face near the photo's top-left corner, so that the quad leaves the photo and padding is needed.
AT_CORNER = np.array([[14.0, 20.0], [44.0, 20.0], [29.0, 36.0], [18.0, 50.0], [40.0, 50.0]])
#: A large face (shrink > 1 at a 128 px output).
LARGE = TILTED * 3.0 - 200.0


def as_dlib68(five: np.ndarray) -> np.ndarray:
    """68 dlib-style points whose eye means and outer mouth corners (48, 54) are the five landmarks' own;
    the other points lie far away, so a reference that read them would disagree."""
    points = np.full((68, 2), 1e4)
    ring = np.array([[-3.0, 0.0], [-1.5, -1.2], [1.5, -1.2], [3.0, 0.0], [1.5, 1.2], [-1.5, 1.2]])  # mean 0
    points[36:42] = five[0] + ring
    points[42:48] = five[1] + ring
    points[48] = five[3]
    points[54] = five[4]
    return points


def photo(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    smooth = scipy.ndimage.gaussian_filter(rng.uniform(0, 255, (height, width, 3)), [3, 3, 0])
    return PIL.Image.fromarray(np.uint8(np.clip(smooth * 2 - 128, 0, 255)), "RGB")


@pytest.mark.parametrize("five", [TILTED, AT_CORNER, LARGE])
def test_quads_are_the_references(five):
    reference, reference_qsize = ffhq_quad(as_dlib68(five))
    quad, qsize = alignment_quad(five, "ffhq")
    np.testing.assert_allclose(quad, reference, rtol=0, atol=1e-9)
    assert qsize == pytest.approx(reference_qsize, abs=1e-9)
    reference, zoom = celebahq_quad(five, 1024)
    quad, qsize = alignment_quad(five, "celeba-hq")
    np.testing.assert_allclose(quad, reference, rtol=0, atol=1e-9)
    assert 1024 / qsize == pytest.approx(zoom, rel=1e-12)


def test_quad_known_values():
    # Eyes 40 px apart on a level line, mouth 40 px below their middle: x = (40, 0) - rot90((0, 40)) = (80, 0),
    # scaled to max(2 * 40, 1.8 * 40) = 80; y = (0, 80); centre = eye middle + 4 px down.
    five = np.array([[80.0, 100.0], [120.0, 100.0], [100.0, 120.0], [85.0, 140.0], [115.0, 140.0]])
    quad, qsize = alignment_quad(five, "ffhq")
    np.testing.assert_allclose(quad, [[20.0, 24.0], [20.0, 184.0], [180.0, 184.0], [180.0, 24.0]])
    assert qsize == 160.0
    quad, _ = alignment_quad(five, "celeba-hq")
    np.testing.assert_allclose(quad, [[20.5, 24.5], [20.5, 184.5], [180.5, 184.5], [180.5, 24.5]])


@pytest.mark.parametrize("five, size", [(TILTED, 64), (AT_CORNER, 64), (LARGE, 128)])
def test_ffhq_crop_is_the_references(five, size):
    image = photo(512, 480)
    ours = np.asarray(align_face(image, five, "ffhq", size))
    reference = np.asarray(ffhq_reference(image, as_dlib68(five), size))
    assert ours.shape == (size, size, 3)
    np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize("five, size", [(TILTED, 64), (AT_CORNER, 64), (LARGE, 128), (TILTED, 256)])
def test_celebahq_crop_is_the_references(five, size):
    # TILTED at 256 px is a face smaller than the output: CelebA-HQ's super-resolution step upsamples it.
    image = photo(512, 480, seed=1)
    ours = np.asarray(align_face(image, five, "celeba-hq", size))
    reference = np.asarray(celebahq_reference(image, five, size))
    np.testing.assert_array_equal(ours, reference)


def test_the_two_alignments_differ():
    image = photo(512, 480)
    ffhq = np.asarray(align_face(image, TILTED, "ffhq", 64), dtype=np.float64)
    celeba = np.asarray(align_face(image, TILTED, "celeba-hq", 64), dtype=np.float64)
    assert np.abs(ffhq - celeba).mean() > 1.0


def test_landmarks_land_where_the_quad_puts_them():
    five = np.array([[80.0, 100.0], [120.0, 100.0], [100.0, 120.0], [85.0, 140.0], [115.0, 140.0]])
    # The quad spans 160 px from (20, 24): a 64 px crop scales by 0.4.
    crop = to_crop_coordinates(five, five, "ffhq", 64)
    np.testing.assert_allclose(crop, (five - [20.0, 24.0]) * 0.4 - 0.5)
