"""The launcher on several devices (issue 28): which GPU each run and rank gets, refusals before anything
starts, torchrun's failures and output, interrupts that leave no rank behind. GPUs are faked (a device
count and ``CUDA_VISIBLE_DEVICES``); torchrun runs for real with gloo on the CPU."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from toy import write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.config import TrainConfig, default_workers
from mlcdf.devices import default_slots, device_slots, visible_gpus
from mlcdf.errors import MlcdfError
from mlcdf.experiments import runner as runner_module
from mlcdf.experiments.plans import load_plan
from mlcdf.experiments.runner import FAILED, TRAINED, RunJob, lock_path, run_plan, torchrun_failure

cli = CliRunner()
REPO = Path(__file__).resolve().parents[1]

PLAN = """
[defaults]
prepared = {{ faces = "{prepared}" }}
epochs = {epochs}
batch_size = 8
image_size = 16
device = "{device}"
workers = 0
patience = 0

[[runs]]
name = "tiny"
model = "timm:test_resnet"

[[runs]]
name = "other"
model = "timm:test_resnet"
loss = "asl"
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_toy_prepared(tmp_path_factory.mktemp("devices"), {"train": 16, "val": 8, "test": 8})


def plan_file(folder: Path, prepared: Path, *, epochs: int = 1, device: str = "cpu", extra: str = "") -> Path:
    path = folder / "plan.toml"
    path.write_text(textwrap.dedent(PLAN.format(prepared=prepared, epochs=epochs, device=device)) + extra)
    return path


@pytest.fixture
def four_gpus_of_a_job(monkeypatch):
    """A job given GPUs 4-7 of an 8-GPU node: CUDA sees 4, named by the inherited CUDA_VISIBLE_DEVICES."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


class FakeWorker:
    """Stands in for a run's worker process: records what it was started with and ends at once, trained."""

    started: list[dict] = []

    def __init__(self, command, *, env, **kwargs):
        job_file = Path(command[-1])
        FakeWorker.started.append({"job": json.loads(job_file.read_text()), "env": env})
        runner_module.outcome_file(job_file).write_text(json.dumps({"outcome": TRAINED, "reason": ""}))
        self.returncode = 0

    def poll(self):
        return 0

    def wait(self):
        return 0


@pytest.fixture
def fake_workers(monkeypatch):
    FakeWorker.started = []
    monkeypatch.setattr(runner_module.subprocess, "Popen", FakeWorker)
    return FakeWorker.started


# ----------------------------------------------------------------------------------- which GPU each run gets


def test_devices_count_the_inherited_visible_gpus(four_gpus_of_a_job):
    assert visible_gpus() == ["4", "5", "6", "7"]
    assert device_slots(["0", "1"], 1) == ["4", "5"]
    assert device_slots(["2", "3", "0", "1"], 2) == ["6,7", "4,5"]
    assert device_slots(["cpu", "cpu"], 2) == ["cpu"]
    with pytest.raises(MlcdfError, match=r"--devices 0,4: no GPU 4; this process sees 4 GPU\(s\) \(CUDA_VISIBLE_DEVICES=4,5,6,7\)"):
        device_slots(["0", "4"], 1)
    with pytest.raises(MlcdfError, match="one run is given a GPU twice"):
        device_slots(["1", "1"], 2)
    with pytest.raises(MlcdfError, match="all GPUs or all cpu"):
        device_slots(["0", "cpu"], 2)


