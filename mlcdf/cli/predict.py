"""``mlcdf predict``, ``mlcdf explain`` and ``mlcdf export``: use a trained run on new images."""

from __future__ import annotations

import csv
import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import typer
from rich.markup import escape
from rich.table import Table

from mlcdf.cli._console import err, out, rich_progress, warn
from mlcdf.cli._options import (
    Checkpoint,
    CheckpointOpt,
    Device,
    DeviceOpt,
    EveryOpt,
    FramesOpt,
    MaxPixelsOpt,
    QuietOpt,
    RunArg,
    ThresholdOpt,
    check_workers_option,
)
from mlcdf.errors import MlcdfError
from mlcdf.io import atomic_open, check_file_replaceable, check_output_apart, json_object_with
from mlcdf.labels import SEQUENCE_SEPARATOR

if TYPE_CHECKING:
    from mlcdf.inference.faces import FacePredictions
    from mlcdf.inference.runs import ImagePredictions
    from mlcdf.inference.thresholds import Thresholds

#: ``--min-face-size`` and ``--max-faces`` defaults (:mod:`mlcdf.inference.faces`'s, kept here so that
#: ``--help`` imports no torch; a test holds them equal).
DEFAULT_MIN_FACE_SIZE = 40.0
DEFAULT_MAX_FACES = 20

# The library modules (torch, timm, matplotlib) are imported inside each command, so that the other
# commands and --help do not pay seconds for them.


class Faces(str, Enum):
    """:data:`mlcdf.inference.faces.FACE_MODES`, as choices."""

    auto = "auto"
    all = "all"
    largest = "largest"
    none = "none"


class FaceAlignment(str, Enum):
    """:data:`mlcdf.faces.align.FACE_ALIGNMENTS`, as choices."""

    ffhq = "ffhq"
    celeba_hq = "celeba-hq"


#: Rows shown on screen; the output file always has every image.
SHOWN_ROWS = 30
#: Beyond this many labels the table shows the predicted labels with their scores, not a column per label.
MAX_LABEL_COLUMNS = 10


