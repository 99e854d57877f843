"""``mlcdf evaluate``: score a run's split, or any predictions file, into an evaluation folder."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import JustifyMethod
from rich.markup import escape
from rich.table import Table

from mlcdf.cli._console import note, out, rich_progress, warn
from mlcdf.cli._options import RUN_HELP, Checkpoint, Device, JsonOpt, QuietOpt, check_workers_option


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"


def _check_perturb_seed(value: int) -> int:
    """``--perturb-seed`` from 0 to 2**32-1, checked as the options are read (a one-line error)."""
    from mlcdf.data.perturb import check_seed

    return check_seed(value, "--perturb-seed")


def _check_options(
    run: Path | None,
    predictions: Path | None,
    out_dir: Path | None,
    tune_thresholds: bool,
    val_predictions: Path | None,
    run_only: dict[str, object],
) -> None:
    """Reject contradictory options before any work, with a message that says what to give instead.

    ``run_only`` maps the flags that drive inference to their values, None when not given.
    """
    if (run is None) == (predictions is None):
        raise typer.BadParameter("give exactly one of --run RUN or --predictions FILE", param_hint="'--run' / '--predictions'")
    if predictions is not None:
        if out_dir is None:
            raise typer.BadParameter("--predictions needs --out DIR, the evaluation folder to write", param_hint="'--out'")
        for flag, value in run_only.items():
            if value is not None:
                raise typer.BadParameter("only used with --run (it drives inference)", param_hint=f"'{flag}'")
        if tune_thresholds and val_predictions is None:
            raise typer.BadParameter(
                "with --predictions, --tune-thresholds needs --val-predictions FILE to tune on", param_hint="'--val-predictions'"
            )
    elif val_predictions is not None:
        raise typer.BadParameter("only used with --predictions; with --run the val split is predicted", param_hint="'--val-predictions'")
    if val_predictions is not None and not tune_thresholds:
        raise typer.BadParameter("add --tune-thresholds to tune thresholds on it", param_hint="'--val-predictions'")


def evaluate_command(
    run: Annotated[Path | None, typer.Option("--run", help=RUN_HELP)] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions",
            help="A predictions CSV from any tool: file_path, then target_LABEL (0/1) and score_LABEL (0..1) per label.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Evaluation folder to write. Required with --predictions; with --run, RUN/eval/SPLIT.", file_okay=False),
    ] = None,
    # The four inference options default to None so that giving one with --predictions can be refused.
    split: Annotated[Split | None, typer.Option("--split", help="With --run: the prepared split to evaluate (default: test).")] = None,
    checkpoint: Annotated[
        Checkpoint | None,
        typer.Option(
            "--checkpoint",
            help="With --run: 'best' (selected on validation, the default), 'last', or 'ema' (EMA weights after the last epoch).",
        ),
    ] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", min=0.0, max=1.0, help="A label is predicted when its score is >= this.")
    ] = 0.5,
    tune_thresholds: Annotated[
        bool,
        typer.Option(
            "--tune-thresholds",
            help="Tune one threshold per label for F1 on validation predictions and apply them; --threshold is the fallback for labels without positives there.",
        ),
    ] = False,
    val_predictions: Annotated[
        Path | None,
        typer.Option(
            "--val-predictions", help="With --predictions: validation predictions to tune the thresholds on.", exists=True, dir_okay=False
        ),
    ] = None,
    device: Annotated[
        Device | None, typer.Option("--device", help="With --run: where to infer; 'auto' (the default) takes CUDA when present.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="With --run: images per inference batch (default: 64).")
    ] = None,
    perturb: Annotated[
        list[str] | None,
        typer.Option(
            "--perturb",
            help="With --run: also score the split under perturbations and write robustness.csv/.md/.png. "
            "SPEC is TYPE:LEVELS (levels 1-5, e.g. jpeg:1,3,5), TYPE (all five levels) or 'all'; repeatable. "
            "Types: saturation, contrast, block, noise, blur, resize, jpeg, webp (DeeperForensics-1.0 levels).",
            metavar="SPEC",
        ),
    ] = None,
    perturb_seed: Annotated[
        int, typer.Option("--perturb-seed", callback=_check_perturb_seed, help="With --perturb: seed of the random noise and blocks.")
    ] = 0,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            callback=check_workers_option,
            help="With --perturb: processes decoding and perturbing images (default: min(16, CPUs); the perturbations, not the model, are the cost).",
        ),
    ] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Compute mAP, CP, CR, CF1, OP, OR, OF1 and more; write predictions.csv, metrics.json, report.md and plots.

    Either run a trained model over a prepared split (--run), or score a predictions file written by
    any tool (--predictions). The folder is written all at once. A malformed input is named with its
    line, and nothing is written.

    Examples:

        mlcdf evaluate --run runs/r101_asl --split test

        mlcdf evaluate --run runs/r101_asl --tune-thresholds

        mlcdf evaluate --predictions other_tool.csv --out eval/other_tool

        mlcdf evaluate --run runs/r101_asl --perturb jpeg --perturb blur:1,3,5

        mlcdf evaluate --run runs/r101_asl --perturb all

        mlcdf evaluate --run r101_asl.mlcdf --out eval/r101_asl
    """
    inference = {
        "split": split,
        "checkpoint": checkpoint,
        "device": device,
        "batch_size": batch_size,
        "perturb": perturb,
        "workers": workers,
    }
    _check_options(
        run,
        predictions,
        out_dir,
        tune_thresholds,
        val_predictions,
        {f"--{name.replace('_', '-')}": value for name, value in inference.items()},
    )
    # Imported here, not at the top: scikit-learn takes about a second to import, and every other
    # command would pay for it.
    from mlcdf.data.perturb import parse_spec
    from mlcdf.evaluation.evaluate import evaluate_predictions_file
    from mlcdf.evaluation.runs import evaluate_run

    if run is not None:
        # Options not given are left out, so that evaluate_run's defaults apply (they are stated once).
        given: dict[str, Any] = {name: getattr(value, "value", value) for name, value in inference.items() if value is not None}
        if perturb:
            given["perturb"] = parse_spec(perturb)  # a bad spec stops here, before any inference
        out_dir, metrics = evaluate_run(
            run,
            **given,
            perturb_seed=perturb_seed,
            threshold=threshold,
            tune_on_val=tune_thresholds,
            out_dir=out_dir,
            progress=rich_progress(quiet=quiet),
        )
    else:
        assert predictions is not None and out_dir is not None, "_check_options: without --run, --predictions and --out are given"
        metrics = evaluate_predictions_file(predictions, out_dir, threshold=threshold, tune_on_path=val_predictions)
    for message in metrics["warnings"]:
        warn(message)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        _print_metrics(metrics)
    if perturb:
        from mlcdf.evaluation.evaluate import format_percent
        from mlcdf.evaluation.robustness import ROBUSTNESS_CSV, read_robustness, summarise

        summary = summarise(read_robustness(out_dir / ROBUSTNESS_CSV))
        note(
            f"robustness: clean mAP {format_percent(summary['clean_mAP'])}, mean over {summary['conditions']} conditions "
            f"{format_percent(summary['mean_mAP'])}, worst {summary['worst']} ({format_percent(summary['worst_mAP'])}); "
            "see robustness.md"
        )
    note(f"wrote {out_dir}")


