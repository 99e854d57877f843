"""``mlcdf prepare``: read the Seq-DeepFake release and write the prepared contract."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mlcdf.cli._console import err, matrix_table, out, rich_progress, warn
from mlcdf.cli._options import MaxPixelsOpt, QuietOpt, Subset, SubsetOpt
from mlcdf.data.prepared import SPLITS, load_prepared
from mlcdf.data.seqdeepfake import PrepareConfig, SubsetSummary, prepare
from mlcdf.errors import MlcdfError
from mlcdf.graph.cooccurrence import conditional_probabilities, count_cooccurrence


class CheckImages(str, Enum):
    none = "none"
    exists = "exists"
    decode = "decode"


def prepare_command(
    root: Annotated[
        Path,
        typer.Option("--root", help="Dataset root holding SUBSET/annotations and SUBSET/images.", exists=True, file_okay=False),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Prepared folder; each subset goes to OUT/SUBSET.", file_okay=False)],
    subset: SubsetOpt = Subset.all,
    splits: Annotated[str, typer.Option("--splits", help="Comma-separated splits to read; absent ones are skipped.")] = ",".join(SPLITS),
    check_images: Annotated[
        CheckImages,
        typer.Option("--check-images", help="'exists' checks every image file is there, 'decode' also decodes each one (parallel), 'none' trusts the CSV."),
    ] = CheckImages.exists,
    skip_missing: Annotated[
        bool, typer.Option("--skip-missing", help="Drop rows whose image is missing or unreadable instead of failing; they are counted in the summary.")
    ] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Threads for --check-images decode.")] = 8,
    max_pixels: MaxPixelsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Validate the official annotation CSVs and write PREPARED/SUBSET/{meta.json,SPLIT.csv}.

    Every row is checked (label format, ids, duplicates, sequence folder, image presence); on the first
    problem the command names the CSV file and line, exits with code 2 and writes nothing.

    Example:

        mlcdf prepare --root /data/Seq-DeepFake --subset facial_components --out prepared
    """
    split_names = tuple(name.strip() for name in splits.split(",") if name.strip())
    if not split_names:
        raise MlcdfError("--splits is empty; give e.g. train,val,test")
    config = PrepareConfig(
        root=root,
        out=out_dir,
        subsets=tuple(subset.names()),
        splits=split_names,
        check_images=check_images.value,
        skip_missing=skip_missing,
        workers=workers,
    )
    for summary in prepare(config, progress=rich_progress(quiet=quiet)):
        _print_summary(summary)


def _print_summary(summary: SubsetSummary) -> None:
    for split in summary.skipped_splits:
        err.print(f"note: {summary.subset}: no {split}.csv, split skipped")
    splits = list(summary.splits)
    table = Table(title=f"{summary.subset} -> {summary.out}", title_justify="left")
    table.add_column("")
    for split in splits:
        table.add_column(split, justify="right")
    table.add_row("rows", *(f"{summary.splits[s].rows:,}" for s in splits))
    if any(s.dropped_missing or s.dropped_unreadable for s in summary.splits.values()):
        table.add_row("dropped (missing)", *(str(summary.splits[s].dropped_missing) for s in splits))
        table.add_row("dropped (unreadable)", *(str(summary.splits[s].dropped_unreadable) for s in splits))
    table.add_section()
    for label in next(iter(summary.splits.values())).positives:
        table.add_row(f"label {label}", *(f"{summary.splits[s].positives[label]:,}" for s in splits))
    table.add_section()
    for steps in range(0, 6):
        name = "real (0 steps)" if steps == 0 else f"{steps} step{'s' * (steps > 1)}"
        table.add_row(name, *(f"{summary.splits[s].steps.get(steps, 0):,}" for s in splits))
    out.print(table)
    _print_cooccurrence(summary)
    for split, split_summary in summary.splits.items():
        read = split_summary.rows + split_summary.dropped_missing + split_summary.dropped_unreadable
        if split_summary.official_rows is not None and read != split_summary.official_rows:
            warn(
                f"{summary.subset}/{split}: {read:,} rows, the official release has "
                f"{split_summary.official_rows:,} (a partial download, or not the official data)"
            )


def _print_cooccurrence(summary: SubsetSummary) -> None:
    """The observed P(j | i) on the training split: what a label graph built on it would see."""
    if "train" not in summary.splits:
        return
    prepared = load_prepared(summary.out)
    counts, cooccurrence = count_cooccurrence(prepared.read_split("train").targets)
    conditional = conditional_probabilities(cooccurrence, counts)
    out.print(matrix_table(f"{summary.subset} train: P(j | i)", prepared.labels, conditional, ".2f"))


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare_command)
