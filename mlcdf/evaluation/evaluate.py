"""The evaluation stage: from targets and scores to an evaluation folder of files (DESIGN.md §3).

An evaluation folder (``RUN/eval/<split>/``, or the ``--out`` of ``mlcdf evaluate --predictions``) is
written all at once (:func:`mlcdf.io.atomic_dir`). It holds:

- ``predictions.csv``: ``file_path``, then ``target_<label>`` (0/1) and ``score_<label>`` (a
  probability, written with full float precision) for each label in vocabulary order. The pairs are
  interleaved: ``target_nose, score_nose, target_eye, ...``. :func:`read_predictions` finds the
  columns by name, so other tools may order them differently.
- ``metrics.json`` (:func:`compute_metrics`). Every fraction is given in percent, and ``null`` stands
  for an undefined value. The keys:

  - ``mAP``, ``CP``, ``CR``, ``CF1``, ``OP``, ``OR``, ``OF1``: the paper's figures (see
    :mod:`mlcdf.metrics`).
  - ``Fixed-Acc`` and ``Adaptive-Acc``: Seq-DeepFake's sequence metrics
    (:func:`mlcdf.metrics.fixed_accuracy`, :func:`~mlcdf.metrics.adaptive_accuracy`), only when the
    predictions carry sequences: a run whose model predicts an order (SeqFakeFormer), or a multi-label
    run evaluated with ``evaluate --run``, whose predicted set is put in its most frequent training order;
    ``sequence_decoder`` says which (``{"kind": "model"}``, or ``{"kind": "set + prior order",
    "estimated_on", "prior"}``), and ``oracle_order`` holds both metrics for the true set in that order.
  - ``threshold``: a number, or ``{label: threshold}`` when the thresholds differ per label.
  - ``threshold_tuning``: ``null``, or ``{"objective", "tuned_on", "num_images", "default"}``.
  - ``num_params``: the model's parameters in millions, or ``null`` when no model is known.
  - ``num_images``, ``labels`` (names in order), ``source`` (where the predictions came from).
  - ``per_label``: ``{label: {"AP", "precision", "recall", "F1", "support", "threshold"}}``.
  - ``labels_without_positives``: names of the labels left out of the per-class means.
  - ``exact_match`` and ``hamming_loss``.
  - ``real_vs_fake``: ``{"roc_auc", "accuracy", "num_real", "num_fake"}``.
  - ``mAP_by_num_steps``: ``{"1": {"num_images", "mAP"}, ...}``.
  - ``warnings``: the undefined cases met, and per-label plots left out (past :data:`MAX_PLOTTED_LABELS`
    labels), one sentence each.
  - ``mlcdf_version``.
- ``report.md``: the same numbers for people, with the definitions and the plots.
- ``pr_curves.png``: precision-recall curves per label. ``ap_per_label.png``: AP per label as bars.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import precision_recall_curve

from mlcdf import __version__
from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError
from mlcdf.io import (
    atomic_dir,
    atomic_open,
    check_output_apart,
    check_output_folder,
    check_replaceable,
    holds_file,
    read_csv_rows,
    read_json_object,
    write_json,
)
from mlcdf.labels import ids_to_sequence
from mlcdf.metrics import (
    UndefinedMetricWarning,
    adaptive_accuracy,
    average_precision,
    average_precision_by_num_steps,
    exact_match_ratio,
    fixed_accuracy,
    hamming_loss,
    paper_metrics,
    per_label_thresholds,
    precision_recall_f1,
    real_fake_accuracy,
    real_fake_roc_auc,
    tune_thresholds,
)

if TYPE_CHECKING:
    from mlcdf.data.prepared import OutputOwner

PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PR_CURVES_FILE = "pr_curves.png"
AP_BARS_FILE = "ap_per_label.png"
#: Beyond this many labels the plots change layout (legend beside the curves, horizontal AP bars).
MAX_LABELS_IN_PLOT = 10
#: Beyond this many labels the per-label plots are not drawn (one curve or bar per label: unreadable, and
#: minutes of drawing); ``report.md``, ``metrics.json`` and a warning say so.
MAX_PLOTTED_LABELS = 100


def plots_left_out(num_labels: int) -> str | None:
    """The warning of an evaluation whose per-label plots are not drawn, or ``None`` when they are."""
    if num_labels <= MAX_PLOTTED_LABELS:
        return None
    return (
        f"{num_labels} labels: the per-label plots ({PR_CURVES_FILE}, {AP_BARS_FILE}) are drawn for at most "
        f"{MAX_PLOTTED_LABELS} labels and were left out; every label's numbers are in {METRICS_FILE} and {REPORT_FILE}"
    )


#: An evaluation folder is replaced only when it holds a previous evaluation (its metrics.json).
EVALUATION_OUTPUT: OutputOwner = {"command": "mlcdf evaluate", "is_own": holds_file(METRICS_FILE)}

#: The figures of the paper's tables, in their column order.
PAPER_METRICS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")

TARGET_PREFIX = "target_"
SCORE_PREFIX = "score_"


@dataclass(frozen=True)
class Predictions:
    """Targets and scores of one split, one row per image.

    Attributes:
        file_paths: image identifiers (paths as in the dataset's CSV).
        labels: label names, in vocabulary order.
        targets: 0/1 array of shape (n_images, n_labels).
        scores: probabilities, float64 array of shape (n_images, n_labels).
        num_steps: manipulation steps per image, shape (n_images,). Use None to derive it from the
            targets (see :attr:`steps`).
        origin: where the predictions come from (a file, a run and split), recorded in metrics.json.
        true_sequences: the true steps in order, (n_images, L) ids (0 = none, ids 1..C), or None.
        pred_sequences: the predicted steps in order, likewise, or None; with ``true_sequences`` they
            add Seq-DeepFake's ``Fixed-Acc`` and ``Adaptive-Acc`` to the metrics.
        oracle_sequences: the true sets in their most frequent training order, likewise, or None: the
            ``oracle_order`` row of the metrics.
        sequence_decoder: how a model without an order got ``pred_sequences`` (the set + prior order
            decoder and its prior), recorded in metrics.json; None for a model that predicts an order.
    """

    file_paths: list[str]
    labels: tuple[str, ...]
    targets: np.ndarray
    scores: np.ndarray
    num_steps: np.ndarray | None = None
    origin: str = ""
    true_sequences: np.ndarray | None = None
    pred_sequences: np.ndarray | None = None
    oracle_sequences: np.ndarray | None = None
    sequence_decoder: dict | None = None

    def __post_init__(self) -> None:
        expected = (len(self.file_paths), len(self.labels))
        for name in ("targets", "scores"):
            if np.shape(getattr(self, name)) != expected:
                raise ValueError(f"{name} has shape {np.shape(getattr(self, name))}, expected {expected}")
        if self.num_steps is not None and np.shape(self.num_steps) != expected[:1]:
            raise ValueError(f"num_steps has shape {np.shape(self.num_steps)}, expected {expected[:1]}")
        others = [s for s in (self.pred_sequences, self.oracle_sequences) if s is not None]
        if others and self.true_sequences is None:
            raise ValueError("pred_sequences and oracle_sequences need true_sequences")
        if self.true_sequences is not None:
            shape = np.shape(self.true_sequences)
            if len(shape) != 2 or shape[0] != expected[0] or any(np.shape(s) != shape for s in others):
                raise ValueError(f"the sequences must be (n_images, L) arrays of one shape with {expected[0]} rows")

    def __len__(self) -> int:
        return len(self.file_paths)

    @property
    def steps(self) -> np.ndarray:
        """Manipulation steps per image. Without ``num_steps``, this is the number of labels present.

        The two agree on Seq-DeepFake because each manipulation appears at most once per sequence.
        """
        if self.num_steps is not None:
            return np.asarray(self.num_steps, dtype=np.int64)
        return np.asarray(self.targets, dtype=np.int64).sum(axis=1)


def predictions_header(labels: Sequence[str]) -> list[str]:
    """``file_path``, then ``target_<label>`` and ``score_<label>`` for each label."""
    return ["file_path", *(f"{prefix}{label}" for label in labels for prefix in (TARGET_PREFIX, SCORE_PREFIX))]


def write_predictions(path: str | Path, predictions: Predictions) -> None:
    """Write ``predictions.csv`` atomically. Scores use ``repr``, which reads back to the same float.

    Predictions with sequences get two more columns at the end, ``true_sequence`` and ``pred_sequence``
    (:func:`mlcdf.labels.ids_to_sequence`); :func:`read_predictions` ignores them.
    """
    with_sequences = predictions.true_sequences is not None and predictions.pred_sequences is not None
    with atomic_open(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(predictions_header(predictions.labels) + (["true_sequence", "pred_sequence"] if with_sequences else []))
        targets = np.asarray(predictions.targets).astype(np.int64).tolist()
        scores = np.asarray(predictions.scores, dtype=np.float64).tolist()
        for index, (file_path, target_row, score_row) in enumerate(zip(predictions.file_paths, targets, scores)):
            row = [file_path, *(cell for pair in zip(target_row, map(repr, score_row)) for cell in pair)]
            if with_sequences:
                assert predictions.true_sequences is not None and predictions.pred_sequences is not None
                row += [ids_to_sequence(predictions.true_sequences[index], predictions.labels)]
                row += [ids_to_sequence(predictions.pred_sequences[index], predictions.labels)]
            writer.writerow(row)


def _labels_from_header(path: Path, header: list[str]) -> tuple[tuple[str, ...], list[int], list[int]]:
    """Label names (in the order of the target columns) and the column index of each target and score."""
    if len(set(header)) != len(header):
        duplicates = sorted({name for name in header if header.count(name) > 1})
        raise SchemaError(path, f"repeated column(s) {duplicates}", line=1)
    if "file_path" not in header:
        raise SchemaError(path, f"no 'file_path' column; header is {header}", line=1)
    targets = [name[len(TARGET_PREFIX) :] for name in header if name.startswith(TARGET_PREFIX)]
    scores = [name[len(SCORE_PREFIX) :] for name in header if name.startswith(SCORE_PREFIX)]
    if not targets or set(targets) != set(scores):
        raise SchemaError(
            path,
            f"need a target_<label> and a score_<label> column for each label; got targets {targets} and scores {scores}",
            line=1,
        )
    return (
        tuple(targets),
        [header.index(TARGET_PREFIX + label) for label in targets],
        [header.index(SCORE_PREFIX + label) for label in targets],
    )


def _parse_score(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SchemaError(path, f"{column} is {text!r}, not a number", line=line) from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise SchemaError(path, f"{column} is {text!r}, expected a probability in [0, 1]", line=line)
    return value


def read_predictions(path: str | Path, *, labels: Sequence[str] | None = None) -> Predictions:
    """Read and check a predictions file.

    The file has a ``file_path`` column and a ``target_<label>``/``score_<label>`` pair per label. The
    label order is the order of the target columns. Other columns are ignored. Targets must be 0 or 1
    and scores numbers in [0, 1].

    Args:
        path: the CSV file (UTF-8, with or without a byte-order mark).
        labels: the expected label names, in order. Use None to accept the file's labels.

    Raises:
        MissingArtifactError: there is no such file.
        SchemaError: the file breaks the format. The message names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(path, "a predictions CSV written by 'mlcdf evaluate' or in its format")
    records = read_csv_rows(path, encoding="utf-8-sig")
    _, header = next(records, (1, None))
    if header is None:
        raise SchemaError(path, "empty file; expected a header row", line=1)
    names, target_columns, score_columns = _labels_from_header(path, header)
    if labels is not None and names != tuple(labels):
        raise SchemaError(path, f"labels are {list(names)}, expected {list(labels)}", line=1)
    path_column = header.index("file_path")
    file_paths: list[str] = []
    targets: list[list[int]] = []
    scores: list[list[float]] = []
    for line, record in records:
        if len(record) != len(header):
            raise SchemaError(path, f"{len(record)} columns, expected {len(header)}", line=line)
        target_row = [record[column] for column in target_columns]
        if any(value not in ("0", "1") for value in target_row):
            raise SchemaError(path, f"target columns must be 0 or 1, got {target_row}", line=line)
        file_paths.append(record[path_column])
        targets.append([int(value) for value in target_row])
        scores.append([_parse_score(path, line, header[column], record[column]) for column in score_columns])
    if not file_paths:
        raise SchemaError(path, "no predictions after the header", line=2)
    return Predictions(
        file_paths=file_paths,
        labels=names,
        targets=np.array(targets, dtype=np.uint8),
        scores=np.array(scores, dtype=np.float64),
        origin=str(path),
    )


def _percent(value: float) -> float | None:
    """A fraction as a percentage for metrics.json. An undefined (NaN) value becomes None (JSON null)."""
    return None if math.isnan(value) else 100.0 * float(value)


def _check_same_labels(reference: Predictions, other: Predictions) -> None:
    if tuple(other.labels) != tuple(reference.labels):
        raise MlcdfError(
            f"{other.origin or 'tuning predictions'}: labels {list(other.labels)} differ from "
            f"{list(reference.labels)} of {reference.origin or 'the predictions evaluated'}"
        )


def compute_metrics(
    predictions: Predictions,
    *,
    threshold: float | Sequence[float] | np.ndarray = 0.5,
    tune_on: Predictions | None = None,
    num_params: int | None = None,
) -> dict:
    """All metrics of one split as the ``metrics.json`` document (see the module docstring).

    Args:
        predictions: the targets and scores to evaluate.
        threshold: the decision threshold, a scalar or one value per label. With ``tune_on``, it is the
            fallback for labels that have no positives there.
        tune_on: other predictions (validation) with the same labels. If given, per-label thresholds
            are tuned on them for F1 (:func:`mlcdf.metrics.tune_thresholds`) and applied here. Tuning on
            the predictions being evaluated would be optimistic.
        num_params: the model's parameter count (an integer, not millions), if known.

    Returns:
        A JSON-ready dict.

    Raises:
        MlcdfError: ``tune_on`` has different labels.
    """
    labels = tuple(predictions.labels)
    y_true, y_score = predictions.targets, predictions.scores
    # The threshold as a float when it is one number (a 0-d array included), None when there is one per label.
    scalar_threshold = float(np.asarray(threshold)) if np.ndim(threshold) == 0 else None
    if tune_on is not None:
        _check_same_labels(predictions, tune_on)
        if scalar_threshold is None:
            raise ValueError("with tune_on, threshold must be a scalar: the fallback for labels without positives")
    # Undefined cases (a label without positives, only fakes) are expected in small or custom data:
    # they go into metrics.json and the report once each instead of repeating on stderr.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        if tune_on is None:
            thresholds = per_label_thresholds(threshold, len(labels))
        else:
            assert scalar_threshold is not None, "checked above: with tune_on, the threshold is a scalar"
            thresholds = tune_thresholds(tune_on.targets, tune_on.scores, default=scalar_threshold, labels=labels)
        summary = paper_metrics(y_true, y_score, threshold=thresholds, labels=labels)
        ap = average_precision(y_true, y_score, average=None, labels=labels)
        precision, recall, f1 = precision_recall_f1(y_true, y_score, threshold=thresholds, average=None, labels=labels)
        steps = predictions.steps
        by_steps = average_precision_by_num_steps(y_true, y_score, steps)
        is_fake = np.asarray(y_true).any(axis=1)
        real_vs_fake = {
            "roc_auc": _percent(real_fake_roc_auc(y_true, y_score)),
            "accuracy": _percent(real_fake_accuracy(y_true, y_score, threshold=thresholds)),
            "num_real": int((~is_fake).sum()),
            "num_fake": int(is_fake.sum()),
        }
        exact_match = exact_match_ratio(y_true, y_score, threshold=thresholds)
        hamming = hamming_loss(y_true, y_score, threshold=thresholds)
    undefined = [w for w in caught if issubclass(w.category, UndefinedMetricWarning)]
    for warning in caught:
        if warning not in undefined:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    support = np.asarray(y_true, dtype=np.int64).sum(axis=0)
    sequence_metrics = {}
    if predictions.true_sequences is not None and predictions.pred_sequences is not None:
        # Seq-DeepFake's metrics, already in percent.
        sequence_metrics = {
            "Fixed-Acc": fixed_accuracy(predictions.true_sequences, predictions.pred_sequences),
            "Adaptive-Acc": adaptive_accuracy(predictions.true_sequences, predictions.pred_sequences),
            "sequence_decoder": predictions.sequence_decoder or {"kind": "model"},
        }
        if predictions.oracle_sequences is not None:
            sequence_metrics["oracle_order"] = {
                "Fixed-Acc": fixed_accuracy(predictions.true_sequences, predictions.oracle_sequences),
                "Adaptive-Acc": adaptive_accuracy(predictions.true_sequences, predictions.oracle_sequences),
            }
    return {
        **{name: _percent(summary[name]) for name in PAPER_METRICS},
        **sequence_metrics,
        "threshold": scalar_threshold if tune_on is None and scalar_threshold is not None else dict(zip(labels, thresholds.tolist())),
        "threshold_tuning": None
        if tune_on is None
        else {"objective": "F1 per label", "tuned_on": tune_on.origin, "num_images": len(tune_on), "default": scalar_threshold},
        "num_params": None if num_params is None else round(num_params / 1e6, 4),
        "num_images": len(predictions),
        "labels": list(labels),
        "source": predictions.origin,
        "per_label": {
            label: {
                "AP": _percent(ap[j]),
                "precision": _percent(precision[j]),
                "recall": _percent(recall[j]),
                "F1": _percent(f1[j]),
                "support": int(support[j]),
                "threshold": float(thresholds[j]),
            }
            for j, label in enumerate(labels)
        },
        "labels_without_positives": [label for label, count in zip(labels, support) if count == 0],
        "exact_match": _percent(exact_match),
        "hamming_loss": _percent(hamming),
        "real_vs_fake": real_vs_fake,
        "mAP_by_num_steps": {str(k): {"num_images": int((steps == k).sum()), "mAP": _percent(value)} for k, value in by_steps.items()},
        "warnings": list(dict.fromkeys(str(w.message) for w in undefined)),
        "mlcdf_version": __version__,
    }


def read_metrics(path: str | Path) -> dict:
    """Read a ``metrics.json`` and check the values that tables rely on.

    Raises:
        MissingArtifactError: there is no such file.
        SchemaError: it is not UTF-8 JSON, or a paper figure, ``num_params`` or ``labels`` is missing or
            of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(path, "run 'mlcdf evaluate' first")
    try:
        document = read_json_object(path)
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise SchemaError(path, "not UTF-8 text", line=line) from None
    for key in (*PAPER_METRICS, "num_params"):
        if key in PAPER_METRICS and key not in document:
            raise SchemaError(path, f"missing {key!r}")
        value = document.get(key)
        # bool is an int to Python, and json reads NaN and Infinity: none of them is a figure.
        if not (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))):
            raise SchemaError(path, f"{key!r} is {value!r}, expected a finite number or null")
    labels = document.get("labels")
    if not (isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)):
        raise SchemaError(path, "missing the 'labels' list of names")
    return document


def format_percent(value: float | None, digits: int = 2) -> str:
    """A percentage of metrics.json as text; ``n/a`` for an undefined (null) value."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _threshold_sentence(metrics: dict) -> str:
    tuning = metrics["threshold_tuning"]
    if tuning is not None:
        return f"Per-label thresholds tuned for F1 on {tuning['tuned_on']} ({tuning['num_images']} images); see the per-label table."
    if isinstance(metrics["threshold"], dict):
        return "Per-label thresholds; see the per-label table."
    return f"A label is predicted when its score is >= {metrics['threshold']:g}."


def _sequence_lines(metrics: dict) -> list[str]:
    """report.md's section on Seq-DeepFake's sequence metrics, when metrics.json has them."""
    if "Fixed-Acc" not in metrics:
        return []
    decoder = metrics.get("sequence_decoder", {}).get("kind", "model")
    how = "the model's decoded sequences" if decoder == "model" else "the predicted set in its most frequent training order"
    lines = [
        "## Seq-DeepFake's sequence metrics (percent)",
        "",
        f"Sequences: {how}.",
        "",
        "| sequences | Fixed-Acc | Adaptive-Acc |",
        "| --- | ---: | ---: |",
        f"| predicted | {format_percent(metrics['Fixed-Acc'])} | {format_percent(metrics['Adaptive-Acc'])} |",
    ]
    if "oracle_order" in metrics:
        oracle = metrics["oracle_order"]
        lines.append(
            f"| true set, most frequent order (oracle) | {format_percent(oracle['Fixed-Acc'])} | {format_percent(oracle['Adaptive-Acc'])} |"
        )
    return [*lines, ""]


def render_report(metrics: dict) -> str:
    """``report.md``: the numbers of a ``metrics.json`` document, with definitions and plots."""
    params = "unknown" if metrics["num_params"] is None else f"{metrics['num_params']:.1f} M"
    lines = [
        "# Evaluation",
        "",
        f"Source: `{metrics['source'] or 'n/a'}`. {metrics['num_images']} images, labels: "
        f"{', '.join(metrics['labels'])}. Parameters: {params}. {_threshold_sentence(metrics)}",
        "",
        "## The paper's metrics (percent)",
        "",
        "| " + " | ".join(PAPER_METRICS) + " |",
        "|" + " ---: |" * len(PAPER_METRICS),
        "| " + " | ".join(format_percent(metrics[name]) for name in PAPER_METRICS) + " |",
        "",
        *_sequence_lines(metrics),
        "## Per label (percent)",
        "",
        "| label | support | AP | precision | recall | F1 | threshold |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, row in metrics["per_label"].items():
        lines.append(
            f"| {label} | {row['support']} | {format_percent(row['AP'])} | {format_percent(row['precision'])} | "
            f"{format_percent(row['recall'])} | {format_percent(row['F1'])} | {row['threshold']:.4g} |"
        )
    rvf = metrics["real_vs_fake"]
    lines += [
        "",
        "## Beyond the paper (percent)",
        "",
        f"- Exact match (all labels right): {format_percent(metrics['exact_match'])}",
        f"- Hamming loss (wrong label decisions): {format_percent(metrics['hamming_loss'])}",
        f"- Real vs fake ({rvf['num_real']} real, {rvf['num_fake']} fake; fake score = highest label score): "
        f"ROC-AUC {format_percent(rvf['roc_auc'])}, accuracy {format_percent(rvf['accuracy'])}",
        "",
        "mAP by number of manipulation steps (labels present in all or none of a group are left out):",
        "",
        "| steps | images | mAP |",
        "| ---: | ---: | ---: |",
        *(f"| {k} | {row['num_images']} | {format_percent(row['mAP'])} |" for k, row in metrics["mAP_by_num_steps"].items()),
        "",
        "## Definitions",
        "",
        "- AP per label: scikit-learn's `average_precision_score` (sum over score steps of "
        "(R_n - R_n-1) * P_n; tied scores form one step). mAP: mean AP over labels.",
        "- P_j = TP/(TP+FP) (0 when label j is never predicted), R_j = TP/(TP+FN), F1_j = 2PR/(P+R).",
        "- CP, CR, CF1: means over labels of P_j, R_j, F1_j. OP, OR: the same ratios with TP, FP, FN "
        "summed over labels; OF1 = 2 OP OR / (OP + OR).",
        "- A label without positives has no AP, recall or F1 and is left out of every per-class mean.",
        "",
        "## Plots",
        "",
        *(
            [f"Not drawn: {left_out}.", ""]
            if (left_out := plots_left_out(len(metrics["labels"])))
            else [f"![Precision-recall curves]({PR_CURVES_FILE})", "", f"![AP per label]({AP_BARS_FILE})", ""]
        ),
    ]
    if metrics["warnings"]:
        lines += ["## Warnings", "", *(f"- {message}" for message in metrics["warnings"]), ""]
    return "\n".join(lines)


def _plot_precision_recall(path: Path, predictions: Predictions, metrics: dict) -> None:
    # Imported here: matplotlib costs about a second, and only this stage draws. A bare Figure (no
    # pyplot) renders with Agg and touches no global backend state, so it works without a display.
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    many = len(predictions.labels) > MAX_LABELS_IN_PLOT
    # Many labels: the legend goes beside the axes in columns of 20 entries, and the figure widens for it.
    legend_columns = math.ceil(len(predictions.labels) / 20)
    figure = Figure(figsize=(6 + 2.6 * legend_columns if many else 6, 5), layout="constrained")
    tab20 = colormaps["tab20"]
    axes = figure.add_subplot()
    for j, label in enumerate(predictions.labels):
        column = np.asarray(predictions.targets)[:, j]
        ap = metrics["per_label"][label]["AP"]
        if ap is None:
            continue
        precision, recall, _ = precision_recall_curve(column, predictions.scores[:, j])
        # Many labels: 20 colours, then the same colours dashed and dotted, so that no two curves look alike.
        style: dict[str, Any] = {} if not many else {"color": tab20(j % 20), "linestyle": ("-", "--", ":")[j // 20 % 3]}
        axes.step(recall, precision, where="post", label=f"{label} (AP {ap:.1f})", **style)
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    axes.set_title(f"Precision-recall per label (mAP {format_percent(metrics['mAP'], 1)})")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        if many:
            axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1), ncols=legend_columns, fontsize="small")
        else:
            axes.legend(loc="lower left")
    figure.savefig(path, dpi=120)


def _plot_average_precision(path: Path, metrics: dict) -> None:
    from matplotlib.figure import Figure

    labels = metrics["labels"]
    values = [metrics["per_label"][label]["AP"] for label in labels]
    heights = [0 if value is None else value for value in values]
    title = f"Average precision per label (dashed: mAP {format_percent(metrics['mAP'], 1)})"
    if len(labels) > MAX_LABELS_IN_PLOT:
        # Many labels: horizontal bars, one row per label top to bottom, so long names stay readable.
        figure = Figure(figsize=(7, 0.28 * len(labels) + 1.5), layout="constrained")
        axes = figure.add_subplot()
        bars = axes.barh(labels, heights, color="tab:blue")
        axes.invert_yaxis()
        axes.bar_label(bars, labels=[format_percent(value, 1) for value in values], padding=2, fontsize="small")
        if metrics["mAP"] is not None:
            axes.axvline(metrics["mAP"], color="tab:red", linestyle="--")
        axes.tick_params(axis="y", labelsize="small")
        axes.set(xlabel="AP (%)", xlim=(0, 112), title=title)
        figure.savefig(path, dpi=120)
        return
    figure = Figure(figsize=(max(4, 1.0 * len(labels) + 2), 4), layout="constrained")
    axes = figure.add_subplot()
    bars = axes.bar(labels, heights, color="tab:blue")
    axes.bar_label(bars, labels=[format_percent(value, 1) for value in values], padding=2)
    if metrics["mAP"] is not None:
        axes.axhline(metrics["mAP"], color="tab:red", linestyle="--")
    axes.set(ylabel="AP (%)", ylim=(0, 108), title=title)
    figure.savefig(path, dpi=120)


def write_evaluation(
    out_dir: str | Path,
    predictions: Predictions,
    *,
    threshold: float | Sequence[float] | np.ndarray = 0.5,
    tune_on: Predictions | None = None,
    num_params: int | None = None,
    write_more: Callable[[Path], None] | None = None,
) -> dict:
    """Evaluate ``predictions`` and write the evaluation folder atomically (see the module docstring).

    Args:
        out_dir: the folder to write. A previous evaluation folder there is replaced. Any other
            non-empty folder is refused.
        predictions: targets and scores.
        threshold, tune_on, num_params: as for :func:`compute_metrics`.
        write_more: writes further files into the folder being built (the robustness files), so they
            appear with the others or not at all.

    Returns:
        The metrics.json document.

    Raises:
        MlcdfError: ``out_dir`` cannot be replaced, or ``tune_on`` has different labels.
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir, **EVALUATION_OUTPUT)
    metrics = compute_metrics(predictions, threshold=threshold, tune_on=tune_on, num_params=num_params)
    left_out = plots_left_out(len(predictions.labels))
    if left_out is not None:  # in metrics.json's warnings, which the command prints
        metrics["warnings"].append(left_out)
    with atomic_dir(out_dir, **EVALUATION_OUTPUT) as tmp:
        write_predictions(tmp / PREDICTIONS_FILE, predictions)
        write_json(tmp / METRICS_FILE, metrics)
        (tmp / REPORT_FILE).write_text(render_report(metrics), encoding="utf-8")
        if left_out is None:
            _plot_precision_recall(tmp / PR_CURVES_FILE, predictions, metrics)
            _plot_average_precision(tmp / AP_BARS_FILE, metrics)
        if write_more is not None:
            write_more(tmp)
    return metrics


def evaluate_predictions_file(
    predictions_path: str | Path,
    out_dir: str | Path,
    *,
    threshold: float = 0.5,
    tune_on_path: str | Path | None = None,
) -> dict:
    """``mlcdf evaluate --predictions``: score a predictions file from any tool and write ``out_dir``.

    Args:
        predictions_path: a file in the predictions.csv format.
        out_dir: the evaluation folder to write.
        threshold: the decision threshold, or the fallback of the tuned thresholds.
        tune_on_path: validation predictions (same labels) to tune per-label thresholds on.

    Returns:
        The metrics.json document.
    """
    check_output_folder(out_dir)
    check_output_apart(out_dir, ("--predictions", predictions_path), ("--val-predictions", tune_on_path))
    predictions = read_predictions(predictions_path)
    tune_on = None if tune_on_path is None else read_predictions(tune_on_path, labels=predictions.labels)
    return write_evaluation(out_dir, predictions, threshold=threshold, tune_on=tune_on)


def default_eval_dir(run_dir: str | Path, split: str) -> Path:
    """``RUN/eval/<split>``, where ``mlcdf report`` looks for a run's metrics."""
    return Path(run_dir) / "eval" / split
