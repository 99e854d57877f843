"""--workers has one upper bound for every command, and --perturb-seed a range checked before any work:
each is a one-line error with exit code 2 that writes nothing (issue 25)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.config import MAX_WORKERS, check_workers
from mlcdf.data.perturb import MAX_SEED, Condition, check_seed
from mlcdf.errors import MlcdfError

runner = CliRunner()

#: Every command that takes --workers. Given first, --workers is read before the options a command
#: requires, so its bound is what stops each of these.
WORKER_COMMANDS = ["train", "evaluate", "predict", "prepare", "synth", "perturb", "build-graph", "reproduce"]


def _one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*"))


@pytest.mark.parametrize("command", WORKER_COMMANDS)
def test_every_commands_workers_stop_at_the_one_bound(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [command, "--workers", "100000"])
    assert result.exit_code == 2
    assert _one_line_error(result.output) == f"error: --workers must be from 0 to {MAX_WORKERS}, got 100000"
    assert _files(tmp_path) == []


def test_every_command_with_workers_is_listed():
    """A new command with --workers is added to WORKER_COMMANDS (and so checked above)."""
    import typer.main

    group = typer.main.get_command(app)
    taking = {name for name, command in group.commands.items() if any("--workers" in p.opts for p in command.params)}
    assert taking == set(WORKER_COMMANDS)


def test_evaluate_workers_over_the_bound_stop_before_the_run_is_read(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--perturb", "jpeg:1", "--workers", "100000"])
    assert result.exit_code == 2
    assert "--workers must be from 0 to 64, got 100000" in _one_line_error(result.output)
    assert _files(tmp_path) == [run]


@pytest.mark.parametrize("seed", ["-1", str(MAX_SEED + 1), "1" + "0" * 30])
def test_evaluate_perturb_seed_out_of_range_is_one_line_before_any_work(toy_run, tmp_path, seed):
    out = tmp_path / "eval"
    args = ["evaluate", "--run", str(toy_run), "--perturb", "jpeg:1", "--perturb-seed", seed, "--out", str(out)]
    result = runner.invoke(app, [*args, "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 2
    assert _one_line_error(result.output).startswith(f"error: --perturb-seed must be an integer from 0 to {MAX_SEED}, got ")
    assert not out.exists()


def test_the_library_checks_the_seed_and_workers_before_any_work(tmp_path):
    from mlcdf.data.perturbed import perturb_dataset
    from mlcdf.evaluation.runs import evaluate_run

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(MlcdfError, match="perturb_seed must be an integer from 0"):
        evaluate_run(run, perturb=[Condition("jpeg", 1)], perturb_seed=-1)
    with pytest.raises(MlcdfError, match="workers must be from 0 to 64, got 100000"):
        evaluate_run(run, perturb=[Condition("jpeg", 1)], workers=100_000)
    with pytest.raises(MlcdfError, match="seed must be an integer from 0"):
        perturb_dataset(tmp_path / "root", tmp_path / "out", "jpeg:1", subsets=["facial_components"], seed=-1)
    with pytest.raises(MlcdfError, match="workers must be from 0 to 64"):
        perturb_dataset(tmp_path / "root", tmp_path / "out", "jpeg:1", subsets=["facial_components"], workers=65)
    assert _files(tmp_path) == [run]


def test_check_workers_and_check_seed():
    assert check_workers(None) is None and check_workers(0) == 0 and check_workers(MAX_WORKERS) == MAX_WORKERS
    for bad in (-1, MAX_WORKERS + 1):
        with pytest.raises(MlcdfError, match=f"--workers must be from 0 to {MAX_WORKERS}, got {bad}$"):
            check_workers(bad)
    with pytest.raises(MlcdfError, match="got a number of 31 digits"):
        check_workers(10**30)
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED
    for bad_seed in (-1, MAX_SEED + 1, True, 1.5):
        with pytest.raises(MlcdfError, match=f"seed must be an integer from 0 to {MAX_SEED}"):
            check_seed(bad_seed)  # type: ignore[arg-type]
