"""Resume and crash safety of ``train``: the folder named by --out, kills at every rename, changed
world sizes, and one-line errors for bad checkpoints, logs, options and output places."""

import errno
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from toy import write_toy_prepared
from typer.testing import CliRunner

import mlcdf.train.stage as training
from mlcdf.cli.main import app
from mlcdf.config import TrainConfig
from mlcdf.data.dataset import EpochSampler
from mlcdf.train.checkpoint import load_checkpoint
from mlcdf.train.stage import train

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
        prepared=str(prepared),
        model=TINY,
        out=str(out),
        epochs=2,
        batch_size=BATCH,
        image_size=16,
        lr=3e-3,
        workers=0,
        device="cpu",
        patience=0,
        cache=False,
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


@pytest.mark.slow  # about 8 short runs: a kill at each rename, then its resume
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


# --- issue 13 item 6: one line and exit 2 for bad checkpoints, logs, options and output places -----


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, toy) -> Path:
    """A run killed after its first of two epochs (copy it before changing it)."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.raises(Killed):
        train(tiny_config(toy, run), callbacks=KillAtEpochStart(1))
    return run


@pytest.fixture
def run_copy(interrupted, tmp_path) -> Path:
    return Path(shutil.copytree(interrupted, tmp_path / "run"))


def edit_json(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def edit_checkpoint(path: Path, change) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    change(state)
    torch.save(state, path)


@pytest.mark.parametrize("mismatch", ["architecture", "labels"])
@pytest.mark.parametrize("command", ["evaluate", "predict", "explain", "export", "build-graph"])
def test_a_checkpoint_of_another_model_is_one_line(run_copy, toy, tmp_path, command, mismatch):
    def change(config):
        if mismatch == "architecture":
            config["train"]["model"] = "timm:test_efficientnet"
        else:
            config["labels"] = config["labels"][:4]

    edit_json(run_copy / "config.json", change)
    image = tmp_path / "face.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image)
    args = {
        "evaluate": ["evaluate", "--run", str(run_copy), "--split", "val", "--device", "cpu"],
        "predict": ["predict", str(run_copy), str(image), "--device", "cpu", "--workers", "0"],
        "explain": ["explain", str(run_copy), str(image), "--out", str(tmp_path / "x"), "--device", "cpu"],
        "export": ["export", str(run_copy), "--onnx", str(tmp_path / "m.onnx")],
        "build-graph": [
            "build-graph",
            "--prepared",
            str(toy),
            "--out",
            str(tmp_path / "g.npz"),
            "--embedding",
            "image",
            "--from-run",
            str(run_copy),
            "--device",
            "cpu",
        ],
    }[command]
    result = runner.invoke(app, args)
    one_line_error(result, str(run_copy / "checkpoints" / "best.pt"), "do not fit")
    assert not (tmp_path / "x").exists() and not (tmp_path / "m.onnx").exists() and not (tmp_path / "g.npz").exists()


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda state: state.pop("optimizer"), "no optimizer"),
        (lambda state: state.pop("history"), "no history"),
        (lambda state: state["config"].update(model="timm:test_efficientnet"), "cannot resume"),
        (lambda state: state["optimizer"]["param_groups"].pop(), "cannot resume"),
        (lambda state: state["config"].update(epochs="ten"), "epochs"),
    ],
    ids=["no-optimizer", "no-history", "other-model", "other-optimizer", "bad-config"],
)
def test_a_last_checkpoint_that_cannot_resume_is_one_line(run_copy, change, needle):
    edit_checkpoint(run_copy / "checkpoints" / "last.pt", change)
    before = file_bytes(run_copy)
    result = runner.invoke(app, ["train", "--out", str(run_copy), "--resume", "-q"])
    one_line_error(result, str(run_copy / "checkpoints" / "last.pt"), needle)
    assert file_bytes(run_copy) == before


def test_a_corrupt_log_is_rewritten_from_the_checkpoint_on_resume(run_copy):
    (run_copy / "log.jsonl").write_bytes(b'{"epoch": 0, "train_loss": \xff\n[1, 2]\n')
    result = runner.invoke(app, ["train", "--out", str(run_copy), "--resume", "-q"])
    assert result.exit_code == 0, result.output
    assert epochs_logged(run_copy) == [0, 1]


@pytest.mark.parametrize(
    "document, needle",
    [
        ({"epochs": "ten"}, "option epochs must be int"),
        ({"lr": [1]}, "option lr must be float or null"),
        ({"cache": 1}, "option cache must be bool"),
        ({"seed": True}, "option seed must be int"),
        ([1, 2], "expected a JSON table"),
    ],
)
def test_config_file_values_of_the_wrong_type_are_one_line(toy, tmp_path, document, needle):
    config = tmp_path / "train.json"
    config.write_text(json.dumps(document))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(config), "--prepared", str(toy), "--model", TINY, "--out", str(out)])
    one_line_error(result, str(config), needle)
    assert not out.exists()


def test_run_config_values_of_the_wrong_type_are_one_line(run_copy):
    edit_json(run_copy / "config.json", lambda config: config["train"].update(image_size="big"))
    result = runner.invoke(app, ["evaluate", "--run", str(run_copy), "--split", "val", "--device", "cpu"])
    one_line_error(result, str(run_copy / "config.json"), "option image_size must be int")
    result = runner.invoke(app, ["train", "--out", str(run_copy), "--resume", "-q"])
    one_line_error(result, "option image_size must be int")


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--seed", "-1"),
        ("--seed", str(2**32)),
        ("--lr", "-1"),
        ("--lr", "0"),
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--weight-decay", "-1"),
        ("--weight-decay", "nan"),
        ("--workers", "100000"),
        ("--val-fraction", "0"),
        ("--val-fraction", "1"),
        ("--ema-decay", "1"),
    ],
)
def test_options_out_of_range_are_one_line(toy, tmp_path, flag, value):
    out = tmp_path / "run"
    args = [
        "train",
        "--prepared",
        str(toy),
        "--model",
        TINY,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--batch-size",
        str(BATCH),
        "--image-size",
        "16",
        "--no-cache",
        flag,
        value,
    ]
    result = runner.invoke(app, args)
    one_line_error(result, flag.lstrip("-").replace("-", "_"), value)
    assert not out.exists()


def test_out_below_a_file_is_one_line(toy, tmp_path):
    (tmp_path / "file").write_text("mine")
    out = tmp_path / "file" / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--prepared",
            str(toy),
            "--model",
            TINY,
            "--out",
            str(out),
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--batch-size",
            str(BATCH),
            "--image-size",
            "16",
            "--no-cache",
            "--workers",
            "0",
        ],
    )
    one_line_error(result, str(out), f"{tmp_path / 'file'} is not a folder")
    assert (tmp_path / "file").read_text() == "mine"


def test_a_read_only_output_folder_is_one_line(toy, tmp_path, monkeypatch):
    def read_only(prefix="", suffix="", dir=None):
        name = os.path.join(dir, f"{prefix}abc123{suffix}")
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)  # what mkstemp raises on a read-only mount

    monkeypatch.setattr("mlcdf.io.tempfile.mkstemp", read_only)
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--prepared",
            str(toy),
            "--model",
            TINY,
            "--out",
            str(out),
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--batch-size",
            str(BATCH),
            "--image-size",
            "16",
            "--no-cache",
            "--workers",
            "0",
        ],
    )
    one_line_error(result, str(out / "config.json"), "Read-only file system")


@pytest.mark.parametrize("limit, failing", [(600, "config.json"), (24_000, "checkpoints/last.pt")])
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(toy, tmp_path, limit, failing):
    """``ulimit -f``: Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as on a full disk."""
    import resource

    out = tmp_path / "run"
    args = [
        "train",
        "--prepared",
        str(toy),
        "--model",
        TINY,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--batch-size",
        str(BATCH),
        "--image-size",
        "16",
        "--no-cache",
        "--workers",
        "0",
        "-q",
    ]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        result = runner.invoke(app, args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    one_line_error(result, str(out / failing))
    assert not (out / failing).exists()
    assert not [p for p in out.rglob(".*") if p.name.endswith(".tmp")]
