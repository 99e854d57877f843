import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from toy import write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.config import TrainConfig
from mlcdf.errors import MlcdfError
from mlcdf.train.checkpoint import load_checkpoint
from mlcdf.train.engine import NonFiniteLossError
from mlcdf.train.stage import train

runner = CliRunner()
TINY = "timm:test_resnet"


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_prepared(tmp_path_factory.mktemp("toy"), {"train": 48, "val": 16, "test": 16})


def tiny_config(prepared: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        prepared=str(prepared),
        model=TINY,
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


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_cli_train_writes_a_complete_run(toy, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--prepared",
            str(toy),
            "--model",
            TINY,
            "--out",
            str(run),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--image-size",
            "32",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--asl",
            "--lr",
            "0.003",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "best val mAP" in result.output
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["loss"] == "asl" and config["train"]["model"] == TINY
    assert config["labels"] == ["nose", "eye", "eyebrow", "lip", "hair"] and config["subset"] == "facial_components"
    log = read_log(run)
    assert [r["epoch"] for r in log] == [0, 1]
    assert {"train_loss", "val_mAP", "val_mAP_ema", "lr", "epoch_seconds", "images_per_s"} <= set(log[0])
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert state["label_names"] == config["labels"]
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert {"model", "ema", "optimizer", "scheduler", "scaler", "epoch", "best_map", "rng", "config"} <= set(last)
    assert last["epoch"] == 1
    # an existing run is not overwritten by accident
    again = runner.invoke(app, ["train", "--prepared", str(toy), "--model", TINY, "--out", str(run), "--device", "cpu"])
    assert again.exit_code == 2 and "--resume" in again.output


def test_loss_decreases_and_model_learns(toy, tmp_path):
    result = train(tiny_config(toy, tmp_path / "run", epochs=6, ema_decay=0.0))
    log = result.history
    assert log[-1]["train_loss"] < 0.7 * log[0]["train_loss"]
    assert result.best_map > 0.8


def test_resume_after_kill_mid_epoch(toy, tmp_path):
    run = tmp_path / "run"

    class KillAtEpoch1:
        def epoch_start(self, epoch, epochs, steps):
            self.epoch = epoch

        def step(self, info):
            if self.epoch == 1 and info.step >= 2:
                raise KeyboardInterrupt

        def epoch_end(self, record):
            pass

        def message(self, text):
            pass

    config = tiny_config(toy, run, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=KillAtEpoch1())
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 0
    result = train(config, resume=True)
    assert [r["epoch"] for r in read_log(run)] == [0, 1, 2]
    assert result.epochs_run == 3
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert 0 <= best["epoch"] <= 2 and best["source"] in ("model", "ema")
    # resuming a finished run trains nothing more
    assert train(config, resume=True).epochs_run == 3


def test_nan_guard_keeps_last_good_checkpoint(toy, tmp_path, monkeypatch):
    import mlcdf.tasks.multilabel as training

    real = training.create_loss

    def poisoned(name, **kwargs):
        loss = real(name, **kwargs)
        calls = {"n": 0}

        def criterion(logits, targets):
            calls["n"] += 1
            value = loss(logits, targets)
            return value * float("nan") if calls["n"] > 6 else value

        return criterion

    monkeypatch.setattr(training, "create_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 2"):
        train(tiny_config(toy, run, epochs=3))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 0


def test_config_file_and_flag_override(toy, tmp_path):
    config_file = tmp_path / "train.toml"
    config_file.write_text(f'prepared = "{toy}"\nmodel = "{TINY}"\nepochs = 1\nbatch_size = 8\nimage_size = 32\nworkers = 0\nlr = 0.01\n')
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(config_file), "--out", str(run), "--device", "cpu", "--lr", "0.002"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["lr"] == 0.002 and saved["epochs"] == 1 and saved["image_size"] == 32
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochz": 3}')
    result = runner.invoke(app, ["train", "--config", str(bad), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 2 and "epochz" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_cuda_is_a_clear_error(toy, tmp_path):
    result = runner.invoke(app, ["train", "--prepared", str(toy), "--model", TINY, "--out", str(tmp_path / "r"), "--device", "cuda"])
    assert result.exit_code == 2
    assert "CUDA is not available" in result.output


def test_unknown_model_is_a_clear_error(toy, tmp_path):
    result = runner.invoke(app, ["train", "--prepared", str(toy), "--model", "resnet9000", "--out", str(tmp_path / "r"), "--device", "cpu"])
    assert result.exit_code == 2
    assert "resnet9000" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_torchrun_ddp_matches_single_process(toy, tmp_path):
    """One 2-process torchrun launch (gloo, CPU) of two runs.

    ML-GCN over ConvNeXt-atto (LayerNorm, no batch statistics; its head norm must get gradients, or DDP
    stops): one step over all 48 images, so the logged loss is the first step's, computed by two processes
    on their halves of the batch; it equals the single-process loss to float rounding, and any
    mis-sharding (a row read twice or missed) moves it far more.
    A BatchNorm model: the val mAP that chose best.pt is the one `evaluate --split val` finds for best.pt
    (each rank's BatchNorm statistics follow its own half-batches; validation must use the saved ones).
    A SeqFakeFormer (the sequence task, teacher forcing, its own recipe): the same, through its task's
    per-label scores, and its greedy sequences decode in evaluation.
    """
    import dataclasses

    import numpy as np

    from mlcdf.graph import LabelGraph, save_graph

    rng = np.random.default_rng(0)
    adjacency = rng.random((5, 5)) + np.eye(5)
    labels = ("nose", "eye", "eyebrow", "lip", "hair")
    graph_file = tmp_path / "graph.npz"
    save_graph(
        graph_file,
        LabelGraph(
            labels, np.ones(5), np.zeros((5, 5)), np.eye(5), adjacency / adjacency.sum(1, keepdims=True), rng.standard_normal((5, 16))
        ),
    )
    graph_config = tiny_config(
        toy, tmp_path / "single", model="ml_gcn", backbone="convnext_atto", graph=str(graph_file), epochs=1, batch_size=48
    )
    norm_config = tiny_config(toy, tmp_path / "ddp-bn", epochs=1)
    sequence_config = tiny_config(toy, tmp_path / "ddp-seq", epochs=1, model="seqfakeformer_r34", backbone="test_resnet", lr=None)
    configs = []
    for name, config in (
        ("ddp-graph", dataclasses.replace(graph_config, out=str(tmp_path / "ddp-graph"))),
        ("ddp-bn", norm_config),
        ("ddp-seq", sequence_config),
    ):
        configs.append(tmp_path / f"{name}.json")
        configs[-1].write_text(json.dumps(dataclasses.asdict(config)))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(Path(__file__).with_name("ddp_runs.py")),
            *map(str, configs),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    single = train(graph_config)
    for run in ("ddp-graph", "ddp-bn", "ddp-seq"):
        assert json.loads((tmp_path / run / "config.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "ddp-seq" / "config.json").read_text())["train"]["recipe"] == "seqfakeformer"
    (ddp_record,), (single_record,) = read_log(tmp_path / "ddp-graph"), single.history
    assert abs(ddp_record["train_loss"] - single_record["train_loss"]) < 1e-5 * single_record["train_loss"]
    for run in ("ddp-bn", "ddp-seq"):
        best = load_checkpoint(tmp_path / run / "checkpoints" / "best.pt")
        result = runner.invoke(app, ["evaluate", "--run", str(tmp_path / run), "--split", "val", "--checkpoint", "best", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        metrics = json.loads((tmp_path / run / "eval" / "val" / "metrics.json").read_text())
        assert metrics["mAP"] / 100 == pytest.approx(best["val_mAP"], abs=1e-6), run
    assert 0 <= metrics["Fixed-Acc"] <= 100 and metrics["sequence_decoder"] == {"kind": "model"}


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:x"])
def test_unknown_device_names_are_refused(name):
    from mlcdf.devices import resolve_device

    with pytest.raises(MlcdfError, match="unknown device"):
        resolve_device(name)


def test_asl_settings_reach_the_loss_and_the_run_config(toy, tmp_path, monkeypatch):
    import mlcdf.tasks.multilabel as training

    built = []
    real_create_loss = training.create_loss

    def spy(name, **kwargs):
        built.append((name, kwargs))
        return real_create_loss(name, **kwargs)

    monkeypatch.setattr(training, "create_loss", spy)
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--prepared",
            str(toy),
            "--model",
            TINY,
            "--out",
            str(run),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--image-size",
            "32",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--asl",
            "--asl-gamma-neg",
            "1",
            "--asl-clip",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert built == [("asl", {"gamma_neg": 1.0, "gamma_pos": 0.0, "clip": 0.0})]
    saved = json.loads((run / "config.json").read_text())["train"]
    assert (saved["asl_gamma_neg"], saved["asl_gamma_pos"], saved["asl_clip"]) == (1.0, 0.0, 0.0)
    built.clear()
    train(tiny_config(toy, tmp_path / "bce", epochs=1))
    assert built == [("bce", {})]


def test_asl_settings_without_asl_are_refused(toy, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--prepared", str(toy), "--model", TINY, "--out", str(run), "--device", "cpu", "--asl-gamma-neg", "1"]
    )
    assert result.exit_code == 2 and "--asl-gamma-neg" in result.output and "add --asl" in result.output
    assert not run.exists()
    with pytest.raises(MlcdfError, match="asl_clip must be in"):
        tiny_config(toy, run, loss="asl", asl_clip=1.5).resolve()
    with pytest.raises(MlcdfError, match="asl_gamma_pos must be a finite number >= 0"):
        tiny_config(toy, run, loss="asl", asl_gamma_pos=float("nan")).resolve()


def test_asl_defaults_are_the_losses_and_the_papers():
    import dataclasses
    import inspect

    from mlcdf.config import asl_defaults
    from mlcdf.tasks.losses import AsymmetricLoss

    signature = inspect.signature(AsymmetricLoss).parameters
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name.startswith("asl_")}
    assert defaults == {f"asl_{name}": signature[name].default for name in ("gamma_neg", "gamma_pos", "clip")}
    # The paper's (and the ASL paper's) settings, which the report compares runs against.
    assert defaults == asl_defaults() == {"asl_gamma_neg": 4.0, "asl_gamma_pos": 0.0, "asl_clip": 0.05}
    # A run saved before these options existed resumes with the paper's ASL.
    old = TrainConfig.from_dict({"prepared": "p", "model": TINY, "out": "o", "loss": "asl"})
    assert old.loss_options() == {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05}
