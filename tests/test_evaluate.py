import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError
from mlcdf.evaluation import evaluate
from mlcdf.evaluation.evaluate import (
    AP_BARS_FILE,
    METRICS_FILE,
    PAPER_METRICS,
    PR_CURVES_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    Predictions,
    compute_metrics,
    read_metrics,
    read_predictions,
    write_evaluation,
    write_predictions,
)
from mlcdf.evaluation.runs import evaluate_run
from mlcdf.labels import SUBSETS
from mlcdf.metrics import paper_metrics, tune_thresholds

LABELS = SUBSETS["facial_components"]
runner = CliRunner()


def make_predictions(n=60, seed=0, origin="test") -> Predictions:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, len(LABELS))) < 0.4).astype(np.uint8)
    targets[: len(LABELS)] = np.eye(len(LABELS), dtype=np.uint8)
    targets[-5:] = 0  # real images
    scores = np.clip(0.4 * targets + rng.random(targets.shape) * 0.6, 0, 1)
    scores[0, 0] = 0.1 + 0.2  # not exactly 0.3: the file must keep every bit
    return Predictions([f"facial_components/images/test/x/{i:06d}.png" for i in range(n)], LABELS, targets, scores, origin=origin)


def write_csv(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_predictions_round_trip_keeps_full_precision(tmp_path):
    predictions = make_predictions()
    write_predictions(tmp_path / "p.csv", predictions)
    header = next(csv.reader((tmp_path / "p.csv").read_text(encoding="utf-8").splitlines()))
    assert header[:5] == ["file_path", "target_nose", "score_nose", "target_eye", "score_eye"]
    back = read_predictions(tmp_path / "p.csv", labels=LABELS)
    assert back.labels == LABELS and back.file_paths == predictions.file_paths
    np.testing.assert_array_equal(back.targets, predictions.targets)
    np.testing.assert_array_equal(back.scores, predictions.scores)  # bit for bit
    assert back.origin == str(tmp_path / "p.csv")


def test_reader_finds_columns_by_name(tmp_path):
    path = write_csv(
        tmp_path / "other.csv",
        [["score_b", "id", "target_a", "file_path", "target_b", "score_a"], ["0.25", "7", "1", "img.png", "0", "0.75"]],
    )
    predictions = read_predictions(path)
    assert predictions.labels == ("a", "b")
    np.testing.assert_array_equal(predictions.targets, [[1, 0]])
    np.testing.assert_array_equal(predictions.scores, [[0.75, 0.25]])
    np.testing.assert_array_equal(predictions.steps, [1])


GOOD_HEADER = ["file_path", "target_a", "score_a"]


@pytest.mark.parametrize(
    "rows, line, message",
    [
        ([GOOD_HEADER, ["x.png", "1", "0.5"], ["y.png", "2", "0.5"]], 3, "0 or 1"),
        ([GOOD_HEADER, ["x.png", "1", "high"]], 2, "not a number"),
        ([GOOD_HEADER, ["x.png", "1", "1.5"]], 2, r"\[0, 1\]"),
        ([GOOD_HEADER, ["x.png", "1", "nan"]], 2, r"\[0, 1\]"),
        ([GOOD_HEADER, ["x.png", "1"]], 2, "2 columns, expected 3"),
        ([GOOD_HEADER], 2, "no predictions"),
        ([["file_path", "target_a", "score_b"], ["x.png", "1", "0.5"]], 1, "target_<label> and a score_<label>"),
        ([["path", "target_a", "score_a"]], 1, "file_path"),
        ([["file_path", "target_a", "score_a", "target_a"]], 1, "repeated"),
    ],
)
def test_reader_names_file_and_line(tmp_path, rows, line, message):
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(SchemaError, match=message) as caught:
        read_predictions(path)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{path}:{line}: ")


def test_reader_checks_labels_and_existence(tmp_path):
    path = write_csv(tmp_path / "p.csv", [GOOD_HEADER, ["x.png", "1", "0.5"]])
    with pytest.raises(SchemaError, match="expected"):
        read_predictions(path, labels=("b",))
    with pytest.raises(MissingArtifactError):
        read_predictions(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SchemaError, match="empty"):
        read_predictions(tmp_path / "empty.csv")


def test_compute_metrics_document():
    predictions = make_predictions()
    metrics = compute_metrics(predictions, threshold=0.4, num_params=42_512_345)
    expected = paper_metrics(predictions.targets, predictions.scores, threshold=0.4)
    for name in PAPER_METRICS:
        assert metrics[name] == pytest.approx(100 * expected[name])
    assert metrics["threshold"] == 0.4 and metrics["threshold_tuning"] is None
    assert metrics["num_params"] == pytest.approx(42.5123)
    assert metrics["labels"] == list(LABELS) and metrics["num_images"] == 60
    assert set(metrics["per_label"]["nose"]) == {"AP", "precision", "recall", "F1", "support", "threshold"}
    assert metrics["per_label"]["nose"]["support"] == int(predictions.targets[:, 0].sum())
    assert metrics["real_vs_fake"]["num_real"] == int((predictions.targets.sum(axis=1) == 0).sum())
    assert set(metrics["mAP_by_num_steps"]) <= {"1", "2", "3", "4", "5"}
    assert metrics["warnings"] == [] and metrics["labels_without_positives"] == []
    json.dumps(metrics, allow_nan=False)  # strict JSON: undefined values are null, never NaN


def test_label_without_positives_is_null_and_reported():
    predictions = make_predictions()
    targets = predictions.targets.copy()
    targets[:, 4] = 0
    metrics = compute_metrics(Predictions(predictions.file_paths, LABELS, targets, predictions.scores))
    hair = metrics["per_label"]["hair"]
    assert hair["AP"] is None and hair["recall"] is None and hair["support"] == 0
    assert metrics["labels_without_positives"] == ["hair"]
    assert any("'hair'" in message for message in metrics["warnings"])
    json.dumps(metrics, allow_nan=False)


def test_tuned_thresholds_come_from_validation_and_are_recorded():
    test, val = make_predictions(seed=1), make_predictions(seed=2, origin="val.csv")
    metrics = compute_metrics(test, tune_on=val)
    tuned = tune_thresholds(val.targets, val.scores)
    assert metrics["threshold"] == dict(zip(LABELS, tuned.tolist()))
    assert metrics["threshold_tuning"] == {"objective": "F1 per label", "tuned_on": "val.csv", "num_images": 60, "default": 0.5}
    expected = paper_metrics(test.targets, test.scores, threshold=tuned)
    assert metrics["CF1"] == pytest.approx(100 * expected["CF1"])
    other = Predictions(val.file_paths, tuple("abcde"), val.targets, val.scores)
    with pytest.raises(MlcdfError, match="differ"):
        compute_metrics(test, tune_on=other)


def test_write_evaluation_writes_every_file(tmp_path):
    out = tmp_path / "eval"
    metrics = write_evaluation(out, make_predictions())
    assert sorted(p.name for p in out.iterdir()) == sorted([PREDICTIONS_FILE, METRICS_FILE, REPORT_FILE, PR_CURVES_FILE, AP_BARS_FILE])
    for png in (PR_CURVES_FILE, AP_BARS_FILE):
        data = (out / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    assert read_metrics(out / METRICS_FILE) == metrics
    report = (out / REPORT_FILE).read_text()
    assert f"{metrics['mAP']:.2f}" in report and f"]({PR_CURVES_FILE})" in report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_write_evaluation_is_all_or_nothing(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(evaluate, "_plot_average_precision", broken)
    with pytest.raises(RuntimeError):
        write_evaluation(tmp_path / "eval", make_predictions())
    assert list(tmp_path.iterdir()) == []


def test_write_evaluation_refuses_to_replace_other_folders(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(MlcdfError, match="not written by 'mlcdf evaluate'"):
        write_evaluation(tmp_path, make_predictions())
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    write_evaluation(tmp_path / "eval", make_predictions())
    write_evaluation(tmp_path / "eval", make_predictions(seed=3))  # an evaluation folder is replaced


def fake_inference(monkeypatch, calls):
    """Stands in for mlcdf.inference.runs, which the evaluate stage only calls, and for the bundle check."""

    def predict_split(run_dir, split, checkpoint, device, batch_size, progress):
        calls.append((split, checkpoint, device, batch_size))
        p = make_predictions(seed={"test": 1, "val": 2}[split])
        return p.targets, p.scores.astype(np.float32), p.file_paths, p.steps, LABELS, 23_512_325

    monkeypatch.setitem(sys.modules, "mlcdf.inference.runs", types.SimpleNamespace(predict_split=predict_split))
    monkeypatch.setitem(sys.modules, "mlcdf.inference.bundle", types.SimpleNamespace(is_bundle_reference=lambda run: False))


def test_evaluate_run_writes_into_the_run(tmp_path, monkeypatch):
    calls = []
    fake_inference(monkeypatch, calls)
    out, metrics = evaluate_run(tmp_path / "run", checkpoint="ema", device="cpu", batch_size=8, tune_on_val=True)
    assert out == tmp_path / "run" / "eval" / "test" and (out / METRICS_FILE).is_file()
    assert calls == [("test", "ema", "cpu", 8), ("val", "ema", "cpu", 8)]
    assert metrics["num_params"] == pytest.approx(23.5123)
    assert metrics["threshold_tuning"]["tuned_on"].endswith("(val split, ema checkpoint)")
    with pytest.raises(MlcdfError, match="optimistic"):
        evaluate_run(tmp_path / "run", split="val", tune_on_val=True)


def test_evaluate_run_without_inference_module(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlcdf.inference.runs", None)  # as if the module did not exist
    with pytest.raises(MlcdfError, match="needs the trainer"):
        evaluate_run(tmp_path)


def test_cli_predictions(tmp_path):
    predictions = tmp_path / "preds.csv"
    write_predictions(predictions, make_predictions())
    result = runner.invoke(app, ["evaluate", "--predictions", str(predictions), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "CF1" in result.stdout and "nose" in result.stdout
    assert (tmp_path / "eval" / METRICS_FILE).is_file()
    result = runner.invoke(
        app, ["evaluate", "--predictions", str(predictions), "--out", str(tmp_path / "eval"), "--json", "--threshold", "0.3"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["threshold"] == 0.3


def test_cli_tune_thresholds_on_validation_file(tmp_path):
    test, val = tmp_path / "test.csv", tmp_path / "val.csv"
    write_predictions(test, make_predictions(seed=1))
    write_predictions(val, make_predictions(seed=2))
    args = ["evaluate", "--predictions", str(test), "--out", str(tmp_path / "eval"), "--tune-thresholds", "--json"]
    result = runner.invoke(app, [*args, "--val-predictions", str(val)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["threshold_tuning"]["tuned_on"] == str(val)
    assert runner.invoke(app, args).exit_code == 2  # tuning needs the validation file


def test_cli_malformed_predictions_exit_2_and_write_nothing(tmp_path):
    path = write_csv(tmp_path / "bad.csv", [GOOD_HEADER, ["x.png", "1", "0.5"], ["y.png", "yes", "0.5"]])
    result = runner.invoke(app, ["evaluate", "--predictions", str(path), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and f"{path}:3:" in result.stderr
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(
    "args",
    [
        [],  # neither --run nor --predictions
        ["--predictions", "{preds}"],  # no --out
        ["--predictions", "{preds}", "--out", "{tmp}/e", "--run", "{tmp}"],
        ["--predictions", "{preds}", "--out", "{tmp}/e", "--checkpoint", "ema"],
        ["--run", "{tmp}", "--val-predictions", "{preds}"],
        ["--predictions", "{preds}", "--out", "{tmp}/e", "--threshold", "1.5"],
    ],
)
def test_cli_rejects_contradictory_options(tmp_path, args):
    preds = tmp_path / "preds.csv"
    write_predictions(preds, make_predictions())
    result = runner.invoke(app, ["evaluate", *(a.format(preds=preds, tmp=tmp_path) for a in args)])
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "e").exists()
