"""Resume and crash safety of ``train``: the folder named by --out, kills at every rename, changed
world sizes, and one-line errors for bad checkpoints, logs, options and output places."""

import errno
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mlcdf.training as training
from mlcdf.checkpoint import load_checkpoint
from mlcdf.cli.main import app
from mlcdf.data.dataset import EpochSampler
from mlcdf.training import TrainConfig, train
from toy import write_toy_prepared

runner = CliRunner()
TINY = "timm:test_resnet"
BATCH = 8


class Killed(BaseException):
    """A kill at a chosen moment: not an Exception, so no handler in the code under test swallows it."""


class KillAtEpochStart:
    """Callbacks that kill the run as epoch ``epoch`` starts (after the previous epoch was saved)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_start(self, epoch, epochs, steps):
        if epoch == self.epoch:
            raise Killed

    def step(self, info):
        pass

    def epoch_end(self, record):
        pass

    def message(self, text):
        pass


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_prepared(tmp_path_factory.mktemp("toy"), {"train": 16, "val": 8})


def tiny_config(prepared: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        prepared=str(prepared), model=TINY, out=str(out), epochs=2, batch_size=BATCH, image_size=16,
        lr=3e-3, workers=0, device="cpu", patience=0, cache=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def epochs_logged(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.strip().count("\n") == 0, result.output
    for needle in needles:
        assert needle in result.output, result.output


# --- item 3: --resume resumes the folder named by --out -------------------------------------------


def test_resume_continues_the_copy_named_by_out(toy, tmp_path):
    original = tmp_path / "RA"
    with pytest.raises(Killed):
        train(tiny_config(toy, original), callbacks=KillAtEpochStart(1))
    copies = [tmp_path / "RB", tmp_path / "RC"]
    for copy in copies:
        shutil.copytree(original, copy)
    before = file_bytes(original)
    result = runner.invoke(app, ["train", "--out", str(copies[0]), "--resume", "-q"])
    assert result.exit_code == 0, result.output
    assert file_bytes(original) == before
    assert epochs_logged(copies[0]) == [0, 1]
    assert json.loads((copies[0] / "config.json").read_text())["train"]["out"] == str(copies[0])
    assert load_checkpoint(copies[0] / "checkpoints" / "last.pt")["epoch"] == 1
    # With the original gone, the copy is still what resumes; the original is not trained again.
    shutil.rmtree(original)
    result = runner.invoke(app, ["train", "--out", str(copies[1]), "--resume", "-q"])
    assert result.exit_code == 0, result.output
    assert not original.exists()
    assert epochs_logged(copies[1]) == [0, 1]


# --- item 4: crash consistency, a kill at every rename in turn ------------------------------------


def test_a_kill_at_any_rename_resumes_to_the_uninterrupted_run(toy, tmp_path, monkeypatch):
    real_replace = os.replace
    fault = {"renames": 0, "kill_at": None}

    def replace_or_die(src, dst):
        fault["renames"] += 1
        if fault["renames"] == fault["kill_at"]:
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_or_die)
    reference = train(tiny_config(toy, tmp_path / "reference"))
    total = fault["renames"]
    assert total >= 5  # config.json, then per epoch last.pt and log.jsonl, best.pt when it improved
    ref_last = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.pt")
    ref_best = load_checkpoint(tmp_path / "reference" / "checkpoints" / "best.pt")
    for kill_at in range(1, total + 1):
        run = tmp_path / f"killed-at-{kill_at}"
        fault.update(renames=0, kill_at=kill_at)
        with pytest.raises(Killed):
            train(tiny_config(toy, run))
        fault.update(kill_at=None)
        result = train(tiny_config(toy, run), resume=True)
        assert epochs_logged(run) == [0, 1], kill_at
        assert result.epochs_run == 2 and [r["epoch"] for r in result.history] == [0, 1]
        last = load_checkpoint(run / "checkpoints" / "last.pt")
        assert same_tensors(last["model"], ref_last["model"]), kill_at
        assert same_tensors(last["ema"]["module"], ref_last["ema"]["module"]), kill_at
        best = load_checkpoint(run / "checkpoints" / "best.pt")
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        best_logged = max(max(r["val_mAP"], r["val_mAP_ema"]) for r in log)
        assert best["val_mAP"] == best_logged == reference.best_map, kill_at
        assert best["epoch"] == reference.best_epoch and same_tensors(best["model"], ref_best["model"]), kill_at


# --- issue 14 item 5: resume with another number of processes --------------------------------------


class OneStepMoreSampler(EpochSampler):
    """Training batches as another world size can give them: one more step per epoch."""

    def __iter__(self):
        keys = list(super().__iter__())
        return iter(keys + keys[:BATCH] if self.shuffle else keys)

    def __len__(self):
        return super().__len__() + (BATCH if self.shuffle else 0)


def test_resume_with_more_steps_per_epoch_ends_where_a_fresh_schedule_ends(toy, tmp_path, monkeypatch):
    config = tiny_config(toy, tmp_path / "run")
    with pytest.raises(Killed):
        train(config, callbacks=KillAtEpochStart(1))
    monkeypatch.setattr(training, "EpochSampler", OneStepMoreSampler)
    result = train(config, resume=True)
    assert [r["epoch"] for r in result.history] == [0, 1]
    steps = 16 // BATCH + 1
    resolved = config.resolve()
    optimizer, scheduler = training._optimizer_and_scheduler(training.build_model(resolved, 5, None), resolved, steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping the schedule without training
        for _ in range(resolved.epochs * steps):
            scheduler.step()
    assert result.history[-1]["lr"] == pytest.approx(optimizer.param_groups[-1]["lr"], rel=1e-12, abs=0)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["steps_per_epoch"] == steps


class FakeCuda:
    """Per-GPU generator states of a machine with ``count`` GPUs, as torch.cuda's RNG functions see them."""

    def __init__(self, count: int) -> None:
        self.states = [torch.full((8,), index, dtype=torch.uint8) for index in range(count)]

    def index(self, device) -> int:
        index = torch.device(device).index if not isinstance(device, int) else device
        if index is None:
            index = 0
        if index >= len(self.states):
            raise IndexError(f"no GPU {index}")  # what torch.cuda does with a GPU that is not there
        return index

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[self.index(device)].clone())

        def set_all(states):
            for index, state in enumerate(states):
                self.states[self.index(index)] = state.clone()

        def set_one(state, device="cuda"):
            self.states[self.index(device)] = state.clone()

        monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
        monkeypatch.setattr(torch.cuda, "set_rng_state", set_one)


def test_rng_state_follows_the_training_gpu_to_a_machine_with_fewer(monkeypatch):
    with monkeypatch.context() as patch:
        FakeCuda(4).install(patch)  # trained as rank 2 of 4 (cuda:2)
        saved = training._rng_state(torch.device("cuda", 2))
    one_gpu = FakeCuda(1)
    one_gpu.install(monkeypatch)  # resumed on a machine with a single GPU
    training._set_rng_state(saved, torch.device("cuda", 0))
    assert torch.equal(one_gpu.states[0], torch.full((8,), 2, dtype=torch.uint8))
