"""evaluate --run by value, on a real tiny run: metrics.json equals the metrics of the model's own outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from by_hand import checkpoint_weights, scores_by_hand, train_tiny_run
from sklearn.metrics import average_precision_score
from toy import write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.metrics import paper_metrics, tune_thresholds

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()


def read_split(prepared: Path, split: str) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Image paths, 0/1 targets and manipulation steps of a prepared split, read from its files."""
    meta = json.loads((prepared / "meta.json").read_text())
    with open(prepared / f"{split}.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    paths = [Path(meta["root"]) / row["file_path"] for row in rows]
    targets = np.array([[int(row[label]) for label in meta["labels"]] for row in rows])
    steps = np.array([len(row["sequence"].split("-")) if row["sequence"] else 0 for row in rows])
    return paths, targets, steps


def read_predictions_csv(path: Path, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    targets = np.array([[int(row[f"target_{label}"]) for label in labels] for row in rows])
    scores = np.array([[float(row[f"score_{label}"]) for label in labels] for row in rows])
    return targets, scores


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny run evaluated on test twice: at threshold 0.5, and with thresholds tuned on val."""
    folder = tmp_path_factory.mktemp("evaluate")
    prepared = write_toy_prepared(folder, {"train": 16, "val": 16, "test": 24})
    run = train_tiny_run(prepared, folder / "run")
    for extra, out in (([], run / "eval" / "test"), (["--tune-thresholds"], folder / "tuned")):
        result = runner.invoke(
            app, ["evaluate", "--run", str(run), "--split", "test", "--device", "cpu", "--quiet", "--out", str(out), *extra]
        )
        assert result.exit_code == 0, result.output
    return prepared, run, run / "eval" / "test", folder / "tuned"


def percent(value: float) -> float:
    return pytest.approx(100 * value, abs=1e-9)


def check_against_outputs(evaluation: Path, thresholds: np.ndarray) -> None:
    """Every figure of metrics.json against the metric definitions, on the scores in predictions.csv."""
    metrics = json.loads((evaluation / "metrics.json").read_text())
    labels = metrics["labels"]
    y_true, y_score = read_predictions_csv(evaluation / "predictions.csv", labels)
    assert [metrics["per_label"][label]["threshold"] for label in labels] == pytest.approx(thresholds.tolist(), abs=1e-12)
    paper = paper_metrics(y_true, y_score, threshold=thresholds, labels=labels)
    for name in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert metrics[name] == percent(paper[name]), name
    decided = y_score >= thresholds
    assert metrics["exact_match"] == percent(np.mean((decided == y_true.astype(bool)).all(axis=1)))
    assert metrics["hamming_loss"] == percent(np.mean(decided != y_true.astype(bool)))
    for j, label in enumerate(labels):
        true_positives = int((decided[:, j] & (y_true[:, j] == 1)).sum())
        precision = true_positives / max(int(decided[:, j].sum()), 1)
        recall = true_positives / int(y_true[:, j].sum())
        row = metrics["per_label"][label]
        assert row["support"] == int(y_true[:, j].sum())
        assert row["AP"] == percent(average_precision_score(y_true[:, j], y_score[:, j]))
        assert row["precision"] == percent(precision) and row["recall"] == percent(recall)
        assert row["F1"] == percent(0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))


def test_predictions_are_the_models_own_outputs(evaluated):
    prepared, run, evaluation, _ = evaluated
    labels = json.loads((evaluation / "metrics.json").read_text())["labels"]
    paths, targets, _ = read_split(prepared, "test")
    y_true, y_score = read_predictions_csv(evaluation / "predictions.csv", labels)
    np.testing.assert_array_equal(y_true, targets)
    np.testing.assert_allclose(y_score, scores_by_hand(run, checkpoint_weights(run, "best"), paths), rtol=0, atol=1e-6)


def test_metrics_equal_the_definitions_at_the_threshold(evaluated):
    _, _, evaluation, _ = evaluated
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["labels_without_positives"] == [], "every label needs positives for the per-label checks"
    check_against_outputs(evaluation, np.full(len(metrics["labels"]), 0.5))


def test_metrics_equal_the_definitions_at_thresholds_tuned_on_val(evaluated):
    prepared, run, evaluation, tuned = evaluated
    labels = json.loads((tuned / "metrics.json").read_text())["labels"]
    val_paths, val_targets, _ = read_split(prepared, "val")
    thresholds = tune_thresholds(val_targets, scores_by_hand(run, checkpoint_weights(run, "best"), val_paths), default=0.5)
    y_true, y_score = read_predictions_csv(tuned / "predictions.csv", labels)
    # The tuned thresholds must change some decision, or this test could not tell them from 0.5.
    assert not np.array_equal(y_score >= thresholds, y_score >= 0.5)
    exact = [np.mean(((y_score >= t) == y_true.astype(bool)).all(axis=1)) for t in (thresholds, 0.5)]
    assert exact[0] != exact[1], "the exact match at the tuned thresholds must differ from the one at 0.5"
    check_against_outputs(tuned, thresholds)


def test_map_by_number_of_steps(evaluated):
    prepared, _, evaluation, _ = evaluated
    metrics = json.loads((evaluation / "metrics.json").read_text())
    y_true, y_score = read_predictions_csv(evaluation / "predictions.csv", metrics["labels"])
    _, _, steps = read_split(prepared, "test")
    expected = {}
    for k in sorted(set(steps[steps > 0].tolist())):
        group = steps == k
        present = y_true[group].sum(axis=0)
        # Labels present in all or none of the group's images say nothing about the ranking.
        informative = [j for j in range(y_true.shape[1]) if 0 < present[j] < group.sum()]
        mean_ap = np.mean([average_precision_score(y_true[group, j], y_score[group, j]) for j in informative]) if informative else None
        expected[str(k)] = {"num_images": int(group.sum()), "mAP": None if mean_ap is None else 100 * mean_ap}
    assert sum(value["mAP"] is not None for value in expected.values()) >= 2, "the test split must have informative groups"
    got = metrics["mAP_by_num_steps"]
    assert list(got) == list(expected)
    for k, value in expected.items():
        assert got[k]["num_images"] == value["num_images"]
        assert got[k]["mAP"] == (None if value["mAP"] is None else pytest.approx(value["mAP"], abs=1e-9)), k
