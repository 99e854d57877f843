"""Torch datasets over prepared splits: a packed uint8 image cache, batched reads, augmentation on device.

Decoding is the expensive part of reading this data (the attribute images are 1024x1024 PNGs), so each
image is decoded and resized once into a packed ``uint8`` array ``PREPARED/<subset>/cache/<split>-<size>.npy``
(memory-mapped, shared by every DataLoader worker and every epoch). A batch is then one fancy-indexed read.

Augmentation is drawn per image from ``(seed, epoch, index)`` so it does not depend on the worker count or
on how a distributed run shards the data, and it is applied on the device, batched:
horizontal flip and a brightness / contrast / saturation jitter, each factor drawn uniformly from its
range (the recipe's: :meth:`mlcdf.config.TrainConfig.jitter_ranges`); optionally (``Augment.perturb``) a
random :mod:`mlcdf.data.perturb` condition, on the CPU. There is deliberately no random
crop: a crop can cut the manipulated region out of the image and leave a wrong label behind.

The jitter follows torchvision's ``ColorJitter`` (which Seq-DeepFake's recipe uses) in its factors and
formulas, with two differences that keep it one batched pass: the three are applied in a fixed order
(brightness, contrast, saturation) where torchvision shuffles the order per image, and the image is
clamped to [0, 1] once at the end instead of after each of them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch

from mlcdf.data.images import load_rgb
from mlcdf.data.prepared import PreparedSubset, SplitTable
from mlcdf.errors import MlcdfError
from mlcdf.io import atomic_path, write_json
from mlcdf.progress import ProgressFn, silent

CACHE_FOLDER = "cache"
#: The key of a batch that stands for an image that could not be read (see :class:`MultiLabelImages`).
UNREADABLE = "unreadable"


def _fingerprint(table: SplitTable) -> str:
    digest = hashlib.sha1()
    for file_path in table.file_paths:
        digest.update(file_path.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def cache_path(prepared: PreparedSubset, split: str, size: int) -> Path:
    return prepared.path / CACHE_FOLDER / f"{split}-{size}.npy"


def _cache_is_current(path: Path, table: SplitTable, size: int) -> bool:
    """Whether ``path`` and its sidecar describe ``table`` at ``size``: anything else is rebuilt.

    The cache is our own derived file, so a damaged one (a sidecar that is not the JSON we write, a
    truncated ``.npy``, an array of another shape or type) is not an error: it is simply not current.
    """
    sidecar = path.with_suffix(".json")
    if not (path.is_file() and sidecar.is_file()):
        return False
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        # mmap checks that the file holds as many bytes as its header promises.
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return (
        isinstance(info, dict)
        and info.get("rows") == len(table)
        and info.get("size") == size
        and info.get("fingerprint") == _fingerprint(table)
        and images.dtype == np.uint8
        and images.shape == (len(table), size, size, 3)
    )


def build_image_cache(
    prepared: PreparedSubset,
    split: str,
    size: int,
    *,
    table: SplitTable | None = None,
    workers: int | None = None,
    progress: ProgressFn = silent,
    name: str | None = None,
) -> Path:
    """Decode and resize every image of ``split`` once into ``cache/<name or split>-<size>.npy``.

    An existing cache with the same rows (same file list, checked by a fingerprint), size, shape and
    type is reused; any other (stale, truncated, damaged) is rebuilt. Threads decode in parallel (Pillow
    releases the GIL while decoding and resizing).

    Raises:
        MlcdfError: an image cannot be read (prepare with ``--check-images decode`` finds these early),
            or the cache cannot be written.
    """
    table = table if table is not None else prepared.read_split(split)
    path = cache_path(prepared, name or split, size)
    if _cache_is_current(path, table, size):
        return path
    workers = workers or min(8, os.cpu_count() or 1)
    try:
        with atomic_path(path) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(table), size, size, 3))
            _decode_into(array, [prepared.image_path(p) for p in table.file_paths], size, workers, progress, f"Caching {split} at {size}px")
            array.flush()
            del array  # unmaps the file before it is renamed into place
        write_json(path.with_suffix(".json"), {"rows": len(table), "size": size, "fingerprint": _fingerprint(table)})
    except OSError as error:  # a read-only or full disk: the stale cache cannot be replaced
        raise MlcdfError(f"{path}: cannot write the image cache ({error.strerror or error})") from None
    return path


def _decode_into(array: np.ndarray, paths: list[Path], size: int, workers: int, progress: ProgressFn, description: str) -> None:
    """Decode ``paths[i]`` at ``size`` into ``array[i]``, ``workers`` threads at a time."""

    def decode(index: int) -> int:
        array[index] = read_image(paths[index], size)
        return index

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in progress(pool.map(decode, range(len(paths))), description, total=len(paths)):
            pass


def read_image(path: Path, size: int) -> np.ndarray:
    """A dataset image decoded at ``size`` x ``size``.

    Raises:
        MlcdfError: it cannot be read or decoded, naming the file.
    """
    try:
        return load_rgb(path, size)
    except OSError as error:
        raise MlcdfError(f"{path}: cannot decode ({error})") from None


class ImageSource(Protocol):
    """Reads batches of ``uint8`` (B, S, S, 3) images by row index."""

    def __len__(self) -> int: ...

    def read(self, indices: list[int]) -> np.ndarray: ...


class CachedSource:
    """Rows of a packed cache file, memory-mapped lazily (so that the object pickles cheaply to workers)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._array: np.ndarray | None = None

    def _images(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._array

    def __len__(self) -> int:
        return len(self._images())

    def read(self, indices: list[int]) -> np.ndarray:
        # Sorted reads walk the file forwards; then restore the requested order.
        order = np.argsort(indices)
        sorted_rows = np.asarray(indices)[order]
        batch = np.empty((len(indices), *self._images().shape[1:]), dtype=np.uint8)
        batch[order] = self._images()[sorted_rows]
        return batch

    def __getstate__(self) -> dict:
        return {"path": self.path, "_array": None}


class FileSource:
    """Decodes the original files every time (for small sets, predictions, and the cache benchmark)."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths = [Path(p) for p in paths]
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, indices: list[int]) -> np.ndarray:
        return np.stack([read_image(self.paths[i], self.size) for i in indices])


class RowSource:
    """The rows ``rows`` of another source (a held-out part of a cached split)."""

    def __init__(self, source: ImageSource, rows: np.ndarray) -> None:
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, indices: list[int]) -> np.ndarray:
        return self.source.read(self.rows[indices].tolist())


@dataclass(frozen=True)
class Augment:
    """Per-image augmentation. Flips and jitter are applied on the device by :func:`to_model_input`:
    ``brightness``, ``contrast`` and ``saturation`` are the (low, high) ranges their factors are drawn
    from, uniformly (``(1, 1)`` disables one); ``perturb`` is the probability of a random
    :mod:`mlcdf.data.perturb` condition, applied on the CPU (in the loader's workers) to the image as
    read, at the model's input size."""

    flip: bool = True
    brightness: tuple[float, float] = (0.9, 1.1)
    contrast: tuple[float, float] = (0.9, 1.1)
    saturation: tuple[float, float] = (0.9, 1.1)
    perturb: float = 0.0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} range must have 0 <= low <= high, got ({low}, {high})")


#: Salt of the perturbation draws, so that they are independent of the flip and jitter draws of the same key.
_PERTURB_STREAM = 1


class MultiLabelImages(torch.utils.data.Dataset):
    """Images and multi-hot targets, read a whole batch at a time.

    Keys are ``(epoch, index)`` pairs from :class:`EpochSampler`; ``__getitems__`` returns one collated
    batch dict with ``images`` (uint8, B x S x S x 3), ``targets`` (float32, B x C), ``indices`` (int64)
    and the augmentation parameters ``flip``, ``brightness``, ``contrast``, ``saturation`` (B,).

    A batch with an image that cannot be decoded is ``{UNREADABLE: message}`` instead, and
    :func:`to_model_input` raises it: returned rather than raised, because a DataLoader re-raises a
    worker's exception with the worker's traceback folded into its message, and the user's error would
    no longer be one line.
    """

    def __init__(self, source: ImageSource, targets: np.ndarray, *, augment: Augment | None = None, seed: int = 0) -> None:
        if len(source) != len(targets):
            raise ValueError(f"{len(source)} images but {len(targets)} targets")
        self.source = source
        self.targets = np.asarray(targets, dtype=np.float32)
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        return self.__getitems__([key])

    def __getitems__(self, keys: list[tuple[int, int]]) -> dict:
        indices = [int(index) for _, index in keys]
        try:
            images = self.source.read(indices)
        except MlcdfError as error:
            return {UNREADABLE: str(error)}
        if self.augment is not None and self.augment.perturb > 0:
            images = self._perturb(images, keys, self.augment.perturb)
        batch = {
            "images": torch.from_numpy(images),
            "targets": torch.from_numpy(self.targets[indices]),
            "indices": torch.tensor(indices, dtype=torch.int64),
        }
        batch.update(self._augment_params(keys))
        return batch

    def _perturb(self, images: np.ndarray, keys: list[tuple[int, int]], probability: float) -> np.ndarray:
        from PIL import Image

        from mlcdf.data.perturb import apply, draw_condition

        for row, (epoch, index) in enumerate(keys):
            seed = (self.seed, epoch, index, _PERTURB_STREAM)
            condition = draw_condition(seed, probability)
            if condition.level:
                images[row] = np.asarray(apply(Image.fromarray(images[row]), condition, seed), dtype=np.uint8)
        return images

    def _augment_params(self, keys: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        if self.augment is None:
            return no_augmentation(len(keys))
        draws = np.stack([np.random.default_rng((self.seed, epoch, index)).random(4) for epoch, index in keys])
        ranges = np.array([self.augment.brightness, self.augment.contrast, self.augment.saturation])  # (3, 2)
        factors = ranges[:, 0] + (ranges[:, 1] - ranges[:, 0]) * draws[:, 1:]
        return {
            "flip": torch.from_numpy((draws[:, 0] < 0.5) & self.augment.flip),
            "brightness": torch.from_numpy(factors[:, 0]).float(),
            "contrast": torch.from_numpy(factors[:, 1]).float(),
            "saturation": torch.from_numpy(factors[:, 2]).float(),
        }


def no_augmentation(count: int) -> dict[str, torch.Tensor]:
    """Augmentation parameters that leave ``count`` images unchanged."""
    return {
        "flip": torch.zeros(count, dtype=torch.bool),
        **{name: torch.ones(count) for name in ("brightness", "contrast", "saturation")},
    }


_Batch = TypeVar("_Batch")


def collate_batch(batch: _Batch) -> _Batch:
    """``collate_fn`` for :class:`MultiLabelImages`: ``__getitems__`` already returns a collated batch (a dict).

    Generic rather than ``dict -> dict``: the DataLoader's annotation says a collate function gets a list,
    which is what it gets from a dataset without ``__getitems__``; this one passes whatever it gets through.
    """
    return batch


_GRAY = (0.299, 0.587, 0.114)


@functools.lru_cache(maxsize=32)
def _channel_constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A (1, 3, 1, 1) float32 tensor on ``device``, made once rather than copied there every batch."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)


def to_model_input(
    batch: dict,
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    channels_last: bool = False,
) -> torch.Tensor:
    """Move a batch's uint8 images to ``device`` and augment and normalise them there.

    Returns float32 (B, 3, S, S). The uint8 NHWC tensor is permuted, not copied, so the result is in
    channels_last memory format already; ``channels_last=False`` makes it contiguous NCHW. ``mean`` and
    ``std`` hold one value per channel (R, G, B): a model's ``input_mean`` and ``input_std``.

    Raises:
        MlcdfError: the batch could not be read (see :class:`MultiLabelImages`), naming the image.
    """
    if UNREADABLE in batch:
        raise MlcdfError(batch[UNREADABLE])
    non_blocking = device.type == "cuda"
    images = batch["images"].to(device, non_blocking=non_blocking)
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    view = (-1, 1, 1, 1)
    # Which augmentations apply is decided on the CPU tensors: asking a device tensor would make the
    # host wait for the GPU on every batch.
    if bool(batch["flip"].any()):
        flip = batch["flip"].to(device, non_blocking=non_blocking)
        x = torch.where(flip.view(view), x.flip(3), x)
    jitter = ("brightness", "contrast", "saturation")
    if any(bool((batch[name] != 1).any()) for name in jitter):
        brightness, contrast, saturation = (batch[name].to(device, non_blocking=non_blocking).view(view) for name in jitter)
        gray_weights = _channel_constant(_GRAY, device)
        x = x * brightness
        gray_mean = (x * gray_weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = (x - gray_mean) * contrast + gray_mean
        gray = (x * gray_weights).sum(1, keepdim=True)
        x = ((x - gray) * saturation + gray).clamp_(0.0, 1.0)
    x = (x - _channel_constant(mean, device)) / _channel_constant(std, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=memory_format)


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` keys, shuffled per epoch and sharded across distributed ranks.

    Shuffling uses ``seed + epoch``, so every rank draws the same permutation and takes every
    ``world_size``-th item from it: the union of the ranks' batches is the single-process batch.
    Training pads the permutation to a multiple of ``world_size`` (as ``DistributedSampler`` does);
    evaluation (``pad=False``) does not, so no image is counted twice.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.world_size > 1 and order:
            total = math.ceil(self.size / self.world_size) * self.world_size
            order += order[: total - self.size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, index) for index in self._indices()])

    def __len__(self) -> int:
        # As many keys as _indices() yields, without drawing the permutation.
        padded = self.size
        if self.pad and self.world_size > 1:
            padded += min(math.ceil(self.size / self.world_size) * self.world_size - self.size, self.size)
        return len(range(self.rank, padded, self.world_size))


def holdout_rows(size: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (kept, held out) of a deterministic split of ``size`` rows for ``seed``.

    Used as the validation split when a release has none.
    """
    if not 0 < fraction < 1:
        raise MlcdfError(f"holdout fraction must be in (0, 1), got {fraction}")
    if size < 2:
        raise MlcdfError(f"cannot hold out a validation part of {size} training image(s)")
    order = np.random.default_rng(seed).permutation(size)
    held = min(size - 1, max(1, int(round(size * fraction))))
    return np.sort(order[held:]), np.sort(order[:held])
