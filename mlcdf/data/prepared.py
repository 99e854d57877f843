"""The prepared-subset contract (DESIGN.md §3), read and written in one place.

``PREPARED/<subset>/`` holds ``meta.json`` and one CSV per split with the columns ``file_path``,
``sequence`` (step names joined by ``-`` in the order applied, empty for real images), then one 0/1
column per label, named as the vocabulary and in vocabulary order. ``meta.json`` also records
``alignment``: how the images were cut from their photos (``none``, ``ffhq``, ``celeba-hq``). Every
later stage reads it through :func:`load_prepared`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TypedDict

import numpy as np

from mlcdf.config import ALIGNMENTS, default_alignment
from mlcdf.data.images import verify_image
from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError
from mlcdf.io import atomic_dir, atomic_open, read_csv_rows, read_json_object, recover_dir, write_json
from mlcdf.labels import SEQUENCE_SEPARATOR
from mlcdf.progress import ProgressFn, silent

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
#: What ``mlcdf synth`` writes in ``ROOT/<subset>`` to say how a synthetic stand-in was made; its
#: presence tells the release apart from a stand-in.
SYNTH_JSON = "synth.json"
#: Keys every ``meta.json`` has; a folder whose ``meta.json`` has them is a prepared subset.
META_KEYS = ("subset", "labels", "root", "splits")
#: What ``--check-images`` accepts, for every reader.
CHECK_IMAGES = ("none", "exists", "decode")


def check_image_path(csv_path: Path, line: int, file_path: str) -> None:
    """An image path read from a CSV must stay inside the dataset root: relative, without a ``..`` part.

    The check is lexical (the path is not resolved), so a symlink the dataset's owner placed inside the
    root is followed, while no text in a CSV can reach a file outside it.

    Raises:
        SchemaError: naming the CSV file and line.
    """
    posix = file_path.replace("\\", "/")
    if posix.startswith("/") or re.match(r"[A-Za-z]:", posix):
        problem = "is absolute"
    elif ".." in PurePosixPath(posix).parts:
        problem = "has a '..' part"
    elif not PurePosixPath(posix).parts:
        problem = "names no file"
    else:
        return
    raise SchemaError(
        csv_path, f"file_path {file_path!r} {problem}; image paths must be relative to the dataset root and stay inside it", line=line
    )


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

    def subset(self, indices: np.ndarray) -> SplitTable:
        """The rows at ``indices``, in that order."""
        return SplitTable([self.file_paths[i] for i in indices], [self.sequences[i] for i in indices], self.targets[indices])


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

    @property
    def alignment(self) -> str:
        """How the images were cut from their photos (:data:`mlcdf.config.ALIGNMENTS`): ``meta.json``'s
        ``alignment``, or for a folder prepared before the field, its subset's default."""
        return str(self.meta.get("alignment", default_alignment(self.subset)))


