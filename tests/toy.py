"""A tiny, easily learnable prepared subset: label j draws a bright square in cell j of the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mlcdf.data.prepared import META_FILE, SplitTable, write_split_csv
from mlcdf.io import write_json
from mlcdf.labels import SUBSETS

LABELS = SUBSETS["facial_components"]


def toy_image(target: np.ndarray, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    cell = size // 4
    for j in np.flatnonzero(target):
        row, col = divmod(int(j), 3)
        image[row * 2 * cell : row * 2 * cell + cell, col * cell : col * cell + cell] = (240, 200, 40)
    return image


def write_toy_prepared(folder: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """Write ``folder/facial_components`` (prepared contract + images under ``folder/root``)."""
    rng = np.random.default_rng(seed)
    root = folder / "root"
    prepared = folder / "prepared" / "facial_components"
    prepared.mkdir(parents=True)
    for split, count in sizes.items():
        targets = (rng.random((count, len(LABELS))) < 0.4).astype(np.uint8)
        targets[0] = 0
        paths, sequences = [], []
        for index, target in enumerate(targets):
            sequence = "-".join(LABELS[j] for j in np.flatnonzero(target))
            file_path = f"facial_components/images/{split}/{sequence or 'original'}/{index:06d}.png"
            (root / file_path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(toy_image(target, rng)).save(root / file_path)
            paths.append(file_path)
            sequences.append(sequence)
        write_split_csv(prepared / f"{split}.csv", SplitTable(paths, sequences, targets), LABELS)
    write_json(
        prepared / META_FILE,
        {"subset": "facial_components", "labels": list(LABELS), "root": str(root.resolve()), "splits": sizes, "alignment": "none"},
    )
    return prepared
