"""``mlcdf report``: one table over many runs, in the layout of the paper's Tables I and II."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mlcdf.cli._console import note
from mlcdf.cli.evaluate import Split
from mlcdf.io import atomic_open, check_file_replaceable


class Format(str, Enum):
    md = "md"
    latex = "latex"
    csv = "csv"


class Columns(str, Enum):
    """The metric columns; the library's COLUMN_VIEWS (a test holds the two equal)."""

    auto = "auto"
    paper = "paper"
    tasks = "tasks"
    all = "all"


def report_command(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders (RUN, read RUN/config.json and RUN/eval/SPLIT/metrics.json) or evaluation folders (with metrics.json).",
            exists=True,
            file_okay=False,
        ),
    ],
    split: Annotated[Split, typer.Option("--split", help="Which evaluation of each run folder to report.")] = Split.test,
    fmt: Annotated[
        Format, typer.Option("--format", help="Markdown or a LaTeX tabular per subset (one decimal, as the paper), or CSV (6 decimals).")
    ] = Format.md,
    columns: Annotated[
        Columns,
        typer.Option(
            "--columns",
            help="Metric columns: 'paper' (mAP, CP, CR, CF1, OP, OR, OF1, the paper's tables), 'tasks' (mAP, CF1, OF1, Fixed-Acc, Adaptive-Acc: both families on both tasks), 'all', or 'auto' (all when a run has the sequence metrics, else paper). CSV always has every metric.",
        ),
    ] = Columns.auto,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the table to this file instead of stdout.", dir_okay=False)] = None,
    paper: Annotated[
        bool,
        typer.Option(
            "--paper",
            help="Add the paper's published rows for each subset, and our difference from them (and the paper's bars to --figure).",
        ),
    ] = False,
    robustness: Annotated[
        bool,
        typer.Option(
            "--robustness",
            help="Add a section comparing the runs' robustness (from 'evaluate --perturb'): clean mAP, mean mAP over the conditions, worst condition. Markdown only.",
        ),
    ] = False,
    figure: Annotated[
        Path | None,
        typer.Option(
            "--figure",
            help="Also draw the paper's Figures 2/3 into this PNG (one panel per subset: direct vs indirect mean ± std per metric) and its numbers into the same name with .csv.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Tabulate runs as the paper does: category, method, #Params, mAP, CP, CR, CF1, OP, OR, OF1, and
    Seq-DeepFake's Fixed-Acc and Adaptive-Acc when the runs have them.

    One table per subset; the best value of each metric is in bold. Method, loss, subset and seed come
    from each run's config.json; runs that differ only in their seed (folders CONFIG-s0, CONFIG-s1, ...)
    are one row of mean ± std with their number n. An evaluation folder outside a run is labelled by its
    folder name. Multi-label and sequence (SeqFakeFormer) runs are scored on both tasks; with --paper the
    published SeqFakeFormer rows come beside yours, and each subset ends with the oracle row (the true
    set in its most frequent training order) when the runs' metrics have it.

    Examples:

        mlcdf report runs/* --paper

        mlcdf report runs/r50 runs/r101 --format latex --out table.tex

        mlcdf report runs/r50 runs/r50-augp --robustness

        mlcdf report runs/* --paper --figure categories.png

        mlcdf report runs/* --paper --columns tasks
    """
    # Imported here: the evaluate stage pulls in scikit-learn, which every other command would pay for.
    from mlcdf.evaluation.report import (
        check_figure_replaceable,
        check_outputs_distinct,
        is_report_file,
        load_result,
        results_table,
        write_category_figure,
    )

    if robustness and fmt is not Format.md:
        raise typer.BadParameter("the robustness section is Markdown; use --format md", param_hint="'--robustness'")
    check_outputs_distinct(out_file, figure)
    if out_file is not None:
        check_file_replaceable(out_file, command="mlcdf report", is_own=is_report_file)
    if figure is not None:
        check_figure_replaceable(figure)
    rows = [load_result(path, split=split.value) for path in paths]
    text = results_table(rows, fmt=fmt.value, paper=paper, columns=columns.value)
    if figure is not None:
        write_category_figure(rows, figure, paper=paper)
        note(f"wrote {figure} and its numbers, {figure.with_suffix('.csv')}")
    if robustness:
        from mlcdf.evaluation.robustness import robustness_section

        text += robustness_section(paths, split=split.value)
    if out_file is None:
        typer.echo(text, nl=False)
        return
    with atomic_open(out_file) as handle:
        handle.write(text)
    note(f"wrote {out_file}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