def write_split_csv(path: str | Path, table: SplitTable, labels: tuple[str, ...]) -> None:
    """Write a prepared split CSV atomically."""
    with atomic_open(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file_path", "sequence", *labels])
        for file_path, sequence, row in zip(table.file_paths, table.sequences, table.targets.tolist()):
            writer.writerow([file_path, sequence, *row])


def read_split_csv(path: str | Path, labels: tuple[str, ...]) -> SplitTable:
    """Read a prepared split CSV and check its header against ``labels``.

    Raises:
        SchemaError: a header other than the contract's, no rows, a bad row, an image path leaving the
            dataset root, or bytes that are not UTF-8 CSV; naming the line.
    """
    path = Path(path)
    expected = ["file_path", "sequence", *labels]
    records = read_csv_rows(path)
    _, header = next(records, (1, None))
    if header != expected:
        raise SchemaError(path, f"header is {header}, expected {expected}", line=1)
    file_paths: list[str] = []
    sequences: list[str] = []
    rows: list[list[int]] = []
    for line, record in records:
        if len(record) != len(expected):
            raise SchemaError(path, f"{len(record)} columns, expected {len(expected)}", line=line)
        values = record[2:]
        if any(value not in ("0", "1") for value in values):
            raise SchemaError(path, f"label columns must be 0 or 1, got {values}", line=line)
        check_image_path(path, line, record[0])
        file_paths.append(record[0])
        sequences.append(record[1])
        rows.append([int(value) for value in values])
    if not rows:
        raise SchemaError(path, "no rows, only a header; prepare the split from a non-empty annotation CSV")
    targets = np.array(rows, dtype=np.uint8).reshape(len(rows), len(labels))
    return SplitTable(file_paths, sequences, targets)


@dataclass(frozen=True)
class AnnotatedSplit:
    """Rows a reader validated: the prepared table plus the CSV line of every row (for messages)."""

    csv_path: Path
    table: SplitTable
    lines: list[int]


@dataclass(frozen=True)
class CheckedImages:
    """The rows whose image passed ``--check-images``, and how many were dropped (with ``--skip-missing``).

    Attributes:
        table: the rows kept.
        kept: their indices in the table checked.
        missing, unreadable: rows dropped because the image is absent, or does not decode.
    """

    table: SplitTable
    kept: np.ndarray
    missing: int = 0
    unreadable: int = 0


def check_images(
    annotated: AnnotatedSplit,
    root: Path,
    *,
    mode: str,
    skip_missing: bool,
    workers: int,
    progress: ProgressFn = silent,
    name: str = "",
) -> CheckedImages:
    """Check the image of every row of ``annotated`` under ``root``: ``exists``, ``decode`` or ``none``.

    Raises:
        SchemaError: an image is missing or unreadable and ``skip_missing`` is off, naming the CSV line of
            the first such row.
    """
    table = annotated.table
    everything = np.arange(len(table), dtype=np.int64)
    if mode == "none" or len(table) == 0:
        return CheckedImages(table, everything)
    paths = [os.path.join(root, file_path) for file_path in table.file_paths]
    missing = [i for i, path in enumerate(paths) if not os.path.isfile(path)]
    unreadable: list[tuple[int, str]] = []
    if mode == "decode":
        missing_set = set(missing)
        todo = [i for i in range(len(paths)) if i not in missing_set]
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            reasons = pool.map(lambda i: verify_image(paths[i]), todo, chunksize=64)
            for i, reason in zip(todo, progress(reasons, f"Decoding {name}", total=len(todo))):
                if reason is not None:
                    unreadable.append((i, reason))
    if (missing or unreadable) and not skip_missing:
        first_missing = missing[0] if missing else None
        first_bad = unreadable[0] if unreadable else None
        if first_missing is not None and (first_bad is None or first_missing < first_bad[0]):
            index, problem = first_missing, f"image {table.file_paths[first_missing]} is missing"
        else:
            assert first_bad is not None, "some image is missing or unreadable, and it is not a missing one"
            index, problem = first_bad[0], f"image {table.file_paths[first_bad[0]]} is unreadable ({first_bad[1]})"
        others = len(missing) + len(unreadable) - 1
        more = f" (and {others} more)" if others else ""
        raise SchemaError(annotated.csv_path, f"{problem}{more}; use --skip-missing to drop such rows", line=annotated.lines[index])
    drop = set(missing) | {i for i, _ in unreadable}
    if not drop:
        return CheckedImages(table, everything)
    kept = np.array([i for i in range(len(table)) if i not in drop], dtype=np.int64)
    return CheckedImages(table.subset(kept), kept, len(missing), len(unreadable))


def is_prepared_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a prepared subset (a ``meta.json`` object with the contract's keys)."""
    try:
        meta = read_json_object(Path(path) / META_FILE)
    except (OSError, UnicodeDecodeError, SchemaError):
        return False
    return all(key in meta for key in META_KEYS)


class OutputOwner(TypedDict):
    """Which command writes an output, and how to recognise its earlier output: the keyword arguments of
    :func:`~mlcdf.io.check_replaceable`, :func:`~mlcdf.io.check_file_replaceable` and :func:`~mlcdf.io.atomic_dir`."""

    command: str
    is_own: Callable[[Path], bool]


#: A prepared folder is replaced only when it is a previous prepared folder.
PREPARED_OUTPUT: OutputOwner = {"command": "mlcdf prepare", "is_own": is_prepared_folder}


def write_prepared(out: Path, tables: dict[str, SplitTable], labels: tuple[str, ...], meta: dict) -> None:
    """Write ``out/{<split>.csv, meta.json}`` atomically: all of it, or nothing.

    ``meta`` is written as given; it must hold :data:`META_KEYS`.
    """
    with atomic_dir(out, **PREPARED_OUTPUT) as staging:
        for split, table in tables.items():
            write_split_csv(staging / f"{split}.csv", table, labels)
        write_json(staging / META_FILE, meta)


def load_prepared(path: str | Path) -> PreparedSubset:
    """Open a prepared subset folder (``PREPARED/<subset>``).

    Raises:
        MissingArtifactError: there is no ``meta.json`` (the folder was not prepared).
        SchemaError: ``meta.json`` lacks a required key or holds a value of the wrong type.
    """
    path = Path(path)
    recover_dir(path)
    meta_path = path / META_FILE
    if os.path.lexists(path) and not path.is_dir():
        raise MlcdfError(f"{path}: is a file, not a prepared folder (a folder with meta.json and the splits' CSVs, from 'mlcdf prepare')")
    if not meta_path.is_file():
        if not path.is_dir():
            raise MissingArtifactError(meta_path, "run 'mlcdf prepare' first")
        if any((child / META_FILE).is_file() for child in path.iterdir() if child.is_dir()):
            raise MlcdfError(f"{path}: not a prepared folder but a folder of them; point at PREPARED/<subset>, not PREPARED")
        raise MissingArtifactError(path, "run 'mlcdf prepare' first", what=f"not a prepared folder, it has no {META_FILE}")
    meta = read_json_object(meta_path)
    for key in META_KEYS:
        if key not in meta:
            raise SchemaError(meta_path, f"missing key {key!r}")

    def wrong(key: str, expected: str) -> SchemaError:
        return SchemaError(meta_path, f"{key!r} must be {expected}, got {meta[key]!r}")

    if not isinstance(meta["subset"], str) or not meta["subset"]:
        raise wrong("subset", "a name")
    labels = meta["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(name, str) and name for name in labels):
        raise wrong("labels", "a non-empty list of label names")
    if len(set(labels)) != len(labels):
        raise wrong("labels", "a list of distinct names")
    if not isinstance(meta["root"], str) or not meta["root"]:
        raise wrong("root", "a folder path")
    if "alignment" in meta and meta["alignment"] not in ALIGNMENTS:
        raise wrong("alignment", f"one of {', '.join(ALIGNMENTS)}")
    splits = meta["splits"]
    if not isinstance(splits, dict) or not all(
        isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in splits.values()
    ):
        raise wrong("splits", "an object of row counts per split")
    return PreparedSubset(
        path=path,
        subset=meta["subset"],
        labels=tuple(labels),
        root=Path(meta["root"]),
        splits=dict(splits),
        meta=meta,
    )
