"""``mlcdf prepare``: read the Seq-DeepFake release, or a user's own CSV, and write the prepared contract."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from mlcdf.cli._console import err, matrix_table, out, rich_progress, warn
from mlcdf.cli._options import MaxPixelsOpt, QuietOpt, Subset, SubsetOpt, check_workers_option, given_on_command_line
from mlcdf.data.own_csv import DEFAULT_PATH_COLUMN, CsvPrepareConfig, CsvSummary, parse_split_ratios, prepare_csv
from mlcdf.data.prepared import SPLITS, load_prepared
from mlcdf.data.seqdeepfake import PrepareConfig, SubsetSummary, prepare
from mlcdf.errors import MlcdfError
from mlcdf.labels import MAX_STEPS, conditional_probabilities, count_cooccurrence


class Format(str, Enum):
    seqdeepfake = "seqdeepfake"
    csv = "csv"


class CheckImages(str, Enum):
    none = "none"
    exists = "exists"
    decode = "decode"


class Alignment(str, Enum):
    """:data:`mlcdf.config.ALIGNMENTS`, as choices."""

    none = "none"
    ffhq = "ffhq"
    celeba_hq = "celeba-hq"


#: Options of one format only (named as the function's parameters), refused with the other.
_SEQDEEPFAKE_ONLY = ("subset", "splits")
_CSV_ONLY = ("csv", "name", "path_column", "labels", "split_column", "split_ratios", "seed")


def prepare_command(
    ctx: typer.Context,
    root: Annotated[
        Path,
        typer.Option(
            "--root",
            help="Dataset root: for seqdeepfake the folder holding SUBSET/annotations and SUBSET/images; for csv the "
            "folder the CSV's image paths are relative to.",
            exists=True,
            file_okay=False,
        ),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Prepared folder; each subset (or the CSV's dataset) goes to OUT/NAME.", file_okay=False)
    ],
    data_format: Annotated[
        Format, typer.Option("--format", help="'seqdeepfake': the official release; 'csv': your own CSV (--csv).")
    ] = Format.seqdeepfake,
    csv_file: Annotated[
        Path | None,
        typer.Option("--csv", help="csv: the annotation file (one row per image).", dir_okay=False),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="csv: the dataset's name and folder under OUT (default: the CSV's stem).")
    ] = None,
    path_column: Annotated[
        str, typer.Option("--path-column", help="csv: the column of image paths, relative to --root (e.g. image_id).")
    ] = DEFAULT_PATH_COLUMN,
    labels: Annotated[
        str | None,
        typer.Option(
            "--labels",
            help="csv: comma-separated label names, in order: the label columns to read (one column per label), or the "
            "vocabulary of a 'labels' column (default: every other column, or the sorted names found).",
        ),
    ] = None,
    split_column: Annotated[
        str | None, typer.Option("--split-column", help="csv: the column holding train/val/test (default: 'split').")
    ] = None,
    split_ratios: Annotated[
        str | None,
        typer.Option(
            "--split-ratios",
            help="csv without a split column: train,val,test fractions of a multi-label stratified split, e.g. 0.8,0.1,0.1.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="csv: seed of the --split-ratios split.")] = 0,
    subset: SubsetOpt = Subset.all,
    splits: Annotated[str, typer.Option("--splits", help="Comma-separated splits to read; absent ones are skipped.")] = ",".join(SPLITS),
    check_images: Annotated[
        CheckImages,
        typer.Option(
            "--check-images",
            help="'exists' checks every image file is there, 'decode' also decodes each one (parallel), 'none' trusts the CSV.",
        ),
    ] = CheckImages.exists,
    skip_missing: Annotated[
        bool,
        typer.Option(
            "--skip-missing", help="Drop rows whose image is missing or unreadable instead of failing; they are counted in the summary."
        ),
    ] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, callback=check_workers_option, help="Threads for --check-images decode.")] = 8,
    alignment: Annotated[
        Alignment | None,
        typer.Option(
            "--alignment",
            help="How the images were cut from their photos, recorded for 'mlcdf predict' to align faces the same way: "
            "'ffhq' or 'celeba-hq' (aligned as those datasets were) or 'none'. Default: facial_attributes ffhq, "
            "facial_components celeba-hq, a CSV none.",
        ),
    ] = None,
    max_pixels: MaxPixelsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Validate annotation CSVs and write PREPARED/NAME/{meta.json,SPLIT.csv}.

    --format seqdeepfake (default) reads the official release; --format csv reads your own CSV: a path
    column, then one column per label (0/1, -1/1 or true/false) or one 'labels' column of names joined
    by '|', optionally 'sequence' (names joined by '-' in the order applied) and 'split' (train/val/test;
    else --split-ratios makes a multi-label stratified split).

    Every row is checked (label values and names, duplicates, paths, image presence); on the first
    problem the command names the CSV file and line, exits with code 2 and writes nothing.

    Examples:

        mlcdf prepare --root /data/Seq-DeepFake --subset facial_components --out prepared

        mlcdf prepare --format csv --csv list_attr_celeba.csv --path-column image_id --root img_align_celeba --split-ratios 0.8,0.1,0.1 --out prepared
    """
    chosen, other = (_CSV_ONLY, _SEQDEEPFAKE_ONLY) if data_format is Format.csv else (_SEQDEEPFAKE_ONLY, _CSV_ONLY)
    wrong = [option for option in other if given_on_command_line(ctx, option)]
    if wrong:
        flags = ", ".join("--" + option.replace("_", "-") for option in wrong)
        raise typer.BadParameter(f"{flags} do not apply to --format {data_format.value}", param_hint="--format")
    if data_format is Format.csv:
        if csv_file is None:
            raise typer.BadParameter("--format csv needs --csv FILE", param_hint="--csv")
        try:
            ratios = None if split_ratios is None else parse_split_ratios(split_ratios)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--split-ratios") from None
        csv_config = CsvPrepareConfig(
            csv=csv_file,
            root=root,
            out=out_dir,
            name=name,
            path_column=path_column,
            labels=None if labels is None else tuple(label.strip() for label in labels.split(",")),
            split_column=split_column,
            split_ratios=ratios,
            seed=seed,
            check_images=check_images.value,
            skip_missing=skip_missing,
            workers=workers,
            alignment=alignment.value if alignment is not None else "none",
        )
        _print_csv_summary(prepare_csv(csv_config, progress=rich_progress(quiet=quiet)))
        return
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
        alignment=None if alignment is None else alignment.value,
    )
    for summary in prepare(config, progress=rich_progress(quiet=quiet)):
        _print_summary(summary)


