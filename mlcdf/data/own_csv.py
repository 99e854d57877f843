"""Read a user's own multi-label image CSV (any vocabulary) and prepare it (DESIGN.md §7).

One header row, then one row per image:

- the image path, relative to the images root, in the column ``file_path`` (or ``path_column``);
- the labels, in one of two forms:
  (a) one column per label, valued ``0``/``1``, ``-1``/``1`` (CelebA's attribute files) or
  ``true``/``false``: every column other than the path, split and sequence columns, or those named by
  ``labels`` (in that order);
  (b) one ``labels`` column of the names present joined by ``|`` (empty: no manipulation); the
  vocabulary is ``labels`` when given, else the sorted union of the names in the file;
- optionally ``sequence``: the names in the order applied, joined by ``-`` (else the names present, in
  vocabulary order);
- optionally the split (``train``/``val``/``test``) in the ``split`` column (or ``split_column``);
  without it, ``split_ratios`` makes a multi-label stratified split (iterative stratification,
  Sechidis et al., ECML PKDD 2011, from the ``iterative-stratification`` package).

:func:`prepare_csv` validates everything before it writes anything, as the Seq-DeepFake reader does.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from mlcdf import __version__
from mlcdf.data.prepared import (
    CHECK_IMAGES,
    PREPARED_OUTPUT,
    SPLITS,
    AnnotatedSplit,
    SplitTable,
    check_image_path,
    check_images,
    write_prepared,
)
from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError
from mlcdf.io import check_folder_name, check_output_apart, check_output_folder, check_replaceable, read_csv_rows
from mlcdf.labels import SEQUENCE_SEPARATOR, SUBSETS
from mlcdf.progress import ProgressFn, silent

FORMAT = "csv"
DEFAULT_PATH_COLUMN = "file_path"
DEFAULT_SPLIT_COLUMN = "split"
LABELS_COLUMN = "labels"
SEQUENCE_COLUMN = "sequence"
#: Separator of the names in a form-(b) ``labels`` cell.
NAMES_SEPARATOR = "|"
#: Accepted cells of a form-(a) label column (compared lower-cased).
POSITIVE_VALUES = frozenset({"1", "true"})
NEGATIVE_VALUES = frozenset({"0", "-1", "false"})
#: The extra that brings the stratified split.
STRATIFY_EXTRA = "csv"


@dataclass(frozen=True)
class CsvPrepareConfig:
    """Options of ``mlcdf prepare --format csv``.

    Attributes:
        csv: the annotation file.
        root: the images root; paths in the CSV are relative to it.
        out: the prepared folder; the dataset goes to ``out/<name>``.
        name: the dataset's name (``meta.json``'s ``subset``); default the CSV's stem.
        path_column: the column holding image paths.
        labels: form (a): the label columns, in this order; form (b): the vocabulary, in this order.
        split_column: the column holding each row's split (``None``: ``split``, if the file has it).
        split_ratios: train, val and test fractions of a stratified split, when there is no split column.
        seed: seed of the stratified split.
        check_images, skip_missing, workers: as for the Seq-DeepFake reader.
        alignment: how the images were cut from their photos (``meta.json``'s ``alignment``): ``none``
            unless told (``ffhq``, ``celeba-hq``: aligned as those datasets were).
    """

    csv: Path
    root: Path
    out: Path
    name: str | None = None
    path_column: str = DEFAULT_PATH_COLUMN
    labels: tuple[str, ...] | None = None
    split_column: str | None = None
    split_ratios: tuple[float, float, float] | None = None
    seed: int = 0
    check_images: str = "exists"
    skip_missing: bool = False
    workers: int = 8
    alignment: str = "none"

    @property
    def dataset_name(self) -> str:
        return self.name or self.csv.stem


@dataclass
class CsvSummary:
    """What ``prepare_csv`` read and wrote.

    Attributes:
        labels: the vocabulary, in order.
        vocabulary_from_file: whether it is the sorted union of a form-(b) file (printed for the user).
        rows: rows written per split; positives: per split, positives per label.
        dropped_missing, dropped_unreadable: rows dropped by ``--skip-missing``.
        stratified: whether the split was made by ``split_ratios``.
    """

    name: str
    out: Path
    labels: tuple[str, ...]
    vocabulary_from_file: bool
    stratified: bool
    rows: dict[str, int] = field(default_factory=dict)
    positives: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped_missing: int = 0
    dropped_unreadable: int = 0


@dataclass(frozen=True)
class _Header:
    path: int
    split: int | None
    sequence: int | None
    labels_cell: int | None  # form (b)
    label_columns: tuple[int, ...]  # form (a)
    vocabulary: tuple[str, ...] | None  # known from the header or --labels; None: the union of form (b)


def parse_split_ratios(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> ``(0.8, 0.1, 0.1)``.

    Raises:
        ValueError: not three non-negative numbers summing to 1 with a positive train fraction.
    """
    try:
        ratios = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{text!r} is not three numbers such as 0.8,0.1,0.1") from None
    if len(ratios) != 3 or not all(math.isfinite(r) and r >= 0 for r in ratios):
        raise ValueError(f"{text!r}: expected three non-negative fractions (train, val, test) such as 0.8,0.1,0.1")
    if not math.isclose(sum(ratios), 1.0, abs_tol=1e-6) or ratios[0] == 0:
        raise ValueError(f"{text!r}: the fractions must sum to 1, with some for train")
    return ratios


def normalize_label_name(name: str) -> str:
    """A label name as it is compared and written: stripped, in Unicode NFC (``café`` typed either way is one label)."""
    return unicodedata.normalize("NFC", name.strip())


def _invisible(character: str) -> bool:
    """A character that shows as nothing or as blank space other than a plain space (zero-width, controls, other spaces)."""
    return character != " " and (unicodedata.category(character) in ("Cc", "Cf", "Co", "Cn", "Zl", "Zp", "Zs") or character.isspace())


def label_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a label (it becomes a column and a step of sequences), or ``None``.

    Invisible characters are refused: ``nose`` with a zero-width space inside would be a second label
    that prints as ``nose``.
    """
    if not name:
        return "an empty label name"
    hidden = next((character for character in name if _invisible(character)), None)
    if hidden is not None:
        return f"label name {name!r} holds the invisible character U+{ord(hidden):04X}; type the name without it"
    for separator, role in ((SEQUENCE_SEPARATOR, "steps of a sequence"), (NAMES_SEPARATOR, "names in a labels cell")):
        if separator in name:
            return f"label name {name!r} holds {separator!r}, which separates the {role}"
    if name in (DEFAULT_PATH_COLUMN, SEQUENCE_COLUMN):
        return f"label name {name!r} is a column of the prepared files; rename it"
    return None


def _check_label_name(path: Path, line: int, name: str) -> None:
    problem = label_name_problem(name)
    if problem is not None:
        raise SchemaError(path, problem, line=line)


def _read_header(path: Path, header: list[str], config: CsvPrepareConfig) -> _Header:
    columns = [normalize_label_name(name) for name in header]
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise SchemaError(path, f"column(s) {', '.join(map(repr, repeated))} appear more than once in the header", line=1)

    def find(name: str, what: str) -> int:
        name = normalize_label_name(name)
        if name not in columns:
            raise SchemaError(path, f"no {name!r} column ({what}) in the header {columns}", line=1)
        return columns.index(name)

    path_index = find(config.path_column, "image paths; --path-column names another")
    if config.split_column is not None:
        split_index: int | None = find(config.split_column, "--split-column")
    else:
        split_index = columns.index(DEFAULT_SPLIT_COLUMN) if DEFAULT_SPLIT_COLUMN in columns else None
    if split_index is not None and config.split_ratios is not None:
        raise SchemaError(path, f"the file has a split column {columns[split_index]!r} and --split-ratios was given; use one", line=1)
    if split_index is None and config.split_ratios is None:
        raise SchemaError(
            path,
            f"no {DEFAULT_SPLIT_COLUMN!r} column; add one (train/val/test), name it with --split-column, "
            "or give --split-ratios 0.8,0.1,0.1",
            line=1,
        )
    sequence_index = columns.index(SEQUENCE_COLUMN) if SEQUENCE_COLUMN in columns else None
    reserved = {path_index, split_index, sequence_index}
    given = None if config.labels is None else tuple(normalize_label_name(name) for name in config.labels)
    if given is not None:
        if len(set(given)) != len(given):
            raise MlcdfError(f"--labels names a label twice: {','.join(given)}")
        problems = [label_name_problem(name) for name in given]
        if any(problems):
            raise MlcdfError(f"--labels: {next(problem for problem in problems if problem)}")
    if LABELS_COLUMN in columns:
        return _Header(path_index, split_index, sequence_index, columns.index(LABELS_COLUMN), (), given)
    if given is not None:
        label_columns = tuple(find(name, "named by --labels") for name in given)
    else:
        label_columns = tuple(i for i in range(len(columns)) if i not in reserved)
    if not label_columns:
        raise SchemaError(
            path, f"no label columns: give one column per label, or a {LABELS_COLUMN!r} column of names joined by '|'", line=1
        )
    vocabulary = tuple(columns[i] for i in label_columns)
    for name in vocabulary:
        _check_label_name(path, 1, name)
    return _Header(path_index, split_index, sequence_index, None, label_columns, vocabulary)


@dataclass
class _Rows:
    file_paths: list[str] = field(default_factory=list)
    sequences: list[list[str]] = field(default_factory=list)  # given steps, or [] when no sequence column
    names: list[list[str]] = field(default_factory=list)  # the labels present
    splits: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


def normalize_image_path(file_path: str) -> str:
    """One spelling per image: ``./a.png`` and ``sub//a.png`` are ``a.png`` and ``sub/a.png`` (lexically, as
    :func:`~mlcdf.data.prepared.check_image_path` checks them), so one image cannot appear twice under two names."""
    return PurePosixPath(file_path).as_posix()


def _positive(path: Path, line: int, column: str, cell: str) -> bool:
    value = cell.strip().lower()
    if value in POSITIVE_VALUES:
        return True
    if value in NEGATIVE_VALUES:
        return False
    raise SchemaError(path, f"column {column!r}: {cell!r} is not one of 0/1, -1/1, true/false", line=line)


def _names_in_cell(path: Path, line: int, cell: str) -> list[str]:
    if not cell.strip():
        return []
    names = [normalize_label_name(name) for name in cell.split(NAMES_SEPARATOR)]
    if "" in names:
        raise SchemaError(path, f"labels {cell!r} has an empty name (names are joined by '|')", line=line)
    if len(set(names)) != len(names):
        raise SchemaError(path, f"labels {cell!r} names a label twice", line=line)
    return names


def _present_labels(path: Path, line: int, header: _Header, columns: list[str], record: list[str]) -> list[str]:
    """The labels a row says are present, checked against the vocabulary where it is known."""
    if header.labels_cell is None:
        return [columns[i] for i in header.label_columns if _positive(path, line, columns[i], record[i])]
    names = _names_in_cell(path, line, record[header.labels_cell])
    if header.vocabulary is None:
        for name in names:
            _check_label_name(path, line, name)
        return names
    unknown = [name for name in names if name not in header.vocabulary]
    if unknown:
        raise SchemaError(path, f"unknown label(s) {', '.join(map(repr, unknown))}; --labels has {', '.join(header.vocabulary)}", line=line)
    return names


def _given_sequence(path: Path, line: int, header: _Header, record: list[str], names: list[str]) -> list[str]:
    """The steps of a row's ``sequence`` cell (each present label once), or ``[]`` without the column."""
    if header.sequence is None:
        return []
    cell = record[header.sequence].strip()
    steps = [normalize_label_name(step) for step in cell.split(SEQUENCE_SEPARATOR)] if cell else []
    if sorted(steps) != sorted(names) or len(set(steps)) != len(steps):
        raise SchemaError(path, f"sequence {cell!r} does not name each present label once ({', '.join(names) or 'none'})", line=line)
    return steps


