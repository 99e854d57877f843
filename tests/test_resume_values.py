"""train --resume by value: a killed-then-resumed run ends exactly where an uninterrupted run ends.

On the CPU training is deterministic, so after a kill (between epochs, or in the middle of one) and a
resume, ``last.pt`` (weights, EMA, optimizer, scheduler, RNG, best score) and the losses and scores of
``log.jsonl`` must be bit-identical to those of one uninterrupted run with the same options.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from state_compare import assert_same_state
from toy import write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.config import TrainConfig
from mlcdf.train.callbacks import SilentCallbacks
from mlcdf.train.stage import train

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS = 3
#: 44 images in batches of 4: 11 steps per epoch, so the step callback (every 10 steps) fires mid-epoch.
TRAIN_IMAGES, BATCH = 44, 4
#: What a checkpoint's resume depends on. Other keys (versions, names) are checked by the train tests.
RESUMED_STATE = ("model", "ema", "optimizer", "scheduler", "scaler", "epoch", "best_map", "best_epoch", "best_source", "rng")
#: Per-epoch log values that training determines (timings are left out: they never repeat).
LOGGED_VALUES = ("epoch", "train_loss", "val_mAP", "val_mAP_ema", "lr", "best")

runner = CliRunner()


class Killed(BaseException):
    """Stands for the process being killed: like KeyboardInterrupt, no ``except Exception`` stops it."""


class KillBeforeEpoch1(SilentCallbacks):
    """Killed after epoch 0 was written, before epoch 1 starts."""

    def epoch_start(self, epoch, epochs, steps):
        if epoch == 1:
            raise Killed


class KillInEpoch1(SilentCallbacks):
    """Killed after some (not all) optimizer steps of epoch 1."""

    def step(self, info):
        if info.epoch == 1:
            assert info.step < info.steps, "the kill must come before the end of the epoch"
            raise Killed


class EpochsStarted(SilentCallbacks):
    def __init__(self):
        self.epochs = []

    def epoch_start(self, epoch, epochs, steps):
        self.epochs.append(epoch)


def read(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def logged_values(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{key: record[key] for key in LOGGED_VALUES} for record in records]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_prepared(tmp_path_factory.mktemp("toy"), {"train": TRAIN_IMAGES, "val": 8})


def config_for(toy: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        prepared=str(toy),
        model="timm:test_resnet",
        out=str(out),
        epochs=EPOCHS,
        batch_size=BATCH,
        image_size=32,
        lr=3e-3,
        workers=0,
        device="cpu",
        patience=0,
    )


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory) -> Path:
    """One uninterrupted run, shared by every comparison."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(config_for(toy, out))
    return out


@pytest.fixture(scope="module", params=[KillBeforeEpoch1, KillInEpoch1], ids=["between-epochs", "mid-epoch"])
def resumed(request, toy, tmp_path_factory) -> Path:
    """A run killed in epoch 1 (as the parameter says), then resumed to the end."""
    out = tmp_path_factory.mktemp("resumed") / "run"
    config = config_for(toy, out)
    with pytest.raises(Killed):
        train(config, callbacks=request.param())
    assert read(out / "checkpoints" / "last.pt")["epoch"] == 0, "the kill must leave epoch 0 as the last one written"
    assert [record["epoch"] for record in logged_values(out)] == [0]
    first_record = (out / "log.jsonl").read_text().splitlines()[0]
    started = EpochsStarted()
    train(config, resume=True, callbacks=started)
    assert started.epochs == [1, 2], "the resumed run must go on from epoch 1, not train again from scratch"
    assert (out / "log.jsonl").read_text().splitlines()[0] == first_record, "epoch 0's record is kept as written"
    return out


def test_resumed_last_checkpoint_equals_uninterrupted(reference, resumed):
    want, got = read(reference / "checkpoints" / "last.pt"), read(resumed / "checkpoints" / "last.pt")
    assert want["epoch"] == EPOCHS - 1
    assert want["ema"] is not None, "the comparison must cover the EMA weights"
    assert_same_state({key: want[key] for key in RESUMED_STATE}, {key: got[key] for key in RESUMED_STATE}, "last.pt states")


def test_resumed_log_equals_uninterrupted(reference, resumed):
    want = logged_values(reference)
    assert [record["epoch"] for record in want] == list(range(EPOCHS))
    assert logged_values(resumed) == want


def test_resumed_best_checkpoint_equals_uninterrupted(reference, resumed):
    want, got = read(reference / "checkpoints" / "best.pt"), read(resumed / "checkpoints" / "best.pt")
    assert_same_state(
        {key: want[key] for key in ("model", "epoch", "source", "val_mAP")},
        {key: got[key] for key in ("model", "epoch", "source", "val_mAP")},
        "best.pt states",
    )


def test_best_checkpoint_holds_the_best_score_of_the_log(reference):
    log = logged_values(reference)
    best = read(reference / "checkpoints" / "best.pt")
    scores = [(record[key], record["epoch"], source) for record in log for key, source in (("val_mAP", "model"), ("val_mAP_ema", "ema"))]
    best_score = max(score for score, _, _ in scores)
    # The first epoch reaching the best score wins; within an epoch the plain model before the EMA.
    _, epoch, source = next(entry for entry in scores if entry[0] == best_score)
    assert (best["val_mAP"], best["epoch"], best["source"]) == (best_score, epoch, source)
    last = read(reference / "checkpoints" / "last.pt")
    assert (last["best_map"], last["best_epoch"], last["best_source"]) == (best_score, epoch, source)
    # An epoch is flagged best when it beats every earlier one.
    running_best, flags = -1.0, []
    for record in log:
        score = max(record["val_mAP"], record["val_mAP_ema"])
        flags.append(score > running_best)
        running_best = max(running_best, score)
    assert [record["best"] for record in log] == flags
    # The weights in best.pt are the ones that scored it.
    result = runner.invoke(
        app, ["evaluate", "--run", str(reference), "--split", "val", "--checkpoint", "best", "--device", "cpu", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((reference / "eval" / "val" / "metrics.json").read_text())
    assert metrics["mAP"] == pytest.approx(100 * best_score, abs=1e-9)
