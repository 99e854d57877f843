"""Plans on a real single-node Slurm cluster (``slurm_cluster.py``): what a user of a cluster meets.

A CPU plan asks for no GPU, a refused job is one line, a cancelled, killed or timed-out run resumes on the
next launch from any host, jobs are claimed while queued and named after their runs, and the launcher
follows them without Slurm accounting. The launchers run as ``mlcdf reproduce`` processes, as a user
would start them; ``unshare -u`` gives one another host name, as a login node would have.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_cluster import PARTITION, SlurmCluster, missing_binaries, slurm_cluster
from toy import write_toy_prepared

from mlcdf.experiments.plans import load_plan
from mlcdf.experiments.runner import DONE, lock_path, run_plan, run_status

pytestmark = pytest.mark.slow

PLAN = """
[defaults]
prepared = {{ faces = "{prepared}" }}
epochs = {epochs}
batch_size = 8
image_size = 16
device = "cpu"
workers = 0
patience = 0
{runs}
"""
RUN = '\n[[runs]]\nname = "{name}"\nmodel = "timm:test_resnet"\n'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    pytest.importorskip("submitit", reason="the slurm extra (pip install 'mlcdf[slurm]') is not installed")
    missing = missing_binaries()
    if missing:
        message = f"Slurm is not installed ({', '.join(missing)} missing); .ci/run installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as started:
        yield started


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_toy_prepared(tmp_path_factory.mktemp("slurm-data"), {"train": 16, "val": 8, "test": 8})


def plan_file(folder: Path, prepared: Path, names: tuple[str, ...], epochs: int = 1) -> Path:
    path = folder / "plan.toml"
    path.write_text(PLAN.format(prepared=prepared, epochs=epochs, runs="".join(RUN.format(name=name) for name in names)))
    return path


def launch(cluster: SlurmCluster, plan: Path, out: Path, *options: str, host: str | None = None) -> subprocess.Popen:
    """``mlcdf reproduce --launcher slurm`` as a process of its own, on another host name if ``host``."""
    command = [sys.executable, "-m", "mlcdf", "reproduce", "--plan", str(plan), "--out", str(out), "--launcher", "slurm"]
    command += ["--partition", PARTITION, "--quiet", *options]
    if host is not None:
        command = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *command]
    env = {**cluster.env, "COLUMNS": "1000"}  # a message on one line, as the assertions read it
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(launcher: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    output, _ = launcher.communicate(timeout=timeout)
    return launcher.returncode, output


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f}s for {what}"
        time.sleep(0.1)


def epochs_done(run_dir: Path) -> int:
    log = run_dir / "log.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def results(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_a_cpu_plan_runs_as_named_queued_jobs_with_the_metrics_of_a_local_run(cluster, tmp_path, prepared):
    plan = plan_file(tmp_path, prepared, ("tiny-bce", "tiny-asl"))
    out = tmp_path / "slurm"
    cluster.run("scontrol", "update", f"PartitionName={PARTITION}", "State=DOWN")  # the jobs stay queued
    try:
        first = launch(cluster, plan, out)  # no --gpus: a CPU plan asks for none (sbatch refuses GPUs here)
        wait_for(lambda: len(cluster.jobs()) == 2 or first.poll() is not None, "the two jobs to be queued")
        assert first.poll() is None, finish(first)
        assert cluster.jobs() == {"tiny-bce@faces": "PENDING", "tiny-asl@faces": "PENDING"}  # squeue tells the runs apart
        # Queued, not started, and yet claimed: another launcher sees both runs taken.
        code, listed = finish(launch(cluster, plan, out, "--dry-run"))
        assert code == 0 and listed.count(", queued)") == 2, listed
        cluster.run("scontrol", "update", f"PartitionName={PARTITION}", "State=UP")
        # A second launcher while the first one's jobs are queued or running: it submits none of them again.
        second = launch(cluster, plan, out)
        (code, output), (second_code, second_output) = finish(first), finish(second)
        assert code == 0 and second_code == 0, output + second_output
        assert "sacct" not in output + second_output  # followed with squeue: no accounting, none of its warnings
        submitted = sorted((out / "launch" / "slurm").glob("*_submission.sh"))
        assert len(submitted) == 2, submitted
        assert not list(out.glob("runs/*/*.lock"))
        # The jobs' own messages are kept, in the job's log that a failure would point at.
        logs = "".join(path.read_text() for path in (out / "launch" / "slurm").glob("*_log.err"))
        assert "faces/tiny-bce: test mAP" in logs and "faces/tiny-asl: test mAP" in logs
        local = tmp_path / "local"
        run_plan(load_plan(plan), local)
        assert results(out) == results(local)
    finally:  # the later tests of this module need the partition up, whatever happened here
        cluster.run("scontrol", "update", f"PartitionName={PARTITION}", "State=UP")


@pytest.mark.parametrize(
    "options, reason",
    [
        (["--partition", "nope"], "invalid partition specified: nope"),
        (["--gpus", "1"], "Invalid generic resource (gres) specification"),
    ],
)
def test_a_job_sbatch_refuses_is_one_line_exit_2_and_leaves_no_claim(cluster, tmp_path, prepared, options, reason):
    out = tmp_path / "out"
    code, output = finish(launch(cluster, plan_file(tmp_path, prepared, ("tiny",)), out, *options))
    assert code == 2 and output.strip().splitlines() == [
        f"error: sbatch refused the job of faces/tiny: {reason}" + output.split(reason, 1)[1].strip()
    ]
    assert "Traceback" not in output and not lock_path(out / "runs" / "faces" / "tiny").exists()
    assert not (out / "launch" / "faces" / "tiny.json").exists() and not cluster.jobs()


def test_a_cancelled_or_killed_run_resumes_on_the_next_launch_from_another_host(cluster, tmp_path, prepared):
    epochs = 30
    plan = plan_file(tmp_path, prepared, ("tiny",), epochs=epochs)
    out = tmp_path / "out"
    run_dir = out / "runs" / "faces" / "tiny"
    lock = lock_path(run_dir)

    # scancel: the job stops at once, releases its lock and keeps its epochs; the launcher says so in a line.
    first = launch(cluster, plan, out)
    wait_for(lambda: epochs_done(run_dir) >= 1, "a first epoch")
    cluster.run("scancel", json.loads(lock.read_text())["slurm_job"])
    code, output = finish(first)
    assert code == 1 and "faces/tiny: FAILED: interrupted; rerun the same command to resume (SIGTERM)" in output, output
    assert not lock.exists() and (run_dir / "checkpoints" / "last.pt").is_file()

    # Killed behind Slurm's back (no signal handler runs): its lock stays, naming its job; the launcher still
    # notices through squeue that the job has ended.
    second = launch(cluster, plan, out, host="login-1")
    wait_for(
        lambda: "slurm_job" in json.loads(lock.read_text() if lock.is_file() else "{}") and not json.loads(lock.read_text()).get("queued"),
        "the job to hold its lock",
    )
    done_before = epochs_done(run_dir)
    wait_for(lambda: epochs_done(run_dir) > done_before, "an epoch of the resumed run")
    left = json.loads(lock.read_text())
    os.kill(left["pid"], 9)
    code, output = finish(second)
    assert code == 1 and "without an outcome" in output, output
    assert json.loads(lock.read_text()) == left

    # From yet another host: Slurm says the lock's job has ended, so it is taken over and the run resumes.
    code, output = finish(launch(cluster, plan, out, host="login-2"))
    assert code == 0 and f"{lock}: taking over the lock of" in output, output
    assert run_status(run_dir) == DONE and epochs_done(run_dir) == epochs


def test_a_job_past_its_time_limit_is_submitted_again_and_resumes(cluster, tmp_path, prepared):
    epochs = 20
    out = tmp_path / "out"
    run_dir = out / "runs" / "faces" / "tiny"
    launcher = launch(cluster, plan_file(tmp_path, prepared, ("tiny",), epochs=epochs), out, "--time", "1")
    wait_for(lambda: epochs_done(run_dir) >= 1, "a first epoch")
    # Held still until Slurm ends it at its time limit, so that it is past a first epoch and not finished
    # whatever the machine's speed. Stopped again and again: Slurm's warning signal comes with a SIGCONT.
    holder = json.loads(lock_path(run_dir).read_text())
    while cluster.jobs().get("tiny@faces") == "RUNNING":
        os.kill(holder["pid"], signal.SIGSTOP)
        time.sleep(0.5)
    code, output = finish(launcher)
    assert code == 0 and "faces/tiny: stopped at its Slurm time limit; submitted again to resume" in output, output
    assert run_status(run_dir) == DONE and epochs_done(run_dir) == epochs