def _read_rows(path: Path, config: CsvPrepareConfig) -> tuple[_Header, _Rows]:
    records = read_csv_rows(path, encoding="utf-8-sig")
    _, header_record = next(records, (1, None))
    if header_record is None:
        raise SchemaError(path, f"empty file, expected a header row with {config.path_column!r}", line=1)
    header = _read_header(path, header_record, config)
    columns = [normalize_label_name(name) for name in header_record]
    rows = _Rows()
    first_line_of: dict[str, int] = {}
    for line, record in records:
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(columns):
            raise SchemaError(path, f"{len(record)} columns, the header has {len(columns)}", line=line)
        file_path = record[header.path].strip()
        if not file_path:
            raise SchemaError(path, f"empty {config.path_column}", line=line)
        check_image_path(path, line, file_path)
        given, file_path = file_path, normalize_image_path(file_path)
        if file_path in first_line_of:
            same = "" if given == file_path else f" (as {file_path!r})"
            raise SchemaError(path, f"{config.path_column} {given!r}{same} repeats line {first_line_of[file_path]}", line=line)
        names = _present_labels(path, line, header, columns, record)
        steps = _given_sequence(path, line, header, record, names)
        split = ""
        if header.split is not None:
            split = record[header.split].strip()
            if split not in SPLITS:
                raise SchemaError(path, f"split {split!r} is not one of {', '.join(SPLITS)}", line=line)
        first_line_of[file_path] = line
        rows.file_paths.append(file_path)
        rows.sequences.append(steps)
        rows.names.append(names)
        rows.splits.append(split)
        rows.lines.append(line)
    if not rows.file_paths:
        raise SchemaError(path, "no rows, only a header")
    return header, rows