def _print_metrics(metrics: dict) -> None:
    from mlcdf.evaluation.evaluate import PAPER_METRICS, format_percent

    params = "" if metrics["num_params"] is None else f", {metrics['num_params']:.1f} M params"
    summary = Table(title=f"{metrics['num_images']} images{params} (percent)", title_justify="left")
    for name in PAPER_METRICS:
        summary.add_column(name, justify="right")
    summary.add_row(*(format_percent(metrics[name]) for name in PAPER_METRICS))
    out.print(summary)

    per_label = Table(title="per label", title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("label", "left"),
        ("support", "right"),
        ("AP", "right"),
        ("precision", "right"),
        ("recall", "right"),
        ("F1", "right"),
        ("threshold", "right"),
    )
    for name, justify in columns:
        per_label.add_column(name, justify=justify)
    for label, row in metrics["per_label"].items():
        per_label.add_row(
            escape(label),
            str(row["support"]),
            *(format_percent(row[key]) for key in ("AP", "precision", "recall", "F1")),
            f"{row['threshold']:.4g}",
        )
    out.print(per_label)

    rvf = metrics["real_vs_fake"]
    extras = Table(title="beyond the paper", title_justify="left", show_header=False)
    extras.add_column("metric")
    extras.add_column("value", justify="right")
    extras.add_row("exact match", format_percent(metrics["exact_match"]))
    extras.add_row("Hamming loss", format_percent(metrics["hamming_loss"]))
    extras.add_row(f"real vs fake ROC-AUC ({rvf['num_real']} real)", format_percent(rvf["roc_auc"]))
    extras.add_row("real vs fake accuracy", format_percent(rvf["accuracy"]))
    for steps, row in metrics["mAP_by_num_steps"].items():
        extras.add_row(f"mAP, {steps} step{'s' * (steps != '1')} ({row['num_images']} images)", format_percent(row["mAP"]))
    out.print(extras)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
