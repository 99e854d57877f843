"""Read and validate the Seq-DeepFake release exactly as it ships (DESIGN.md §2), and prepare it.

The release has ``<root>/<subset>/annotations/<split>.csv`` with a header row; the columns ``file_path``
(relative to ``<root>``) and ``label`` (a list text of 5 ids, e.g. ``"[1, 2, 4, 0, 0]"``) are looked up by
name and any other column is ignored. Images sit in a folder naming their sequence
(``nose-eyebrow-lip``) or ``original`` for real faces.

:func:`prepare` validates everything before it writes anything, so a bad row leaves no output behind.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from mlcdf import __version__
from mlcdf.config import default_alignment
from mlcdf.data.prepared import (
    CHECK_IMAGES,
    PREPARED_OUTPUT,
    SPLITS,
    SYNTH_JSON,
    AnnotatedSplit,
    SplitTable,
    check_image_path,
    check_images,
    write_prepared,
)
from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError
from mlcdf.io import check_output_apart, check_output_folder, check_replaceable, read_csv_rows
from mlcdf.labels import MAX_STEPS, REAL_FOLDER, ids_to_multihot, ids_to_sequence, parse_label_ids, sequence_to_ids, vocabulary
from mlcdf.progress import ProgressFn, silent

#: Rows per split in the official release (train, val, test), to flag partial downloads.
OFFICIAL_SPLIT_SIZES: dict[str, dict[str, int]] = {
    "facial_attributes": {"train": 41_600, "val": 4_160, "test": 4_160},
    "facial_components": {"train": 29_408, "val": 2_898, "test": 2_860},
}


def annotation_path(root: Path, subset: str, split: str) -> Path:
    return root / subset / "annotations" / f"{split}.csv"


def read_annotations(csv_path: str | Path, subset: str) -> AnnotatedSplit:
    """Read and validate one official annotation CSV.

    Raises:
        MissingArtifactError: the file does not exist.
        SchemaError: a required column is missing, or a row is invalid (bad label, empty path, a path
            leaving the root, duplicated path, sequence folder disagreeing with the ids), or the file is
            not UTF-8 CSV. The message names the line.
    """
    csv_path = Path(csv_path)
    vocab = vocabulary(subset)
    if not csv_path.is_file():
        raise MissingArtifactError(csv_path)
    file_paths: list[str] = []
    sequences: list[str] = []
    targets: list[np.ndarray] = []
    lines: list[int] = []
    first_line_of: dict[str, int] = {}
    records = read_csv_rows(csv_path, encoding="utf-8-sig")
    _, header = next(records, (1, None))
    if header is None:
        raise SchemaError(csv_path, "empty file, expected a header row with 'file_path' and 'label'", line=1)
    columns = [name.strip() for name in header]
    for required in ("file_path", "label"):
        if required not in columns:
            raise SchemaError(csv_path, f"no {required!r} column in the header {header}", line=1)
    path_col, label_col = columns.index("file_path"), columns.index("label")
    for line, record in records:
        if not any(cell.strip() for cell in record):
            continue
        if len(record) <= max(path_col, label_col):
            raise SchemaError(csv_path, f"{len(record)} columns, the header has {len(columns)}", line=line)
        file_path = record[path_col].strip()
        if not file_path:
            raise SchemaError(csv_path, "empty file_path", line=line)
        check_image_path(csv_path, line, file_path)
        if file_path in first_line_of:
            raise SchemaError(csv_path, f"file_path {file_path!r} repeats line {first_line_of[file_path]}", line=line)
        try:
            ids = parse_label_ids(record[label_col], len(vocab))
        except ValueError as error:
            raise SchemaError(csv_path, str(error), line=line) from None
        _check_sequence_folder(csv_path, line, file_path, ids, vocab)
        first_line_of[file_path] = line
        file_paths.append(file_path)
        sequences.append(ids_to_sequence(ids, vocab))
        targets.append(ids_to_multihot(ids, len(vocab)))
        lines.append(line)
    stacked = np.stack(targets) if targets else np.zeros((0, len(vocab)), dtype=np.uint8)
    return AnnotatedSplit(csv_path, SplitTable(file_paths, sequences, stacked), lines)


def _check_sequence_folder(csv_path: Path, line: int, file_path: str, ids: tuple[int, ...], vocab) -> None:
    """The image's folder names its sequence; it must agree with the label ids."""
    folder = PurePosixPath(file_path.replace("\\", "/")).parent.name
    if folder == REAL_FOLDER:
        if any(ids):
            raise SchemaError(csv_path, f"{file_path!r} is in '{REAL_FOLDER}/' but its label has manipulations {list(ids)}", line=line)
        return
    try:
        folder_ids = sequence_to_ids(folder, vocab)
    except ValueError as error:
        raise SchemaError(csv_path, f"sequence folder {folder!r} of {file_path!r}: {error}", line=line) from None
    if folder_ids != ids:
        raise SchemaError(
            csv_path,
            f"sequence folder {folder!r} means {list(folder_ids)} but the label is {list(ids)}",
            line=line,
        )


