"""Run locks and launch files against what a user or a crash leaves behind, and a run stopped by a signal.

The Slurm side of the same promises, on a real cluster, is in ``test_slurm.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy import write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.config import TrainConfig
from mlcdf.errors import INTERRUPTED_MESSAGE
from mlcdf.experiments import runner as runner_module
from mlcdf.experiments.runner import INTERRUPTED, RunJob, live_holder, lock_path, outcome_file, try_lock, unlock

cli = CliRunner()
PLAN = """
[defaults]
prepared = {{ faces = "{prepared}" }}
epochs = {epochs}
batch_size = 8
image_size = 16
device = "cpu"
workers = 0
patience = 0

[[runs]]
name = "tiny"
model = "timm:test_resnet"
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_toy_prepared(tmp_path_factory.mktemp("locks"), {"train": 16, "val": 8, "test": 8})


def plan_file(folder: Path, prepared: Path, epochs: int = 1) -> Path:
    path = folder / "plan.toml"
    path.write_text(PLAN.format(prepared=prepared, epochs=epochs))
    return path


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def reproduce(*args: str):
    return cli.invoke(app, ["reproduce", *args, "--quiet"])


# ---------------------------------------------------------------------------------- what is at a lock's name


@pytest.mark.parametrize("kind", ["garbage", "folder", "no holder"])
def test_something_at_a_locks_name_that_is_no_lock_is_one_line_exit_2_nothing_touched(tmp_path, prepared, kind):
    # Before: "trained by ?:-1 since ?; waiting for it", forever.
    out = tmp_path / "out"
    lock = lock_path(out / "runs" / "faces" / "tiny")
    lock.parent.mkdir(parents=True)
    if kind == "folder":
        lock.mkdir()
    else:
        lock.write_text("not json at all" if kind == "garbage" else json.dumps({"who": "me"}))
    before = snapshot(out)
    for dry_run in (["--dry-run"], []):  # the dry run first: without the fix the launch waits forever
        result = reproduce("--plan", str(plan_file(tmp_path, prepared)), "--out", str(out), *dry_run)
        assert result.exit_code == 2, result.output
        assert f"{lock}: not a run lock" in result.output and len(result.output.strip().splitlines()) == 1
        assert snapshot(out) == before


def test_a_lock_whose_process_id_now_belongs_to_another_process_is_taken_over(tmp_path):
    run_dir = tmp_path / "r"
    alive = os.getppid()  # a live process of this host, but not the one that took the lock: started at another time
    lock_path(run_dir).write_text(json.dumps({"host": socket.gethostname(), "pid": alive, "started": "then", "process_start": "1"}))
    assert live_holder(run_dir) is None
    warnings: list[str] = []
    assert try_lock(run_dir, warnings.append)
    mine = json.loads(lock_path(run_dir).read_text())
    assert mine["pid"] == os.getpid() and mine["process_start"] and len(warnings) == 1 and "which has ended" in warnings[0]
    # The same process id with its own start time is the holder, alive.
    mine = {**mine, "pid": alive, "process_start": runner_module._process_start(alive)}
    lock_path(run_dir).write_text(json.dumps(mine))
    assert live_holder(run_dir) == mine and not try_lock(run_dir, print)


def test_a_queued_claim_is_taken_by_its_own_job_only(tmp_path):
    run_dir = tmp_path / "r"
    assert try_lock(run_dir, print, claim="abc", queued_as="")
    assert json.loads(lock_path(run_dir).read_text())["queued"] is True
    assert not try_lock(run_dir, print, claim="other")  # a live launcher's claim of another job
    unlock(run_dir, claim="other")
    assert lock_path(run_dir).exists()
    warnings: list[str] = []
    assert try_lock(run_dir, warnings.append, claim="abc") and not warnings  # its own claim: no warning
    assert "queued" not in json.loads(lock_path(run_dir).read_text())
    unlock(run_dir, claim="abc")  # no longer the claim: the job's own lock stays until it ends
    assert lock_path(run_dir).exists()
    unlock(run_dir)
    assert not lock_path(run_dir).exists()


# -------------------------------------------------------------------------------------------- launch files


@pytest.mark.parametrize("name", ["tiny.log", "tiny.outcome.json", "tiny.json"])
def test_files_of_the_users_at_a_runs_launch_names_are_refused_exit_2_nothing_touched(tmp_path, prepared, name):
    out = tmp_path / "out"
    mine = out / "launch" / "faces" / name
    mine.parent.mkdir(parents=True)
    mine.write_text('{"outcome": "mine", "notes": "my own"}\n' if name.endswith(".json") else "my notes\n")
    before = snapshot(out)
    result = reproduce("--plan", str(plan_file(tmp_path, prepared)), "--out", str(out), "--jobs", "2", "--devices", "cpu,cpu")
    assert result.exit_code == 2 and f"{mine}: exists and was not written by 'mlcdf reproduce'" in result.output, result.output
    assert snapshot(out) == before


def test_a_launchs_own_files_are_replaceable(tmp_path, prepared):
    job_file = tmp_path / "out" / "launch" / "faces" / "tiny.json"
    job_file.parent.mkdir(parents=True)
    config = TrainConfig(prepared=str(prepared), model="timm:test_resnet", out=str(tmp_path / "out" / "runs" / "faces" / "tiny"))
    job_file.write_text(json.dumps(RunJob("faces/tiny", config).to_json()))
    job_file.with_suffix(".log").write_text("training\n")
    outcome_file(job_file).write_text(json.dumps({"outcome": "failed", "reason": "why"}))
    result = reproduce("--plan", str(plan_file(tmp_path, prepared)), "--out", str(tmp_path / "out"), "--dry-run")
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------------------------- signals


def test_ctrl_c_is_one_line_exit_130(tmp_path, prepared, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_module, "_launch", interrupted)
    result = reproduce("--plan", str(plan_file(tmp_path, prepared)), "--out", str(tmp_path / "out"))
    assert result.exit_code == 130 and result.output.strip() == INTERRUPTED_MESSAGE


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_run_stopped_by_a_signal_releases_its_lock_keeps_its_epochs_and_says_one_line(tmp_path, prepared, stop):
    # scancel, a Slurm time limit and a Ctrl-C through --jobs: the worker unwinds instead of dying.
    run_dir = tmp_path / "runs" / "faces" / "tiny"
    config = TrainConfig(
        prepared=str(prepared), model="timm:test_resnet", out=str(run_dir), epochs=500, batch_size=8, image_size=16, device="cpu", workers=0
    )
    job_file = tmp_path / "launch" / "faces" / "tiny.json"
    job_file.parent.mkdir(parents=True)
    job_file.write_text(json.dumps(RunJob("faces/tiny", config).to_json()))
    worker = subprocess.Popen(
        [sys.executable, "-m", "mlcdf.experiments.runner", str(job_file)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    worker.send_signal(stop)
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 1
    assert output.strip().splitlines()[-1] == f"{INTERRUPTED_MESSAGE} ({stop.name})" and "Traceback" not in output, output
    assert json.loads(outcome_file(job_file).read_text()) == {"outcome": INTERRUPTED, "reason": stop.name}
    assert not lock_path(run_dir).exists() and (run_dir / "checkpoints" / "last.pt").is_file()