def _table(rows: _Rows, vocabulary: tuple[str, ...]) -> SplitTable:
    index = {name: j for j, name in enumerate(vocabulary)}
    targets = np.zeros((len(rows.file_paths), len(vocabulary)), dtype=np.uint8)
    sequences = []
    for i, names in enumerate(rows.names):
        targets[i, [index[name] for name in names]] = 1
        steps = rows.sequences[i] or sorted(names, key=index.__getitem__)
        sequences.append(SEQUENCE_SEPARATOR.join(steps))
    return SplitTable(list(rows.file_paths), sequences, targets)


def stratified_split(targets: np.ndarray, ratios: tuple[float, float, float], seed: int) -> np.ndarray:
    """The split index (0 train, 1 val, 2 test) of every row, by iterative stratification.

    Each label's positives are shared among the splits in proportion to ``ratios`` as closely as the
    counts allow (Sechidis, Tsoumakas and Vlahavas, "On the Stratification of Multi-Label Data", ECML
    PKDD 2011), as ``iterstrat.ml_stratifiers.MultilabelStratifiedShuffleSplit`` does for two splits:
    rows are shuffled by ``seed`` first, so that ties are broken at random and reproducibly.

    Raises:
        MlcdfError: the ``iterative-stratification`` package is not installed.
    """
    try:
        from iterstrat.ml_stratifiers import IterativeStratification
    except ModuleNotFoundError:
        raise MlcdfError(f"--split-ratios needs the iterative-stratification package: pip install 'mlcdf[{STRATIFY_EXTRA}]'") from None
    rng = np.random.RandomState(seed)
    order = np.arange(len(targets))
    rng.shuffle(order)
    folds = IterativeStratification(labels=targets[order].astype(bool), r=np.asarray(ratios, dtype=float), random_state=rng)
    assigned = np.empty(len(targets), dtype=np.int64)
    assigned[order] = folds
    return assigned


