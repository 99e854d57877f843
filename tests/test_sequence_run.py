"""A SeqFakeFormer run through the seam: train, evaluate (Fixed-Acc and Adaptive-Acc in metrics.json), and the
one-line refusal of a dataset that records no order."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from toy import LABELS, write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.config import TrainConfig
from mlcdf.data.images import load_rgb
from mlcdf.data.prepared import load_prepared
from mlcdf.evaluation.evaluate import read_predictions
from mlcdf.evaluation.runs import evaluate_run
from mlcdf.inference.runs import load_run_model, predict_split, read_run
from mlcdf.metrics import adaptive_accuracy, fixed_accuracy
from mlcdf.models import create_model
from mlcdf.tasks import SequenceTask
from mlcdf.train.checkpoint import load_checkpoint, save_checkpoint
from mlcdf.train.stage import train

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def tiny_sequence_config(prepared: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        prepared=str(prepared),
        model="seqfakeformer_r34",
        backbone="test_resnet",
        out=str(out),
        epochs=2,
        batch_size=8,
        image_size=32,
        lr=3e-3,
        workers=0,
        device="cpu",
        patience=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_train_and_evaluate_a_sequence_model(tmp_path, monkeypatch):
    prepared = write_toy_prepared(tmp_path, {"train": 32, "val": 8, "test": 16})
    run = tmp_path / "run"
    # The trainer goes through the task for the training outputs: teacher forcing on the token targets.
    seen = []
    original = SequenceTask.train_outputs

    def spy(self, model, images, targets):
        outputs = original(self, model, images, targets)
        seen.append((targets.shape[1], outputs.shape[1:]))
        return outputs

    monkeypatch.setattr(SequenceTask, "train_outputs", spy)
    result = train(tiny_sequence_config(prepared, run))
    assert result.epochs_run == 2 and all(np.isfinite(r["train_loss"]) for r in result.history)
    assert len(seen) == 8 and set(seen) == {(7, (6, 8))}  # 4 batches x 2 epochs; L + 2 tokens in, L + 1 steps out
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["model"] == "seqfakeformer_r34" and config["input_mean"] == [0.5, 0.5, 0.5]

    # Two epochs on the toy give one sequence for every image. To see a row mix-up between files, scores and
    # sequences, evaluate weights whose greedy paths differ from image to image: a fresh model's, with a
    # sharpened output layer.
    best = run / "checkpoints" / "best.pt"
    state = load_checkpoint(best)
    torch.manual_seed(0)
    fresh = create_model("seqfakeformer_r34", 5, backbone="test_resnet")
    with torch.no_grad():
        for parameter in fresh.head.parameters():
            parameter.mul_(30)
        for parameter in fresh.input_proj.parameters():
            parameter.mul_(10)
    state["model"] = fresh.state_dict()
    save_checkpoint(best, state)

    _, metrics = evaluate_run(run, split="test", device="cpu", batch_size=5)
    on_disk = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert on_disk["Fixed-Acc"] == metrics["Fixed-Acc"] and on_disk["Adaptive-Acc"] == metrics["Adaptive-Acc"]
    assert on_disk["mAP"] is not None  # the multi-label metrics are there too
    assert on_disk["sequence_decoder"] == {"kind": "model"}
    assert on_disk["oracle_order"] == {"Fixed-Acc": 100.0, "Adaptive-Acc": 100.0}  # the toy's order is fixed

    # By hand: decode each test image alone, straight from its file, and apply the metric functions.
    info = read_run(run)
    model = load_run_model(info, "best", "cpu")
    table = load_prepared(prepared).read_split("test")
    task = SequenceTask(LABELS)
    predicted = []
    with torch.no_grad():
        for file_path in table.file_paths:
            image = torch.tensor(np.array(load_rgb(load_prepared(prepared).image_path(file_path), 32))).permute(2, 0, 1).float() / 255
            predicted.append(task.decode(model(((image - 0.5) / 0.5)[None]))[0].numpy())
    true = np.array(
        [[LABELS.index(step) + 1 for step in s.split("-")] + [0] * (5 - len(s.split("-"))) if s else [0] * 5 for s in table.sequences]
    )
    pred = np.array(predicted)
    assert len({tuple(row) for row in pred.tolist()}) >= 3
    with open(run / "eval" / "test" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["true_sequence"] for row in rows] == table.sequences
    names = dict(enumerate(LABELS, start=1))
    assert [row["pred_sequence"] for row in rows] == ["-".join(names.get(i, f"#{i}") for i in ids if i) for ids in pred.tolist()]
    split = predict_split(run, "test", device="cpu", batch_size=5)
    np.testing.assert_array_equal(split.pred_sequences, pred)
    np.testing.assert_array_equal(split.true_sequences, true)
    assert on_disk["Fixed-Acc"] == pytest.approx(fixed_accuracy(true, pred), abs=1e-9)
    assert on_disk["Adaptive-Acc"] == pytest.approx(adaptive_accuracy(true, pred), abs=1e-9)


def test_a_multilabel_run_gets_sequence_metrics_through_the_prior_order(toy_run):
    out = toy_run.parent / "eval-val"
    _, metrics = evaluate_run(toy_run, split="val", device="cpu", out_dir=out)
    assert metrics["sequence_decoder"]["kind"] == "set + prior order"
    # The toy's sequences list the labels in vocabulary order, so the prior order is ascending ids:
    # by hand, the predicted set (score >= 0.5) in ascending order against the true set in ascending order.
    predictions = read_predictions(out / "predictions.csv")
    assert metrics["sequence_decoder"]["prior"]["orders"]["1-2"] == [1, 2]

    def ascending(sets):
        return np.array([[j + 1 for j in np.flatnonzero(row)] + [0] * (5 - int(row.sum())) for row in sets])

    true, pred = ascending(predictions.targets), ascending(predictions.scores >= 0.5)
    assert metrics["Fixed-Acc"] == pytest.approx(fixed_accuracy(true, pred))
    assert metrics["Adaptive-Acc"] == pytest.approx(adaptive_accuracy(true, pred))
    assert metrics["oracle_order"] == {"Fixed-Acc": 100.0, "Adaptive-Acc": 100.0}
    with open(out / "predictions.csv", newline="") as handle:
        assert [row["pred_sequence"] for row in csv.DictReader(handle)] == [
            "-".join(LABELS[j] for j in np.flatnonzero(row)) for row in predictions.scores >= 0.5
        ]
    report = (out / "report.md").read_text()
    assert f"| predicted | {metrics['Fixed-Acc']:.2f} | {metrics['Adaptive-Acc']:.2f} |" in report
    assert "| true set, most frequent order (oracle) | 100.00 | 100.00 |" in report


def test_a_dataset_without_order_refuses_sequence_models(tmp_path):
    prepared = write_toy_prepared(tmp_path, {"train": 8, "val": 4})
    meta = json.loads((prepared / "meta.json").read_text())
    (prepared / "meta.json").write_text(json.dumps({**meta, "ordered": False}))
    out = tmp_path / "run"
    args = ["train", "--prepared", str(prepared), "--model", "seqfakeformer_r34", "--out", str(out), "--device", "cpu"]
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "order" in result.output
    assert not out.exists()
    # A multi-label model trains on it (the check is the sequence task's, not the data's).
    result = runner.invoke(app, [*args[:4], "timm:test_resnet", *args[5:], "--epochs", "1", "--image-size", "32", "--workers", "0"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("with_sequence", [False, True])
def test_own_csv_records_whether_it_has_an_order(tmp_path, with_sequence):
    from test_own_csv import prepare, write_csv, write_image

    rows = []
    for index, (split, present) in enumerate([("train", "a|b"), ("train", ""), ("val", "b"), ("test", "a")]):
        write_image(tmp_path / "images" / f"{index}.png", seed=index)
        rows.append(
            [f"{index}.png", present, split] + (["-".join(reversed(present.split("|"))) if present else ""] if with_sequence else [])
        )
    header = ["file_path", "labels", "split"] + (["sequence"] if with_sequence else [])
    csv_path = write_csv(tmp_path / "mine.csv", header, rows)
    result = prepare(csv_path, tmp_path / "images", tmp_path / "prepared")
    assert result.exit_code == 0, result.output
    prepared = load_prepared(tmp_path / "prepared" / "mine")
    assert prepared.meta["ordered"] is with_sequence
    if with_sequence:
        assert prepared.read_split("train").sequences[0] == "b-a"
