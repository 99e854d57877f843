"""The prepared-subset contract (DESIGN.md §3), read and written in one place.

``PREPARED/<subset>/`` holds ``meta.json`` and one CSV per split with the columns ``file_path``,
``sequence`` (step names joined by ``-`` in the order applied, empty for real images), then one 0/1
column per label, named as the vocabulary and in vocabulary order. Every later stage reads it through
:func:`load_prepared`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlcdf.errors import MissingArtifactError, SchemaError
from mlcdf.io import atomic_open, read_json_object
from mlcdf.labels import SEQUENCE_SEPARATOR, SUBSETS

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
#: What ``mlcdf synth`` writes in ``ROOT/<subset>`` to say how a synthetic stand-in was made; its
#: presence tells the release apart from a stand-in.
SYNTH_JSON = "synth.json"


@dataclass(frozen=True)
class SplitTable:
    """One split: image paths (relative to the dataset root), sequences and multi-hot targets.

    Attributes:
        file_paths: paths as in the official CSV, relative to the dataset root.
        sequences: step names joined by ``-`` in the order applied; ``""`` for real images.
        targets: ``uint8`` array of shape (n_images, n_labels).
    """

    file_paths: list[str]
    sequences: list[str]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.file_paths)

    @property
    def num_steps(self) -> np.ndarray:
        """Number of manipulation steps per image (0 for real images)."""
        return np.array([len(s.split(SEQUENCE_SEPARATOR)) if s else 0 for s in self.sequences], dtype=np.int64)

    def subset(self, indices: np.ndarray) -> "SplitTable":
        """The rows at ``indices``, in that order."""
        return SplitTable(
            [self.file_paths[i] for i in indices], [self.sequences[i] for i in indices], self.targets[indices]
        )


@dataclass(frozen=True)
class PreparedSubset:
    """A prepared subset folder, as described by its ``meta.json``."""

    path: Path
    subset: str
    labels: tuple[str, ...]
    root: Path
    splits: dict[str, int]
    meta: dict = field(default_factory=dict, repr=False)

    def split_path(self, split: str) -> Path:
        return self.path / f"{split}.csv"

    def has_split(self, split: str) -> bool:
        return split in self.splits and self.split_path(split).is_file()

    def read_split(self, split: str) -> SplitTable:
        """Read and check ``<split>.csv``.

        Raises:
            MissingArtifactError: the split was not prepared.
            SchemaError: the file does not follow the contract.
        """
        if not self.has_split(split):
            available = ", ".join(s for s in SPLITS if self.has_split(s)) or "none"
            raise MissingArtifactError(self.split_path(split), f"prepared splits: {available}")
        return read_split_csv(self.split_path(split), self.labels)

    def image_path(self, file_path: str) -> Path:
        return self.root / file_path


def write_split_csv(path: str | Path, table: SplitTable, labels: tuple[str, ...]) -> None:
    """Write a prepared split CSV atomically."""
    with atomic_open(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file_path", "sequence", *labels])
        for file_path, sequence, row in zip(table.file_paths, table.sequences, table.targets.tolist()):
            writer.writerow([file_path, sequence, *row])


def read_split_csv(path: str | Path, labels: tuple[str, ...]) -> SplitTable:
    """Read a prepared split CSV and check its header against ``labels``."""
    path = Path(path)
    expected = ["file_path", "sequence", *labels]
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != expected:
            raise SchemaError(path, f"header is {header}, expected {expected}", line=1)
        file_paths: list[str] = []
        sequences: list[str] = []
        rows: list[list[int]] = []
        for line, record in enumerate(reader, start=2):
            if len(record) != len(expected):
                raise SchemaError(path, f"{len(record)} columns, expected {len(expected)}", line=line)
            values = record[2:]
            if any(value not in ("0", "1") for value in values):
                raise SchemaError(path, f"label columns must be 0 or 1, got {values}", line=line)
            file_paths.append(record[0])
            sequences.append(record[1])
            rows.append([int(value) for value in values])
    targets = np.array(rows, dtype=np.uint8).reshape(len(rows), len(labels))
    return SplitTable(file_paths, sequences, targets)


def load_prepared(path: str | Path) -> PreparedSubset:
    """Open a prepared subset folder (``PREPARED/<subset>``).

    Raises:
        MissingArtifactError: there is no ``meta.json`` (the folder was not prepared).
        SchemaError: ``meta.json`` lacks a required key.
    """
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        hint = "run 'mlcdf prepare' first"
        if path.is_dir() and any((path / name / META_FILE).is_file() for name in SUBSETS):
            hint = "point at PREPARED/<subset>, not PREPARED"
        raise MissingArtifactError(meta_path, hint)
    meta = read_json_object(meta_path)
    for key in ("subset", "labels", "root", "splits"):
        if key not in meta:
            raise SchemaError(meta_path, f"missing key {key!r}")
    return PreparedSubset(
        path=path,
        subset=meta["subset"],
        labels=tuple(meta["labels"]),
        root=Path(meta["root"]),
        splits={str(k): int(v) for k, v in meta["splits"].items()},
        meta=meta,
    )