@dataclass(frozen=True)
class PrepareConfig:
    """Options of the prepare stage.

    Attributes:
        root: the dataset root holding ``<subset>/annotations`` and ``<subset>/images``.
        out: the prepared folder; each subset goes to ``out/<subset>``.
        subsets: subset names to prepare.
        splits: splits to read; absent ones are skipped with a note.
        check_images: ``"exists"`` (default) stats every image, ``"decode"`` also decodes it, ``"none"``
            trusts the CSV.
        skip_missing: drop rows whose image is missing (or, with ``decode``, unreadable) instead of failing.
        workers: threads for ``decode``.
        alignment: how the images were cut from their photos (``meta.json``'s ``alignment``); None: each
            subset's source's (FFHQ for ``facial_attributes``, CelebA-HQ for ``facial_components``), and
            ``none`` for a synthetic stand-in.
    """

    root: Path
    out: Path
    subsets: tuple[str, ...]
    splits: tuple[str, ...] = SPLITS
    check_images: str = "exists"
    skip_missing: bool = False
    workers: int = 8
    alignment: str | None = None


@dataclass
class SplitSummary:
    rows: int
    dropped_missing: int = 0
    dropped_unreadable: int = 0
    positives: dict[str, int] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)
    official_rows: int | None = None


@dataclass
class SubsetSummary:
    subset: str
    out: Path
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    skipped_splits: list[str] = field(default_factory=list)
    alignment: str = "none"


def prepare(config: PrepareConfig, progress: ProgressFn = silent) -> list[SubsetSummary]:
    """Validate the release for every subset and split in ``config``, then write the prepared folders.

    Nothing is written unless every requested subset validates.

    Raises:
        MlcdfError: a bad annotation row, a missing image (without ``skip_missing``), no split found, or
            an output folder that is inside the root, or not a previous prepared subset.
    """
    if config.check_images not in CHECK_IMAGES:
        raise MlcdfError(f"check_images must be one of {CHECK_IMAGES}, got {config.check_images!r}")
    unknown = [split for split in config.splits if split not in SPLITS]
    if unknown:
        raise MlcdfError(f"unknown split(s) {unknown}; expected some of {', '.join(SPLITS)}")
    root = config.root.resolve()
    check_output_folder(config.out)
    for subset in config.subsets:
        check_output_apart(config.out / subset, ("--root", config.root))
        check_replaceable(config.out / subset, **PREPARED_OUTPUT)
    staged: list[tuple[SubsetSummary, dict[str, SplitTable]]] = []
    for subset in config.subsets:
        summary = SubsetSummary(subset, config.out / subset)
        tables: dict[str, SplitTable] = {}
        # Synthetic stand-ins have their own sizes; only the release is compared with the official ones.
        synthetic = (root / subset / SYNTH_JSON).is_file()
        # The release's faces were aligned as their source dataset's; a stand-in's were drawn, not cut from photos.
        summary.alignment = config.alignment or ("none" if synthetic else default_alignment(subset))
        for split in config.splits:
            csv_path = annotation_path(root, subset, split)
            if not csv_path.is_file():
                summary.skipped_splits.append(split)
                continue
            annotated = read_annotations(csv_path, subset)
            table, split_summary = _check_images(annotated, root, config, progress, f"{subset}/{split}")
            split_summary.positives = dict(zip(vocabulary(subset), table.targets.sum(axis=0).tolist()))
            split_summary.steps = {k: int(v) for k, v in sorted(Counter(table.num_steps.tolist()).items())}
            split_summary.official_rows = None if synthetic else OFFICIAL_SPLIT_SIZES[subset][split]
            tables[split] = table
            summary.splits[split] = split_summary
        if not tables:
            raise MissingArtifactError(root / subset / "annotations", f"no {'/'.join(config.splits)} CSV found for subset {subset}")
        staged.append((summary, tables))
    for summary, tables in staged:
        _write_subset(summary, tables, root, config)
    return [summary for summary, _ in staged]


def _check_images(
    annotated: AnnotatedSplit, root: Path, config: PrepareConfig, progress: ProgressFn, name: str
) -> tuple[SplitTable, SplitSummary]:
    checked = check_images(
        annotated,
        root,
        mode=config.check_images,
        skip_missing=config.skip_missing,
        workers=config.workers,
        progress=progress,
        name=name,
    )
    summary = SplitSummary(rows=len(checked.table), dropped_missing=checked.missing, dropped_unreadable=checked.unreadable)
    return checked.table, summary


def _write_subset(summary: SubsetSummary, tables: dict[str, SplitTable], root: Path, config: PrepareConfig) -> None:
    labels = vocabulary(summary.subset)
    meta = {
        "subset": summary.subset,
        "labels": list(labels),
        "root": str(root),
        "splits": {split: len(table) for split, table in tables.items()},
        "max_steps": MAX_STEPS,
        "alignment": summary.alignment,
        "check_images": config.check_images,
        "dropped": {split: {"missing": s.dropped_missing, "unreadable": s.dropped_unreadable} for split, s in summary.splits.items()},
        "mlcdf_version": __version__,
    }
    write_prepared(summary.out, tables, labels, meta)
