"""``mlcdf predict``, ``mlcdf explain`` and ``mlcdf export``: use a trained run on new images."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from mlcdf.cli._console import err, out, rich_progress, warn
from mlcdf.cli._options import Checkpoint, CheckpointOpt, Device, DeviceOpt, MaxPixelsOpt, QuietOpt, RunArg, check_workers_option
from mlcdf.errors import MlcdfError
from mlcdf.io import atomic_open, check_file_replaceable, check_output_apart, json_object_with

if TYPE_CHECKING:
    from mlcdf.inference.runs import ImagePredictions

# The library modules (torch, timm, matplotlib) are imported inside each command, so that the other
# commands and --help do not pay seconds for them.

#: Rows shown on screen; the output file always has every image.
SHOWN_ROWS = 30
#: Beyond this many labels the table shows the predicted labels with their scores, not a column per label.
MAX_LABEL_COLUMNS = 10


def predict_command(
    run: RunArg,
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write every prediction to FILE.csv or FILE.json (bytes of a file name that are not UTF-8 as \\xNN).",
            dir_okay=False,
        ),
    ] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", min=0.0, max=1.0, help="A manipulation is predicted when its probability is at least this.")
    ] = 0.5,
    checkpoint: CheckpointOpt = Checkpoint.best,
    device: DeviceOpt = Device.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 64,
    workers: Annotated[int, typer.Option("--workers", min=0, callback=check_workers_option, help="Decoding processes.")] = 2,
    max_pixels: MaxPixelsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Say which manipulations each image carries: per-label probabilities, the predicted set and a fake score.

    Unreadable files are reported and skipped. The fake score is the largest label probability.

    Example:

        mlcdf predict runs/r101-asl suspicious/ --out predictions.csv
    """
    if out_file is not None and out_file.suffix.lower() not in (".csv", ".json"):
        raise MlcdfError(f"--out {out_file}: use a .csv or .json file name")
    if out_file is not None:
        check_output_apart(out_file, ("the run", run), *(("an input", path) for path in inputs if path.is_file()))
        check_file_replaceable(out_file, command="mlcdf predict", is_own=is_predictions_file)
    from mlcdf.inference.runs import predict_images

    result = predict_images(
        run,
        inputs,
        checkpoint=checkpoint.value,
        device=device.value,
        batch_size=batch_size,
        threshold=threshold,
        workers=workers,
        progress=rich_progress(quiet=quiet),
    )
    for path, reason in result.unreadable:
        warn(f"{path_text(path)}: skipped, cannot read the image ({reason})")
    if not result.paths:
        raise MlcdfError("no readable image among the inputs")
    _print_predictions(result)
    if out_file is not None:
        _write_predictions(result, out_file)
        err.print(f"wrote {len(result.paths)} prediction(s) to {out_file}")


def path_text(path: Path) -> str:
    """``path`` as text that is valid UTF-8, for the table and ``--out``.

    A file name from another system can hold bytes that are not UTF-8 (Python keeps them as surrogate
    escapes, which no UTF-8 writer accepts); they are written as ``\\xNN``, e.g. ``caf\\xe9.png``.
    """
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _print_predictions(result: ImagePredictions) -> None:
    # With many labels a column per label no longer fits: the predicted labels carry their scores instead.
    per_label_columns = len(result.labels) <= MAX_LABEL_COLUMNS
    table = Table(title=f"{len(result.paths)} image(s), threshold {result.threshold}", title_justify="left")
    table.add_column("image", overflow="fold")
    for label in result.labels if per_label_columns else ():
        table.add_column(escape(label), justify="right")
    table.add_column("fake", justify="right")
    table.add_column("predicted")
    for path, row, fake, chosen in list(zip(result.paths, result.scores, result.fake_scores, result.predicted_sets()))[:SHOWN_ROWS]:
        if per_label_columns:
            cells = [f"[bold]{p:.2f}[/bold]" if p >= result.threshold else f"{p:.2f}" for p in row]
            predicted = ", ".join(chosen) or "real"
        else:
            cells = []
            score = dict(zip(result.labels, row))
            predicted = ", ".join(f"{label} {score[label]:.2f}" for label in chosen) or "real"
        table.add_row(escape(path_text(path)), *cells, f"{fake:.2f}", escape(predicted), end_section=not per_label_columns)
    out.print(table)
    if not per_label_columns:
        err.print(f"{len(result.labels)} labels: every label's score is in --out FILE")
    if len(result.paths) > SHOWN_ROWS:
        err.print(f"... {len(result.paths) - SHOWN_ROWS} more (use --out to write them all)")


