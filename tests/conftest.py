"""Shared fixtures: no network, and tiny official-format Seq-DeepFake trees written by the tests themselves."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlcdf.labels import SUBSETS, format_label_ids


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt of a test to reach the network (a download, a DNS lookup) fails at once.

    CI has no network, so a test that needed it would hang or fail there; this makes it fail here too.
    Subprocesses (the torchrun test) are not affected.
    """

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def one_thread():
    """PyTorch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Tiny models on a shared, busy CPU run many times faster on one thread than with threads that contend.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> Path:
    """A run trained for one epoch on a toy subset, once per session, for the commands that read a run
    (predict, explain, export). Tests read it and must not write into it."""
    from toy import write_toy_prepared

    from mlcdf.config import TrainConfig
    from mlcdf.train.stage import train

    folder = tmp_path_factory.mktemp("toy_run")
    prepared = write_toy_prepared(folder, {"train": 24, "val": 8})
    out = folder / "run"
    train(
        TrainConfig(
            prepared=str(prepared),
            model="timm:test_resnet",
            out=str(out),
            epochs=1,
            batch_size=8,
            image_size=32,
            workers=0,
            device="cpu",
            patience=0,
        )
    )
    return out


def write_image(path: Path, size: int = 16, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def sequence_rows(subset: str, split: str, ext: str) -> list[tuple[str, str]]:
    """One real image and one image per sequence length 1..5, with the release's path layout."""
    vocab = SUBSETS[subset]
    rows = [(f"{subset}/images/{split}/original/000000.{ext}", format_label_ids([]))]
    orders = [(1,), (2, 1), (3, 5, 1), (4, 2, 3, 1), (5, 4, 3, 2, 1)]
    for index, ids in enumerate(orders, start=1):
        folder = "-".join(vocab[i - 1] for i in ids)
        rows.append((f"{subset}/images/{split}/{folder}/{index:06d}.{ext}", format_label_ids(ids)))
    return rows


def write_release(
    root: Path,
    rows: dict[tuple[str, str], list[tuple[str, str]]],
    *,
    index_column: bool = True,
    images: bool = True,
) -> Path:
    """Write annotation CSVs (with the release's unnamed index column) and the images they name."""
    for (subset, split), split_rows in rows.items():
        csv_path = root / subset / "annotations" / f"{split}.csv"
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as handle:
            writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL)
            writer.writerow(([""] if index_column else []) + ["file_path", "label"])
            for index, (file_path, label) in enumerate(split_rows):
                writer.writerow(([index] if index_column else []) + [file_path, label])
                if images:
                    write_image(root / file_path, seed=index)
    return root


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """Both subsets, train/val/test, .png components and .jpg attributes."""
    rows = {}
    for subset, ext in (("facial_components", "png"), ("facial_attributes", "jpg")):
        for split in ("train", "val", "test"):
            rows[(subset, split)] = sequence_rows(subset, split, ext)
    return write_release(tmp_path / "release", rows)