def prepare_csv(config: CsvPrepareConfig, progress: ProgressFn = silent) -> CsvSummary:
    """Validate the CSV and its images, split it, then write ``out/<name>/{meta.json, <split>.csv}``.

    Raises:
        MlcdfError: a bad header or row (naming the file and line), a missing image (without
            ``skip_missing``), or an output folder inside the root or not a previous prepared folder.
    """
    if config.check_images not in CHECK_IMAGES:
        raise MlcdfError(f"check_images must be one of {CHECK_IMAGES}, got {config.check_images!r}")
    csv_path = config.csv
    if not csv_path.is_file():
        raise MissingArtifactError(csv_path, "the annotation CSV")
    check_output_folder(config.out)
    check_folder_name(config.dataset_name, "--name" if config.name is not None else "--name (the CSV's stem)")
    out = config.out / config.dataset_name
    check_output_apart(out, ("--root", config.root), ("--csv", csv_path))
    check_replaceable(out, **PREPARED_OUTPUT)
    header, rows = _read_rows(csv_path, config)
    vocabulary = header.vocabulary or tuple(sorted({name for names in rows.names for name in names}))
    if not vocabulary:
        raise SchemaError(csv_path, "no label is present in any row, so there is no vocabulary; give it with --labels")
    if config.dataset_name in SUBSETS and vocabulary != SUBSETS[config.dataset_name]:
        # The name is how report recognises a Seq-DeepFake subset and puts the paper's rows beside it.
        raise MlcdfError(
            f"--name {config.dataset_name} is the Seq-DeepFake subset whose labels are "
            f"{', '.join(SUBSETS[config.dataset_name])}, not {', '.join(vocabulary)}; choose another --name"
        )
    root = config.root.resolve()
    annotated = AnnotatedSplit(csv_path, _table(rows, vocabulary), rows.lines)
    checked = check_images(
        annotated,
        root,
        mode=config.check_images,
        skip_missing=config.skip_missing,
        workers=config.workers,
        progress=progress,
        name=csv_path.name,
    )
    table = checked.table
    if len(table) == 0:
        raise SchemaError(csv_path, "every row was dropped by --skip-missing; nothing to prepare")
    if config.split_ratios is not None:
        split_of = np.array(SPLITS)[stratified_split(table.targets, config.split_ratios, config.seed)]
    else:
        split_of = np.array(rows.splits)[checked.kept]
    tables = {split: table.subset(np.flatnonzero(split_of == split)) for split in SPLITS if (split_of == split).any()}
    summary = CsvSummary(
        name=config.dataset_name,
        out=out,
        labels=vocabulary,
        vocabulary_from_file=header.vocabulary is None,
        stratified=config.split_ratios is not None,
        rows={split: len(t) for split, t in tables.items()},
        positives={split: dict(zip(vocabulary, t.targets.sum(axis=0).tolist())) for split, t in tables.items()},
        dropped_missing=checked.missing,
        dropped_unreadable=checked.unreadable,
    )
    meta = {
        "subset": summary.name,
        "labels": list(vocabulary),
        "root": str(root),
        "splits": summary.rows,
        "format": FORMAT,
        "source": str(csv_path.resolve()),
        "split_by": (
            {"ratios": list(config.split_ratios), "seed": config.seed}
            if config.split_ratios is not None
            else {"column": config.split_column or DEFAULT_SPLIT_COLUMN}
        ),
        "alignment": config.alignment,
        "check_images": config.check_images,
        "dropped": {"missing": checked.missing, "unreadable": checked.unreadable},
        # Without a sequence column the sequences are the names in vocabulary order, not an order applied:
        # sequence models refuse such a dataset (mlcdf.tasks.SequenceTask).
        "ordered": header.sequence is not None,
        "mlcdf_version": __version__,
    }
    write_prepared(out, tables, vocabulary, meta)
    return summary