def _write_predictions(result: ImagePredictions, path: Path) -> None:
    rows = [
        {
            "file_path": path_text(file_path),
            **{f"score_{label}": float(score) for label, score in zip(result.labels, scores)},
            "fake_score": float(fake),
            "predicted": "+".join(chosen),
        }
        for file_path, scores, fake, chosen in zip(result.paths, result.scores, result.fake_scores, result.predicted_sets())
    ]
    with atomic_open(path) as handle:
        if path.suffix.lower() == ".json":
            json.dump({"labels": list(result.labels), "threshold": result.threshold, "predictions": rows}, handle, indent=2)
        else:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})


#: A ``--out FILE.json`` (its keys).
_is_predictions_json = json_object_with({"labels", "threshold", "predictions"})


def is_predictions_file(path: Path) -> bool:
    """``path`` holds what :func:`_write_predictions` writes: a CSV whose header is ``file_path``,
    ``score_<label>`` columns, ``fake_score``, ``predicted``; or a JSON object with its keys."""
    if path.suffix.lower() == ".json":
        return _is_predictions_json(path)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader([handle.readline(1 << 20)]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    scores = header[1:-2]
    return (
        header[:1] + header[-2:] == ["file_path", "fake_score", "predicted"]
        and bool(scores)
        and all(name.startswith("score_") for name in scores)
    )


def explain_command(
    run: RunArg,
    image: Annotated[Path, typer.Argument(help="The image to explain.", exists=True, dir_okay=False)],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the PNG overlays.", file_okay=False)],
    label: Annotated[str, typer.Option("--label", help="A label name, or 'all'.")] = "all",
    checkpoint: CheckpointOpt = Checkpoint.best,
    device: DeviceOpt = Device.auto,
    max_pixels: MaxPixelsOpt = None,
) -> None:
    """Grad-CAM heat maps: where the model sees each manipulation, one PNG per label (plus IMAGE_all.png).

    Example:

        mlcdf explain runs/r101-asl face.jpg --out explain/
    """
    check_output_apart(out_dir, ("the run", run))
    labels = None if label == "all" else [label]
    from mlcdf.inference.explain import explain_image

    results = explain_image(run, image, out_dir, labels=labels, checkpoint=checkpoint.value, device=device.value)
    table = Table(title=str(image), title_justify="left")
    table.add_column("label")
    table.add_column("probability", justify="right")
    table.add_column("heat map", overflow="fold")
    for item in results:
        table.add_row(item.label, f"{item.probability:.3f}", str(item.path))
    out.print(table)


def export_command(
    run: RunArg,
    onnx: Annotated[Path, typer.Option("--onnx", help="The .onnx file to write.", dir_okay=False)],
    checkpoint: CheckpointOpt = Checkpoint.best,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version: 18 up to the newest the installed torch exports.")] = 18,
) -> None:
    """Export the classifier to ONNX (normalisation and sigmoid inside; dynamic batch), checked against PyTorch.

    Input: float32 RGB in [0, 1], shape (batch, 3, S, S); output: per-label probabilities. A JSON file
    beside it records labels and S.

    Example:

        mlcdf export runs/r101-asl --onnx r101-asl.onnx
    """
    from mlcdf.inference.export import export_onnx

    report = export_onnx(run, onnx, checkpoint=checkpoint.value, opset=opset)
    out.print(
        f"{report.path}: {len(report.labels)} labels, input {report.image_size}x{report.image_size}, "
        f"max |onnxruntime - PyTorch| = {report.max_abs_diff:.2e}"
    )


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
    app.command("explain")(explain_command)
    app.command("export")(export_command)
