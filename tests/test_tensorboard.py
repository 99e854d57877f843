"""train --tensorboard DIR: event files that mirror log.jsonl, once per epoch, across a resume."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from toy import write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.config import TrainConfig
from mlcdf.train.callbacks import SilentCallbacks
from mlcdf.train.distributed import DistInfo
from mlcdf.train.stage import train

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
EPOCHS = 3
#: The TensorBoard tags and the log.jsonl key each must equal.
TAGS = {
    "train/loss": "train_loss",
    "train/lr": "lr",
    "val/mAP": "val_mAP",
    "val/mAP_ema": "val_mAP_ema",
    "throughput/images_per_s": "images_per_s",
}


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


needs_tensorboard = pytest.mark.skipif(
    not _has_tensorboard(), reason="the tensorboard extra is not installed (pip install 'mlcdf[tensorboard]')"
)


class Killed(BaseException):
    """Stands for the process being killed after epoch 0 was committed."""


class KillBeforeEpoch1(SilentCallbacks):
    def epoch_start(self, epoch, epochs, steps):
        if epoch == 1:
            raise Killed


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_prepared(tmp_path_factory.mktemp("toy"), {"train": 8, "val": 4})


def config_for(toy: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        prepared=str(toy),
        model="timm:test_resnet",
        out=str(out),
        epochs=EPOCHS,
        batch_size=4,
        image_size=16,
        workers=0,
        device="cpu",
        patience=0,
    )
    return TrainConfig(**(values | overrides))


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def raw_points(log_dir: Path) -> list[tuple[str, int, float]]:
    """Every scalar point in every event file of ``log_dir``, as written (no purging)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    points = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            points.extend((value.tag, event.step, value.simple_value) for value in event.summary.value)
    return points


def assert_board_mirrors_log(log_dir: Path, run: Path) -> None:
    """TensorBoard shows each tag once per epoch of log.jsonl, with log.jsonl's value (as float32)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = read_log(run)
    assert [record["epoch"] for record in log] == list(range(EPOCHS))
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    assert sorted(accumulator.Tags()["scalars"]) == sorted(TAGS)
    for tag, key in TAGS.items():
        shown = [(event.step, event.value) for event in accumulator.Scalars(tag)]
        assert shown == [(record["epoch"], float(np.float32(record[key]))) for record in log], tag
    # No epoch written twice, even in files TensorBoard would hide.
    counts = Counter((tag, step) for tag, step, _ in raw_points(log_dir))
    assert counts == Counter({(tag, epoch): 1 for tag in TAGS for epoch in range(EPOCHS)})


@needs_tensorboard
def test_cli_writes_every_epoch_with_the_logged_values(toy, tmp_path):
    run, board = tmp_path / "run", tmp_path / "tb" / "run"
    args = [
        "train",
        "--prepared",
        str(toy),
        "--model",
        "timm:test_resnet",
        "--out",
        str(run),
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "4",
        "--image-size",
        "16",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--patience",
        "0",
        "--tensorboard",
        str(board),
        "--quiet",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert_board_mirrors_log(board, run)
    assert json.loads((run / "config.json").read_text())["train"]["tensorboard"] == str(board)


@needs_tensorboard
@pytest.mark.parametrize("first_board", ["same", "none"], ids=["resume-appends", "resume-sets-it"])
def test_resume_continues_the_curves_without_repeating_an_epoch(toy, tmp_path, first_board):
    """Killed after epoch 0, resumed: the folder ends with epochs 0..2 once each, whether the killed run
    already wrote epoch 0 there or the resume is the first to name the folder."""
    run, board = tmp_path / "run", tmp_path / "tb"
    with pytest.raises(Killed):
        train(config_for(toy, run, tensorboard=str(board) if first_board == "same" else None), callbacks=KillBeforeEpoch1())
    assert len(read_log(run)) == 1
    if first_board == "same":
        assert {step for _, step, _ in raw_points(board)} == {0}
    train(config_for(toy, run, tensorboard=str(board)), resume=True)
    assert_board_mirrors_log(board, run)


@needs_tensorboard
def test_only_rank_0_writes(toy, tmp_path, monkeypatch):
    monkeypatch.setattr("mlcdf.train.stage.launch_info", lambda: DistInfo(rank=1, world_size=1))
    board = tmp_path / "tb"
    train(config_for(toy, tmp_path / "run", epochs=1, tensorboard=str(board)))
    assert not board.exists()


def test_missing_extra_is_one_line_naming_the_install_command(toy, tmp_path, monkeypatch):
    # None in sys.modules makes the import fail, as when the package is not installed.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--prepared",
            str(toy),
            "--model",
            "timm:test_resnet",
            "--out",
            str(run),
            "--device",
            "cpu",
            "--tensorboard",
            str(tmp_path / "tb"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == ["error: --tensorboard needs the TensorBoard extra: pip install 'mlcdf[tensorboard]'"]
    assert not run.exists() and not (tmp_path / "tb").exists()  # refused before any work