def _print_summary(summary: SubsetSummary) -> None:
    for split in summary.skipped_splits:
        err.print(f"note: {summary.subset}: no {split}.csv, split skipped")
    splits = list(summary.splits)
    table = Table(title=f"{summary.subset} -> {summary.out} (alignment {summary.alignment})", title_justify="left")
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
    for steps in range(0, MAX_STEPS + 1):
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


def _print_csv_summary(summary: CsvSummary) -> None:
    if summary.vocabulary_from_file:
        out.print(f"labels (the names found, sorted): {escape(', '.join(summary.labels))}", highlight=False)
    splits = list(summary.rows)
    how = "stratified split" if summary.stratified else "split column"
    table = Table(title=f"{summary.name} -> {summary.out} ({len(summary.labels)} labels, {how})", title_justify="left")
    table.add_column("positives per label")
    for split in splits:
        table.add_column(split, justify="right")
    table.add_row("rows", *(f"{summary.rows[s]:,}" for s in splits))
    table.add_section()
    for label in summary.labels:
        table.add_row(
            escape(label), *(f"{summary.positives[s][label]:,} ({summary.positives[s][label] / summary.rows[s]:.1%})" for s in splits)
        )
    out.print(table)
    if summary.dropped_missing or summary.dropped_unreadable:
        warn(f"dropped {summary.dropped_missing} rows with a missing image, {summary.dropped_unreadable} with an unreadable one")


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare_command)