def predict_command(
    run: RunArg,
    inputs: Annotated[list[Path], typer.Argument(help="Image and video files and/or folders (searched recursively).")],
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write every prediction to FILE.csv or FILE.json (bytes of a file name that are not UTF-8 as \\xNN).",
            dir_okay=False,
        ),
    ] = None,
    threshold: ThresholdOpt = "auto",
    checkpoint: CheckpointOpt = Checkpoint.best,
    device: DeviceOpt = Device.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 64,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", min=0, callback=check_workers_option, help="Decoding processes for whole images (faces: one photo at a time)."
        ),
    ] = 2,
    faces: Annotated[
        Faces,
        typer.Option(
            "--faces",
            help="auto: find and align faces when the run records an alignment (Seq-DeepFake runs do), else score whole "
            "images; all / largest: every face / the largest per image; none: whole images.",
        ),
    ] = Faces.auto,
    alignment: Annotated[
        FaceAlignment | None, typer.Option("--alignment", help="Align faces this way instead of the run's (FFHQ's for a run without one).")
    ] = None,
    crops: Annotated[
        Path | None, typer.Option("--crops", help="Save each crop the model scored here as a PNG, as evidence.", file_okay=False)
    ] = None,
    min_face_size: Annotated[
        float, typer.Option("--min-face-size", min=0.0, help="Faces narrower than this many pixels are reported, not scored.")
    ] = DEFAULT_MIN_FACE_SIZE,
    max_faces: Annotated[
        int, typer.Option("--max-faces", min=1, help="Score at most this many faces per image (the largest).")
    ] = DEFAULT_MAX_FACES,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write a self-contained report page: each input's face crops, probabilities and Grad-CAM panels, "
            "a video's scores over time; most suspicious first.",
            dir_okay=False,
        ),
    ] = None,
    frames: FramesOpt = None,
    every: EveryOpt = None,
    frame_rows: Annotated[
        bool, typer.Option("--frame-rows", help="With --out: a row per face per sampled frame of each video too.")
    ] = False,
    max_pixels: MaxPixelsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Say which manipulations each image carries: per-label probabilities, the predicted set and a fake score.

    Unreadable files are reported and skipped. The fake score is the largest label probability. A label
    is predicted when its probability reaches its threshold: by default the per-label thresholds tuned on
    validation where the run or bundle has them ('mlcdf evaluate --tune-thresholds'), else 0.5. A
    sequence run (SeqFakeFormer) also gives the predicted steps in the order applied, with each step's
    probability (--out: columns sequence and step_probabilities).

    Example:

        mlcdf predict runs/r101-asl suspicious/ --out predictions.csv

    Faces: each face found is aligned as the run's training images were (FFHQ or CelebA-HQ) and is a row
    with its box, landmarks and scores; an image without a face is reported, not scored (needs
    pip install 'mlcdf[faces]').

        mlcdf predict runs/attributes photo.jpg folder/ --faces all --crops crops/ --out faces.csv

    Videos (pip install 'mlcdf[video]'): 32 frames evenly spaced in time (--frames, or --every K), faces
    linked across frames into tracks, one row per track (the mean over its frames; --frame-rows adds one
    per frame). --html writes a self-contained report page, most suspicious input first.

        mlcdf predict runs/attributes photo.jpg clip.mp4 --html report.html --out rows.csv
    """
    if out_file is not None and out_file.suffix.lower() not in (".csv", ".json"):
        raise MlcdfError(f"--out {out_file}: use a .csv or .json file name")
    if out_file is not None:
        check_output_apart(out_file, ("the run", run), *(("an input", path) for path in inputs if path.is_file()))
    if crops is not None:
        check_output_apart(crops, ("the run", run), *(("an input", path) for path in inputs))
    from mlcdf.inference.media import find_media
    from mlcdf.inference.video import check_sampling, is_video

    check_sampling(frames, every)
    media = find_media(inputs)
    if html is not None or any(is_video(path) for path in media):
        options = MediaOptions(
            threshold, frames, every, frame_rows, faces, alignment, min_face_size, max_faces, checkpoint, device, batch_size
        )
        _predict_media(run, media, out_file, html, crops, options, quiet)
        return
    from mlcdf.inference.faces import choose_alignment
    from mlcdf.inference.runs import predict_images, read_run

    chosen = choose_alignment(faces.value, read_run(run).alignment, None if alignment is None else alignment.value)
    if chosen != "none" or crops is not None:
        if out_file is not None:
            check_file_replaceable(out_file, command="mlcdf predict", is_own=is_face_rows_file)
        _predict_faces(
            run, inputs, out_file, faces, alignment, crops, min_face_size, max_faces, threshold, checkpoint, device, batch_size, quiet
        )
        return
    if out_file is not None:
        check_file_replaceable(out_file, command="mlcdf predict", is_own=is_predictions_file)

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
    table = Table(title=f"{len(result.paths)} image(s), threshold {result.thresholds}", title_justify="left")
    table.add_column("image", overflow="fold")
    for label in result.labels if per_label_columns else ():
        table.add_column(escape(label), justify="right")
    table.add_column("fake", justify="right")
    table.add_column("predicted")
    steps = result.predicted_steps()
    if steps is not None:
        table.add_column("sequence (step probability)")
    for index, (path, row, hits, fake, chosen) in enumerate(
        list(zip(result.paths, result.scores, result.predicted, result.fake_scores, result.predicted_sets()))[:SHOWN_ROWS]
    ):
        if per_label_columns:
            cells = [f"[bold]{p:.2f}[/bold]" if hit else f"{p:.2f}" for p, hit in zip(row, hits)]
            predicted = ", ".join(chosen) or "real"
        else:
            cells = []
            score = dict(zip(result.labels, row))
            predicted = ", ".join(f"{label} {score[label]:.2f}" for label in chosen) or "real"
        if steps is not None:
            cells_after = [escape(" > ".join(f"{label} {p:.2f}" for label, p in steps[index]) or "real")]
        else:
            cells_after = []
        table.add_row(escape(path_text(path)), *cells, f"{fake:.2f}", escape(predicted), *cells_after, end_section=not per_label_columns)
    out.print(table)
    if not per_label_columns:
        err.print(f"{len(result.labels)} labels: every label's score is in --out FILE")
    if len(result.paths) > SHOWN_ROWS:
        err.print(f"... {len(result.paths) - SHOWN_ROWS} more (use --out to write them all)")


#: The columns a sequence run adds: the predicted steps joined by ``-`` (as the prepared ``sequence``
#: column) and each step's probability (space-separated in a CSV, a list in JSON).
SEQUENCE_COLUMNS = ["sequence", "step_probabilities"]


def _write_predictions(result: ImagePredictions, path: Path) -> None:
    rows: list[dict] = [
        {
            "file_path": path_text(file_path),
            **{f"score_{label}": float(score) for label, score in zip(result.labels, scores)},
            "fake_score": float(fake),
            "predicted": "+".join(chosen),
        }
        for file_path, scores, fake, chosen in zip(result.paths, result.scores, result.fake_scores, result.predicted_sets())
    ]
    steps = result.predicted_steps()
    for row, image_steps in zip(rows, steps or []):
        row["sequence"] = SEQUENCE_SEPARATOR.join(label for label, _ in image_steps)
        row["step_probabilities"] = [probability for _, probability in image_steps]
    with atomic_open(path) as handle:
        if path.suffix.lower() == ".json":
            json.dump({"labels": list(result.labels), "threshold": result.thresholds.to_json(), "predictions": rows}, handle, indent=2)
        else:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_cell(v) for k, v in row.items()})


def _csv_cell(value: object) -> object:
    """Floats at full precision (``repr``); a list of them space-separated."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return " ".join(repr(float(item)) for item in value)
    return value