def test_each_run_and_each_rank_gets_its_physical_gpus(tmp_path, prepared, four_gpus_of_a_job, fake_workers, monkeypatch):
    plan = load_plan(plan_file(tmp_path, prepared, device="auto"))
    run_plan(plan, tmp_path / "out", devices=("2", "3", "0", "1"), gpus_per_run=2, poll_seconds=0)
    by_run = {started["job"]["label"]: started for started in fake_workers}
    assert {label: started["env"]["CUDA_VISIBLE_DEVICES"] for label, started in by_run.items()} == {
        "faces/tiny": "6,7",
        "faces/other": "4,5",
    }
    for started in fake_workers:
        assert started["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # GPU 6 is nvidia-smi's GPU 6
        assert started["job"]["gpus_per_run"] == 2 and started["job"]["train"]["device"] == "cuda"
    # torchrun's ranks inherit their worker's CUDA_VISIBLE_DEVICES; local rank i takes its GPU i.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", by_run["faces/tiny"]["env"]["CUDA_VISIBLE_DEVICES"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [visible_gpus()[local_rank] for local_rank in (0, 1)] == ["6", "7"]


def test_jobs_without_devices_spread_over_the_visible_gpus(tmp_path, prepared, four_gpus_of_a_job, fake_workers):
    plan = load_plan(plan_file(tmp_path, prepared, device="auto"))
    run_plan(plan, tmp_path / "out", jobs=2, poll_seconds=0)
    assert sorted(started["env"]["CUDA_VISIBLE_DEVICES"] for started in fake_workers) == ["4", "5"]  # not both on GPU 0
    with pytest.raises(MlcdfError, match=r"--jobs 5 without --devices runs one run per GPU, and this process sees 4 GPU\(s\)"):
        default_slots(5)


def test_jobs_without_devices_stay_on_the_cpu_for_a_cpu_plan_or_without_gpus(tmp_path, prepared, fake_workers, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert default_slots(3) is None
    run_plan(load_plan(plan_file(tmp_path, prepared, device="cpu")), tmp_path / "out", jobs=2, poll_seconds=0)
    assert [started["env"]["CUDA_VISIBLE_DEVICES"] for started in fake_workers] == ["", ""]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--gpus-per-run", "2"],
            "--gpus-per-run 2 needs --devices listing the GPUs of the runs, 2 per run (e.g. --devices 0,1); got no --devices",
        ),
        (["--gpus-per-run", "2", "--devices", "0"], "--gpus-per-run 2 needs --devices"),
        (["--gpus-per-run", "2", "--devices", "0,1,2"], "--devices 0,1,2: 3 device(s) do not make runs of --gpus-per-run 2"),
        (["--devices", "0,5"], "--devices 0,5: no GPU 5; this process sees 4 GPU(s) (CUDA_VISIBLE_DEVICES=4,5,6,7)"),
        (["--jobs", "6"], "--jobs 6 without --devices runs one run per GPU"),
        (["--launcher", "slurm", "--devices", "0"], "--devices is for --launcher local"),
    ],
)
def test_device_options_that_cannot_work_are_refused_before_anything_starts(tmp_path, prepared, four_gpus_of_a_job, args, message):
    path = plan_file(tmp_path, prepared, device="auto")
    result = cli.invoke(app, ["reproduce", "--plan", str(path), "--out", str(tmp_path / "out"), "--quiet", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_image_graphs_are_built_on_the_first_listed_gpu_in_a_process_of_their_own(
    tmp_path, prepared, four_gpus_of_a_job, fake_workers, monkeypatch
):
    apart, here = [], []

    class Built:
        warnings = ()

    def record_apart(config, environment):
        apart.append((config.device, environment["CUDA_VISIBLE_DEVICES"], environment["CUDA_DEVICE_ORDER"]))
        return ()

    monkeypatch.setattr(runner_module, "build_graph_apart", record_apart)
    monkeypatch.setattr(runner_module, "build_graph", lambda config, progress: here.append(config.device) or Built())
    monkeypatch.setattr(runner_module, "load_graph", lambda path: None)
    extra = '\n[[runs]]\nname = "graph"\nmodel = "ml_gcn"\nembedding = "image"\nbackbone = "resnet18"\n'
    plan = load_plan(plan_file(tmp_path, prepared, device="auto", extra=extra))
    run_plan(plan, tmp_path / "out", devices=("2", "3"), poll_seconds=0)
    # This process's GPU 2 is the node's GPU 6: only that one is visible to the builder, in nvidia-smi's order.
    assert apart == [("cuda", "6", "PCI_BUS_ID")] and here == []
    run_plan(plan, tmp_path / "cpu", devices=("cpu",), poll_seconds=0)
    assert here == ["cpu"]


@pytest.mark.slow
def test_a_graph_built_apart_is_written_or_fails_with_its_own_error(tmp_path, prepared):
    from mlcdf.graph.build import GraphConfig

    config = GraphConfig(prepared=prepared, out=tmp_path / "g.npz", embedding="image", backbone="test_resnet", image_size=16, device="cpu")
    warnings = runner_module.build_graph_apart(config, {**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert (tmp_path / "g.npz").is_file() and any("RANDOM weights" in message for message in warnings)
    missing = dataclasses.replace(config, prepared=tmp_path / "nowhere", out=tmp_path / "h.npz")
    with pytest.raises(MlcdfError, match=f"{tmp_path / 'nowhere'}"):
        runner_module.build_graph_apart(missing, dict(os.environ))
    assert not (tmp_path / "h.npz").exists()


# ------------------------------------------------------------------------------------- smaller: CPUs, OOM


def test_loader_workers_follow_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_workers() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_workers() == 4 and default_workers(8) == 2


def test_slurm_jobs_ask_for_cpus_per_gpu_unless_told(tmp_path):
    pytest.importorskip("submitit", reason="the slurm extra is not installed")
    asked = []
    launcher = runner_module.SlurmLauncher(tmp_path, None, {"cluster": "local"}, 2, print)
    launcher.executor.update_parameters = lambda **parameters: asked.append(parameters.get("cpus_per_task"))
    launcher.executor.submit = lambda *args: None
    config = TrainConfig(prepared="p", model="resnet50", out=str(tmp_path / "s" / "r"))
    launcher._submit(RunJob("s/r", config), tmp_path / "job.json")
    launcher._submit(RunJob("s/r", TrainConfig(prepared="p", model="resnet50", out="x", device="cpu")), tmp_path / "job.json")
    launcher.cpus_per_task = 3
    launcher._submit(RunJob("s/r", config), tmp_path / "job.json")
    assert asked == [10, 1, 3]  # 2 GPUs x (a rank + 4 loader workers); a CPU run; --cpus-per-task


def test_cuda_out_of_memory_while_evaluating_fails_that_run_not_the_plan(tmp_path, prepared, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner_module, "evaluate_run", out_of_memory)
    result = run_plan(load_plan(plan_file(tmp_path, prepared)), tmp_path / "out", only=["tiny"])
    assert [o.outcome for o in result.outcomes] == [FAILED]
    assert "CUDA ran out of memory evaluating" in result.outcomes[0].reason and "try --batch-size 4" in result.outcomes[0].reason
    assert not lock_path(tmp_path / "out/runs/faces/tiny").exists()


# ------------------------------------------------------------------------------------ torchrun (gloo on CPU)

# What torchrun printed for a rank that failed with a traceback (torch 2.x), and its error report.
TORCHRUN_OUTPUT = """\
Traceback (most recent call last):
  File "/x/mlcdf/train/stage.py", line 12, in train
    raise RuntimeError("boom")
RuntimeError: boom
E1203 16:00:00.000000 123 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 1) local_rank: 0 (pid: 1) of binary
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
mlcdf FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-03_16:00:00
  exitcode  : 1 (pid: 1)
============================================================"""


def test_a_torchrun_failure_is_the_ranks_reason_not_torchruns_border():
    assert torchrun_failure(TORCHRUN_OUTPUT.splitlines()) == "RuntimeError: boom"
    assert (
        torchrun_failure(["error: runs/x: not found", "error: runs/x: not found", *TORCHRUN_OUTPUT.splitlines()[4:]]) == "runs/x: not found"
    )
    killed = [line for line in TORCHRUN_OUTPUT.splitlines() if not line.startswith(("RuntimeError", "Traceback"))]
    assert torchrun_failure(killed) == "a rank ended with exitcode : 1 (pid: 1)"


@pytest.fixture
def subprocesses_import_this_checkout(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_torchrun_runs_log_their_training_and_fail_with_their_reason(tmp_path, prepared, subprocesses_import_this_checkout):
    extra = '\n[[runs]]\nname = "bad"\nmodel = "timm:test_resnet"\nweights = "no.pth"\n'
    plan = load_plan(plan_file(tmp_path, prepared, extra=extra))
    out = tmp_path / "out"
    result = run_plan(plan, out, devices=("cpu", "cpu"), gpus_per_run=2, only=["tiny", "bad"], poll_seconds=0.2)
    assert [o.outcome for o in result.outcomes] == [TRAINED, FAILED], [o.reason for o in result.outcomes]
    reason = result.outcomes[1].reason
    assert reason.startswith("torchrun exited with 1: ") and "no.pth" in reason and "===" not in reason, reason
    trained_log = (out / "launch/faces/tiny.log").read_text()
    assert "done after 1 epoch(s); best val mAP" in trained_log and "test mAP" in trained_log  # on success too
    assert json.loads((out / "runs/faces/tiny/config.json").read_text())["world_size"] == 2
    assert "no.pth" in (out / "launch/faces/bad.log").read_text()


def _ranks(root: int) -> dict[int, str]:
    """The training ranks under ``root``: the ``mlcdf train`` processes torchrun started."""
    ranks = {}
    for pid, started in runner_module._descendants(root).items():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train" in command and b"torch.distributed.run" not in command and b"mlcdf.experiments.runner" not in command:
            ranks[pid] = started
    return ranks


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes through /proc")
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda number: number.name)
def test_an_interrupted_launcher_leaves_no_rank_and_unlocks_after_they_end(tmp_path, prepared, subprocesses_import_this_checkout, stop):
    out = tmp_path / "out"
    path = plan_file(tmp_path, prepared, epochs=500)
    command = [sys.executable, "-m", "mlcdf", "reproduce", "--plan", str(path), "--out", str(out), "--only", "tiny"]
    launcher = subprocess.Popen([*command, "--devices", "cpu,cpu", "--gpus-per-run", "2", "--quiet"], stderr=subprocess.PIPE, text=True)
    lock = lock_path(out / "runs/faces/tiny")
    deadline = time.monotonic() + 240
    ranks: dict[int, str] = {}
    while time.monotonic() < deadline and not (len(ranks) == 2 and (out / "runs/faces/tiny/log.jsonl").is_file()):
        ranks = _ranks(launcher.pid)
        time.sleep(0.2)
    assert len(ranks) == 2 and lock.is_file(), "the run did not start training"
    launcher.send_signal(stop)
    ranks_alive_when_unlocked = None
    while launcher.poll() is None:
        if ranks_alive_when_unlocked is None and not lock.exists():
            ranks_alive_when_unlocked = [pid for pid, started in ranks.items() if runner_module._alive(pid, started)]
        time.sleep(0.01)
    _, errors = launcher.communicate()
    assert launcher.returncode == 130, errors
    assert ranks_alive_when_unlocked in (None, []), "the lock was released while ranks still ran"
    assert not [pid for pid, started in ranks.items() if runner_module._alive(pid, started)]
    assert not lock.exists() and (out / "runs/faces/tiny/checkpoints/last.pt").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_a_worker_killed_outright_leaves_no_rank(tmp_path, prepared, subprocesses_import_this_checkout):
    config = TrainConfig(
        prepared=str(prepared), model="timm:test_resnet", out=str(tmp_path / "runs/faces/tiny"), epochs=500, batch_size=8,
        image_size=16, device="cpu", workers=0, patience=0,
    )  # fmt: skip
    job_file = tmp_path / "launch/faces/tiny.json"
    job_file.parent.mkdir(parents=True)
    job_file.write_text(json.dumps(RunJob("faces/tiny", config, gpus_per_run=2).to_json()))
    worker = subprocess.Popen([sys.executable, "-m", "mlcdf.experiments.runner", str(job_file)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    ranks: dict[int, str] = {}
    while time.monotonic() < deadline and not (len(ranks) == 2 and (tmp_path / "runs/faces/tiny/log.jsonl").is_file()):
        ranks = _ranks(worker.pid)
        time.sleep(0.2)
    assert len(ranks) == 2, "the run did not start training"
    worker.kill()  # as the OOM killer would: no handler runs
    worker.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(runner_module._alive(pid, started) for pid, started in ranks.items()):
        time.sleep(0.2)
    assert not [pid for pid, started in ranks.items() if runner_module._alive(pid, started)]