#: A ``--out FILE.json`` (its keys).
_is_predictions_json = json_object_with({"labels", "threshold", "predictions"})


def is_predictions_file(path: Path) -> bool:
    """``path`` holds what :func:`_write_predictions` writes: a CSV whose header is ``file_path``,
    ``score_<label>`` columns, ``fake_score``, ``predicted`` (then :data:`SEQUENCE_COLUMNS` for a
    sequence run); or a JSON object with its keys."""
    if path.suffix.lower() == ".json":
        return _is_predictions_json(path)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader([handle.readline(1 << 20)]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    if header[-len(SEQUENCE_COLUMNS) :] == SEQUENCE_COLUMNS:
        header = header[: -len(SEQUENCE_COLUMNS)]
    scores = header[1:-2]
    return (
        header[:1] + header[-2:] == ["file_path", "fake_score", "predicted"]
        and bool(scores)
        and all(name.startswith("score_") for name in scores)
    )


def _predict_faces(
    run: Path,
    inputs: list[Path],
    out_file: Path | None,
    faces: Faces,
    alignment: FaceAlignment | None,
    crops: Path | None,
    min_face_size: float,
    max_faces: int,
    threshold: str,
    checkpoint: Checkpoint,
    device: Device,
    batch_size: int,
    quiet: bool,
) -> None:
    from mlcdf.inference.faces import SCORED, predict_faces

    result = predict_faces(
        run,
        inputs,
        faces=faces.value,
        alignment=None if alignment is None else alignment.value,
        crops_dir=crops,
        min_face_size=min_face_size,
        max_faces=max_faces,
        checkpoint=checkpoint.value,
        device=device.value,
        batch_size=batch_size,
        threshold=threshold,
        progress=rich_progress(quiet=quiet),
    )
    for note in result.notes:
        warn(escape(note))
    scored = [row for row in result.rows if row.status == SCORED]
    if not result.rows:
        raise MlcdfError("no image among the inputs")
    table = Table(
        title=f"{len(scored)} face(s) scored in {len(result.rows)} row(s), alignment {result.alignment}, threshold {result.thresholds}",
        title_justify="left",
    )
    for column in ("image", "face", "status", "fake", "predicted"):
        table.add_column(column, overflow="fold", justify="right" if column in ("face", "fake") else "left")
    for row in result.rows[:SHOWN_ROWS]:
        fake = "" if row.scores is None else f"{float(row.scores.max()):.2f}"
        predicted = "" if row.scores is None else ", ".join(result.predicted(row)) or "real"
        status = row.status if not row.detail else f"{row.status}: {row.detail}"
        face = "" if row.face is None else str(row.face)
        table.add_row(escape(path_text(row.file)), face, escape(status), fake, escape(predicted))
    out.print(table)
    if len(result.rows) > SHOWN_ROWS:
        err.print(f"... {len(result.rows) - SHOWN_ROWS} more (use --out to write them all)")
    if out_file is not None:
        _write_face_rows(result, out_file)
        err.print(f"wrote {len(result.rows)} row(s) to {out_file}")


#: ``--out`` columns of face rows before the per-label scores.
FACE_COLUMNS = ["file_path", "face", "status", "detail", "alignment", "box", "landmarks", "confidence", "crop"]


def _write_face_rows(result: FacePredictions, path: Path) -> None:
    import numpy as np

    def numbers(values: object) -> list[float] | None:
        return None if values is None else [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]

    rows: list[dict] = []
    for row in result.rows:
        record: dict = {
            "file_path": path_text(row.file),
            "face": row.face,
            "status": row.status,
            "detail": row.detail,
            "alignment": row.alignment,
            "box": numbers(row.box),
            "landmarks": numbers(row.landmarks),
            "confidence": row.confidence,
            "crop": None if row.crop_file is None else path_text(row.crop_file),
            **{f"score_{label}": None if row.scores is None else float(row.scores[index]) for index, label in enumerate(result.labels)},
            "fake_score": None if row.scores is None else float(row.scores.max()),
            "predicted": "+".join(result.predicted(row)),
        }
        if row.steps is not None:
            record["sequence"] = SEQUENCE_SEPARATOR.join(label for label, _ in row.steps)
            record["step_probabilities"] = [p for _, p in row.steps]
        rows.append(record)
    with atomic_open(path) as handle:
        if path.suffix.lower() == ".json":
            json.dump(
                {"labels": list(result.labels), "threshold": result.thresholds.to_json(), "alignment": result.alignment, "faces": rows},
                handle,
                indent=2,
            )
        else:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            for record in rows:
                writer.writerow({k: "" if v is None else _csv_cell(v) for k, v in record.items()})


_is_face_rows_json = json_object_with({"labels", "threshold", "alignment", "faces"})


def is_face_rows_file(path: Path) -> bool:
    """``path`` holds what :func:`_write_face_rows` writes: a CSV whose header starts with :data:`FACE_COLUMNS`,
    or a JSON object with its keys."""
    if path.suffix.lower() == ".json":
        return _is_face_rows_json(path)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader([handle.readline(1 << 20)]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return header[: len(FACE_COLUMNS)] == FACE_COLUMNS


class MediaOptions(NamedTuple):
    """What ``mlcdf predict`` passes on to :class:`~mlcdf.inference.media.MediaPredictor` for videos and reports."""

    threshold: str
    frames: int | None
    every: int | None
    frame_rows: bool
    faces: Faces
    alignment: FaceAlignment | None
    min_face_size: float
    max_faces: int
    checkpoint: Checkpoint
    device: Device
    batch_size: int


def _predict_media(
    run: Path, paths: list[Path], out_file: Path | None, html: Path | None, crops: Path | None, options: MediaOptions, quiet: bool
) -> None:
    """Photos and videos, one file at a time: a row per face (per face track in a video), and the report page."""
    from mlcdf.inference.media import MediaPredictor
    from mlcdf.inference.report_html import ReportInput, check_report_replaceable, write_report
    from mlcdf.inference.video import is_video

    if crops is not None:
        raise MlcdfError("--crops saves the crops of photos; with videos or --html, the crops are in the report page instead")
    if options.frame_rows and out_file is None:
        raise MlcdfError("--frame-rows adds rows to --out FILE: give --out too")
    if out_file is not None:
        check_file_replaceable(out_file, command="mlcdf predict", is_own=is_media_rows_file)
    if html is not None:
        check_output_apart(html, ("the run", run), *(("an input", path) for path in paths))
        check_report_replaceable(html, "mlcdf predict")
    predictor = MediaPredictor.load(
        run,
        checkpoint=options.checkpoint.value,
        device=options.device.value,
        threshold=options.threshold,
        keep_crops=html is not None,
        explain=html is not None,
        mode=options.faces.value,
        alignment=None if options.alignment is None else options.alignment.value,
        min_face_size=options.min_face_size,
        max_faces=options.max_faces,
        batch_size=options.batch_size,
    )
    progress = rich_progress(quiet=quiet)
    rows: list[dict] = []
    report: list[ReportInput] = []
    for path in progress(paths, "Files", total=len(paths)):
        name = path_text(path)
        try:
            result = predictor.predict_file(path, name, frames=options.frames, every=options.every, progress=progress)
        except MlcdfError as error:
            warn(f"skipped: {error}")
            report.append(ReportInput(name, "video" if is_video(path) else "image", (), note=f"unreadable: {error}"))
            continue
        for message in ([f"{name}: {result.note}"] if result.note else []) + list(result.warnings):
            warn(message)
        rows.extend(result.rows)
        if options.frame_rows:
            rows.extend(result.frame_rows)
        report.append(result.report)
    if not rows and html is None:
        raise MlcdfError("no face was scored in the inputs")
    _print_media_rows(rows, predictor.thresholds)
    if out_file is not None:
        _write_media_rows(rows, predictor.thresholds, out_file)
        err.print(f"wrote {len(rows)} row(s) to {out_file}")
    if html is not None:
        write_report(html, report, predictor.thresholds, source=path_text(run))
        err.print(f"wrote the report of {len(report)} input(s) to {html}")


def _print_media_rows(rows: list[dict], thresholds: Thresholds) -> None:
    table = Table(title=f"{len(rows)} row(s), threshold {thresholds}", title_justify="left")
    for column in ("file", "kind", "face / track", "time (s)", "fake", "predicted"):
        table.add_column(column, overflow="fold", justify="right" if column in ("fake", "time (s)") else "left")
    for row in rows[:SHOWN_ROWS]:
        which = str(row.get("face", row.get("track", "")))
        when = f"{row['time']:.2f}" if "time" in row else (f"{row['start']:.1f}-{row['end']:.1f}" if "start" in row else "")
        table.add_row(
            escape(row["file"]), row["kind"], which, when, f"{row['fake_score']:.2f}", escape(", ".join(row["predicted"]) or "real")
        )
    out.print(table)
    if len(rows) > SHOWN_ROWS:
        err.print(f"... {len(rows) - SHOWN_ROWS} more (use --out to write them all)")


#: ``--out`` columns of photo-and-video rows before the per-label scores (a cell is empty where it does not apply).
MEDIA_COLUMNS = ["file_path", "kind", "face", "track", "start", "end", "frames", "time", "box", "alignment", "landmarks", "confidence"]


def _write_media_rows(rows: list[dict], thresholds: Thresholds, path: Path) -> None:
    labels = thresholds.labels
    with atomic_open(path) as handle:
        if path.suffix.lower() == ".json":
            json.dump({"labels": list(labels), "threshold": thresholds.to_json(), "rows": rows}, handle, indent=2)
            return
        writer = csv.DictWriter(
            handle, fieldnames=[*MEDIA_COLUMNS, *(f"score_{label}" for label in labels), "fake_score", "predicted"], lineterminator="\n"
        )
        writer.writeheader()
        for row in rows:
            record = {"file_path": row["file"], **{key: row.get(key) for key in MEDIA_COLUMNS[1:]}}
            record.update({f"score_{label}": row["scores"][label] for label in labels})
            record.update(fake_score=row["fake_score"], predicted="+".join(row["predicted"]))
            writer.writerow({key: "" if value is None else _csv_cell(value) for key, value in record.items()})


_is_media_rows_json = json_object_with({"labels", "threshold", "rows"})


def is_media_rows_file(path: Path) -> bool:
    """``path`` holds what :func:`_write_media_rows` writes: a CSV whose header starts with :data:`MEDIA_COLUMNS`,
    or a JSON object with its keys."""
    if path.suffix.lower() == ".json":
        return _is_media_rows_json(path)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader([handle.readline(1 << 20)]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return header[: len(MEDIA_COLUMNS)] == MEDIA_COLUMNS


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

    A sequence run (SeqFakeFormer) gets one PNG per predicted step instead, IMAGE_step<t>_<label>.png:
    where the decoder looked when it emitted that step.

    Example:

        mlcdf explain runs/r101-asl face.jpg --out explain/
    """
    check_output_apart(out_dir, ("the run", run))
    labels = None if label == "all" else [label]
    from mlcdf.inference.explain import explain_image

    results = explain_image(run, image, out_dir, labels=labels, checkpoint=checkpoint.value, device=device.value)
    by_step = any(item.step is not None for item in results)
    table = Table(title=str(image), title_justify="left")
    if by_step:
        table.add_column("step", justify="right")
    table.add_column("label")
    table.add_column("probability", justify="right")
    table.add_column("heat map", overflow="fold")
    for item in results:
        step = [str(item.step)] if by_step else []
        table.add_row(*step, escape(item.label), f"{item.probability:.3f}", escape(str(item.path)))
    out.print(table)


def export_command(
    run: RunArg,
    onnx: Annotated[Path | None, typer.Option("--onnx", help="The .onnx file to write.", dir_okay=False)] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle", help="The .mlcdf file to write: the whole detector in one file, for predict, explain and evaluate.", dir_okay=False
        ),
    ] = None,
    hub_repo: Annotated[
        str | None,
        typer.Option("--push-to-hub", metavar="ORG/NAME", help="With --bundle: upload it to this Hugging Face Hub model repository."),
    ] = None,
    checkpoint: CheckpointOpt = Checkpoint.best,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version: 18 up to the newest the installed torch exports.")] = 18,
) -> None:
    """Export the classifier to ONNX (normalisation and sigmoid inside; dynamic batch, checked against
    PyTorch), and/or as a bundle: weights, config, labels, normalisation, alignment, tuned thresholds,
    prior orders and a model card in one .mlcdf file, which every command that takes RUN accepts too,
    also from the Hub as hf-hub:ORG/NAME.

    ONNX input: float32 RGB in [0, 1], shape (batch, 3, S, S); output: per-label probabilities. A JSON
    file beside it records labels and S.

    Examples:

        mlcdf export runs/r101-asl --onnx r101-asl.onnx

        mlcdf export runs/r101-asl --bundle r101-asl.mlcdf --push-to-hub my-lab/r101-asl
    """
    if onnx is None and bundle is None:
        raise typer.BadParameter("give --onnx FILE.onnx and/or --bundle FILE.mlcdf", param_hint="'--onnx' / '--bundle'")
    if hub_repo is not None and bundle is None:
        raise typer.BadParameter("uploads the bundle: add --bundle FILE.mlcdf", param_hint="'--push-to-hub'")
    for output in (onnx, bundle):
        if output is not None:
            check_output_apart(output, ("the run", run))
    from mlcdf.inference.bundle import check_hub_repo, push_to_hub
    from mlcdf.inference.export import export_bundle, export_onnx

    if hub_repo is not None:
        check_hub_repo(hub_repo)  # a bad name or a missing huggingface_hub stops here, before the work
    if bundle is not None:
        written = export_bundle(run, bundle, checkpoint=checkpoint.value)
        out.print(f"{written.path}: {written.size:,} bytes, sha256 {written.sha256}; members {', '.join(written.members)}")
        if hub_repo is not None:
            out.print(f"uploaded: use it as {push_to_hub(written.path, hub_repo, written.model_card)}")
    if onnx is not None:
        report = export_onnx(run, onnx, checkpoint=checkpoint.value, opset=opset)
        out.print(
            f"{report.path}: {len(report.labels)} labels, input {report.image_size}x{report.image_size}, "
            f"max |onnxruntime - PyTorch| = {report.max_abs_diff:.2e}"
        )


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
    app.command("explain")(explain_command)
    app.command("export")(export_command)
