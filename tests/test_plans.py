"""Plans as files and the runner: parsing and every plan error, seeds, locks, launchers, concurrency."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from toy import write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.config import TrainConfig
from mlcdf.errors import MlcdfError, SchemaError
from mlcdf.experiments.plans import Plan, load_plan
from mlcdf.experiments.runner import (
    DONE,
    NEW,
    PLANNED,
    SKIPPED,
    TRAINED,
    RunJob,
    Running,
    execute,
    lock_path,
    run_plan,
    run_status,
    try_lock,
    unlock,
)

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

SMALL_PLAN = """
[defaults]
prepared = {{ facial_components = "{prepared}" }}
epochs = 1
batch_size = 8
image_size = 16
device = "cpu"
workers = 0
patience = 0
seeds = {seeds}

[[runs]]
name = "tiny-bce"
model = "timm:test_resnet"

[[runs]]
name = "tiny-asl"
model = "timm:test_resnet"
loss = "asl"
lr = 0.001
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_toy_prepared(tmp_path_factory.mktemp("plans"), {"train": 16, "val": 8, "test": 8})


def write_plan(folder: Path, text: str, name: str = "plan.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def small_plan(folder: Path, prepared: Path, seeds: int = 1, extra: str = "") -> Path:
    return write_plan(folder, SMALL_PLAN.format(prepared=prepared, seeds=seeds) + extra)


# ------------------------------------------------------------------------------------------- parsing


def test_a_plan_file_reads_its_defaults_runs_and_relative_paths(tmp_path):
    path = write_plan(
        tmp_path,
        """
        [defaults]
        prepared = "data/prepared/facial_components"   # one folder: the subset takes its name
        seeds = 2
        epochs = 3
        pretrained = false

        [[runs]]
        name = "gcn"
        model = "ml_gcn"
        embedding = "word"
        recipe = "mlgcn"

        [[runs]]
        name = "r50"
        model = "resnet50"
        epochs = 5
        weights = "w/r50.pth"
        """,
    )
    plan = load_plan(path)
    assert plan.prepared == {"facial_components": tmp_path / "data/prepared/facial_components"}
    assert plan.subsets == ("facial_components",) and plan.seeds == 2 and plan.train == {"epochs": 3, "pretrained": False}
    assert [entry.name for entry in plan.entries()] == ["gcn-s0", "gcn-s1", "r50-s0", "r50-s1"]
    gcn, _, _, r50 = (plan.train_config(entry, tmp_path / "out") for entry in plan.entries())
    assert (gcn.model, gcn.recipe, gcn.epochs, gcn.seed) == ("ml_gcn", "mlgcn", 3, 0)
    assert gcn.graph == str(tmp_path / "out/graphs/facial_components-word.npz")
    assert gcn.out == str(tmp_path / "out/runs/facial_components/gcn-s0")
    assert (r50.epochs, r50.seed, r50.weights) == (5, 1, str(tmp_path / "w/r50.pth"))


def test_one_seed_keeps_the_names_and_the_seed_option(tmp_path):
    plan = Plan.from_dict({"defaults": {"prepared": {"a": "/p/a", "b": "/p/b"}, "seed": 7}, "runs": [{"name": "r", "model": "resnet50"}]})
    assert [entry.label for entry in plan.entries()] == ["a/r", "b/r"]
    assert plan.train_config(plan.entries()[0], tmp_path).seed == 7


def test_a_plan_built_in_python_round_trips_and_takes_overrides():
    plan = Plan.from_dict(
        {"defaults": {"prepared": {"s": "/p/s"}, "epochs": 2}, "runs": [{"name": "r", "model": "resnet50", "loss": "asl"}]},
        source="my study",
    )
    assert Plan.from_dict(plan.to_dict(), source="my study") == plan
    changed = plan.with_defaults(epochs=4, seeds=3, device=None)
    assert changed.train == {"epochs": 4} and changed.seeds == 3
    with pytest.raises(SchemaError, match="my study: defaults: epochs must be int"):
        plan.with_defaults(epochs="4")


BAD_PLANS = [
    ("[defaults]\nprepared = 'p'\nepoch = 3\n[[runs]]\nname = 'r'\nmodel = 'resnet50'\n", ":3: defaults: unknown key 'epoch'"),
    (
        "[defaults]\nprepared = 'p'\n[[runs]]\nname = 'r'\nmodel = 'resnet50'\n[[runs]]\nname = 'r'\nmodel = 'resnet101'\n",
        ":7: runs[1]: duplicate run name 'r'",
    ),
    ("[defaults]\nprepared = 'p'\n[[runs]]\nname = 'r'\nmodel = 'resnet5'\n", ":5: runs[0] (r): unknown model 'resnet5'"),
    (
        "[defaults]\nprepared = 'p'\n[[runs]]\nname = 'r'\nmodel = 'resnet50'\nbatch_size = '32'\n",
        ":6: runs[0] (r): batch_size must be int, got '32'",
    ),
    ("[defaults]\nprepared = 'p'\n[[runs]]\nname = 'r'\nmodel = 'resnet50'\npretrained = 1\n", ":6: runs[0] (r): pretrained must be bool"),
    ("[defaults]\nprepared = 'p'\n[[runs]]\nname = 'r'\nmodel = 'resnet50'\nlos = 'asl'\n", ":6: runs[0] (r): unknown key 'los'"),
    ("[defaults]\nprepared = 'p'\n[[runs]]\nname = 'r'\nmodel = 'resnet50'\nloss = 'focal'\n", "runs[0] (r): unknown loss 'focal'"),
    ("[defaults]\nprepared = 'p'\n[[runs]]\nname = 'r'\nmodel = 'resnet50'\nout = 'x'\n", ":6: runs[0] (r): out is chosen by the runner"),
    (
        "[defaults]\nprepared = 'p'\n[[runs]]\nname = 'r'\nmodel = 'ml_gcn'\nembedding = 'glove'\n",
        ":6: runs[0] (r): embedding must be one of word, image",
    ),
    ("[defaults]\nprepared = 'p'\n[[runs]]\nname = '../r'\nmodel = 'resnet50'\n", ":4: '../r' is not usable as a run name"),
    ("[defaults]\nprepared = 'p'\nseeds = 0\n[[runs]]\nname = 'r'\nmodel = 'resnet50'\n", ":3: defaults.seeds must be at least 1"),
    ("[defaults]\nprepared = 'p'\ndata = 'd'\n[[runs]]\nname = 'r'\nmodel = 'resnet50'\n", "give either prepared or data"),
    ("[defaults]\nepochs = 1\n[[runs]]\nname = 'r'\nmodel = 'resnet50'\n", "defaults: give prepared"),
    ("[defaults]\nprepared = 'p'\n", "no runs"),
    ("[defaults]\nprepared = 'p'\n[[runs]]\nmodel = 'resnet50'\n", ":3: runs[0]: every run needs a name"),
    ("[default]\nprepared = 'p'\n", "unknown key 'default'"),
    ("[defaults]\nprepared = 'p'\n[[runs]]\nname = 'r'\nmodel = resnet50\n", "not valid TOML"),
]


@pytest.mark.parametrize("text, message", BAD_PLANS, ids=[message for _, message in BAD_PLANS])
def test_a_bad_plan_is_one_line_naming_file_line_and_key_exit_2_nothing_started(tmp_path, text, message):
    path = write_plan(tmp_path, text)
    with pytest.raises(SchemaError) as caught:
        load_plan(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)
    out = tmp_path / "out"
    result = runner.invoke(app, ["reproduce", "--plan", str(path), "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and message in result.output
    assert not out.exists()


def test_a_missing_plan_file_and_a_missing_prepared_folder_are_named(tmp_path):
    result = runner.invoke(app, ["reproduce", "--plan", str(tmp_path / "no.toml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and f"{tmp_path / 'no.toml'}: not found" in result.output
    path = small_plan(tmp_path, tmp_path / "nowhere")
    result = runner.invoke(app, ["reproduce", "--plan", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and f"{tmp_path / 'nowhere'}: not found" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--devices", "0,gpu"], "each device is a GPU number or cpu"),
        (["--launcher", "pbs"], "unknown launcher 'pbs'"),
        (["--subset", "facial_attributes"], "no subset 'facial_attributes'"),
        (["--smoke"], "names its prepared folders; drop --smoke"),
    ],
)
def test_bad_launch_options_are_one_line_and_exit_2(tmp_path, prepared, args, message):
    path = small_plan(tmp_path, prepared)
    result = runner.invoke(app, ["reproduce", "--plan", str(path), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_dry_run_shows_each_seed_with_its_status_and_writes_nothing(tmp_path, prepared):
    path = small_plan(tmp_path, prepared, seeds=2)
    result = runner.invoke(app, ["reproduce", "--plan", str(path), "--out", str(tmp_path / "out"), "--dry-run"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ("tiny-bce-s0", "tiny-bce-s1", "tiny-asl-s0", "tiny-asl-s1"):
        assert name in result.output
    assert result.output.count(" new ") == 4 and "2 seed(s)" in result.output
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- locks


def test_a_lock_is_exclusive_and_names_its_holder(tmp_path):
    run_dir = tmp_path / "runs" / "s" / "r"
    assert try_lock(run_dir, print)
    holder = json.loads(lock_path(run_dir).read_text())
    assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid() and holder["started"]
    # Another live process of this host holds it: not taken, not touched.
    other = {"host": socket.gethostname(), "pid": os.getppid(), "started": "then"}
    lock_path(run_dir).write_text(json.dumps(other))
    assert not try_lock(run_dir, print)
    unlock(run_dir)  # not ours: stays
    assert json.loads(lock_path(run_dir).read_text()) == other
    # Another host's lock is never judged stale from here.
    lock_path(run_dir).write_text(json.dumps({**other, "host": "elsewhere", "pid": 999999999}))
    assert not try_lock(run_dir, print)


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    run_dir = tmp_path / "r"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path(run_dir).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "then"}))
    warnings: list[str] = []
    assert try_lock(run_dir, warnings.append)
    assert json.loads(lock_path(run_dir).read_text())["pid"] == os.getpid()
    assert len(warnings) == 1 and f"{lock_path(run_dir)}: taking over the lock of" in warnings[0] and f":{int(dead.stdout)} " in warnings[0]
    unlock(run_dir)
    assert not lock_path(run_dir).exists()


# ------------------------------------------------------------------------------------------- running


def results(out: Path) -> list[dict]:
    with (out / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_run_plan_trains_each_seed_goes_on_after_a_failure_and_skips_what_is_done(tmp_path, prepared):
    path = small_plan(tmp_path, prepared, seeds=2, extra='\n[[runs]]\nname = "broken"\nmodel = "timm:test_resnet"\nweights = "no.pth"\n')
    out = tmp_path / "out"
    plan = load_plan(path)
    result = run_plan(plan.with_defaults(tensorboard=True), out, only=["tiny-bce", "broken"])
    assert result.trained == ["facial_components/tiny-bce-s0", "facial_components/tiny-bce-s1"]
    assert list(result.failed) == ["facial_components/broken-s0", "facial_components/broken-s1"]
    assert "no.pth" in result.failed["facial_components/broken-s0"]
    seeds = [
        json.loads((out / "runs/facial_components" / name / "config.json").read_text())["train"]["seed"]
        for name in ("tiny-bce-s0", "tiny-bce-s1")
    ]
    assert seeds == [0, 1]
    rows = results(out)
    assert [(row["method"], row["seed"]) for row in rows] == [("timm:test_resnet", "0"), ("timm:test_resnet", "1")]
    maps = [
        json.loads((out / "runs/facial_components" / name / "eval/test/metrics.json").read_text())["mAP"]
        for name in ("tiny-bce-s0", "tiny-bce-s1")
    ]
    assert [float(row["mAP"]) for row in rows] == pytest.approx(maps, abs=1e-6)
    # The category figure counts a configuration once, by its mean over the seeds.
    with (out / "figure-facial_components.csv").open() as handle:
        bars = {(bar["category"], bar["metric"]): bar for bar in csv.DictReader(handle)}
    assert float(bars["direct", "mAP"]["mean"]) == pytest.approx(sum(maps) / 2, abs=1e-4)
    assert (bars["direct", "mAP"]["n"], float(bars["direct", "mAP"]["std"])) == ("1", 0.0)
    assert (out / "figure-facial_components.png").read_bytes().startswith(b"\x89PNG")
    # Each run its own TensorBoard folder under OUT/tensorboard (plan key tensorboard = true).
    for name in ("tiny-bce-s0", "tiny-bce-s1"):
        assert list((out / "tensorboard/facial_components" / name).glob("events.out.tfevents.*"))
    assert not list(out.glob("runs/*/*.lock"))
    again = run_plan(plan, out, dry_run=True)
    assert [(o.entry.name, o.status, o.outcome) for o in again.outcomes] == [
        ("tiny-bce-s0", DONE, PLANNED),
        ("tiny-bce-s1", DONE, PLANNED),
        ("tiny-asl-s0", NEW, PLANNED),
        ("tiny-asl-s1", NEW, PLANNED),
        ("broken-s0", NEW, PLANNED),
        ("broken-s1", NEW, PLANNED),
    ]
    assert [o.outcome for o in run_plan(plan, out, only=["tiny-bce"]).outcomes] == [SKIPPED, SKIPPED]


@pytest.mark.slow
def test_two_jobs_on_two_cpus_give_the_results_of_one_job(tmp_path, prepared):
    path = small_plan(tmp_path, prepared, extra='\n[[runs]]\nname = "broken"\nmodel = "timm:test_resnet"\nweights = "no.pth"\n')
    one = runner.invoke(app, ["reproduce", "--plan", str(path), "--out", str(tmp_path / "one"), "--quiet"])
    assert one.exit_code == 1 and "failed: facial_components/broken" in one.output
    two = runner.invoke(
        app, ["reproduce", "--plan", str(path), "--out", str(tmp_path / "two"), "--jobs", "2", "--devices", "cpu,cpu", "--quiet"]
    )
    assert two.exit_code == 1 and "failed: facial_components/broken" in two.output and "no.pth" in two.output
    assert results(tmp_path / "one") == results(tmp_path / "two") and len(results(tmp_path / "one")) == 2
    for name in ("tiny-bce", "tiny-asl"):
        assert (tmp_path / "two/launch/facial_components" / f"{name}.outcome.json").is_file()
        assert run_status(tmp_path / "two/runs/facial_components" / name) == DONE


@pytest.mark.slow
def test_the_slurm_launcher_through_submitits_local_executor(tmp_path, prepared):
    pytest.importorskip("submitit", reason="the slurm extra (pip install 'mlcdf[slurm]') is not installed")
    path = small_plan(tmp_path, prepared)
    out = tmp_path / "out"
    result = run_plan(load_plan(path), out, launcher="slurm", slurm={"cluster": "local", "time": 10}, poll_seconds=0.5)
    assert [o.outcome for o in result.outcomes] == [TRAINED, TRAINED], [o.reason for o in result.outcomes]
    assert len(results(out)) == 2 and list((out / "launch" / "slurm").glob("*_log.out"))
    # Status from the run folders alone: a fresh launcher finds both done.
    assert [o.status for o in run_plan(load_plan(path), out, launcher="slurm", slurm={"cluster": "local"}, dry_run=True).outcomes] == [
        DONE,
        DONE,
    ]


@pytest.mark.slow
def test_two_launchers_on_one_out_train_each_run_once(tmp_path, prepared):
    path = small_plan(tmp_path, prepared, seeds=2)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mlcdf", "reproduce", "--plan", str(path), "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launchers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    finished = [launcher.communicate(timeout=600) for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], finished
    trained = [line.split(":")[0] for _, stderr in finished for line in stderr.splitlines() if line.endswith(": training")]
    assert sorted(trained) == sorted(f"facial_components/{name}-s{seed}" for name in ("tiny-bce", "tiny-asl") for seed in (0, 1))
    for run in (out / "runs" / "facial_components").iterdir():
        if run.is_dir():
            assert len((run / "log.jsonl").read_text().splitlines()) == 1  # one epoch, trained once
    assert len(results(out)) == 4


def test_the_slurm_launcher_names_what_is_missing(tmp_path, prepared, monkeypatch):
    plan = load_plan(small_plan(tmp_path, prepared))
    if shutil.which("srun") is None:  # this machine: no Slurm, and no silent fallback to local processes
        with pytest.raises(MlcdfError, match='--launcher slurm: Could not detect "srun".*--slurm-cluster local'):
            run_plan(plan, tmp_path / "out", launcher="slurm")
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if the extra were not installed
    result = runner.invoke(app, ["reproduce", "--plan", str(plan.source), "--out", str(tmp_path / "out2"), "--launcher", "slurm"])
    assert result.exit_code == 2 and "--launcher slurm needs submitit: pip install 'mlcdf[slurm]'" in result.output
    assert not (tmp_path / "out2").exists()


def test_the_live_display_reads_each_running_run_from_its_folder(tmp_path):
    config = TrainConfig(prepared="p", model="resnet50", out=str(tmp_path / "r"), epochs=5)
    running = Running(RunJob("s/r", config), device="1")
    assert running.progress() == (0, 5, None)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "log.jsonl").write_text('{"epoch": 0, "val_mAP": 0.5}\n{"epoch": 1, "val_mAP": 0.625}\n')
    assert running.progress() == (2, 5, 0.625)


def test_the_readmes_plan_example_is_a_valid_plan(tmp_path):
    readme = (REPO / "docs" / "plans.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Plans, several GPUs and Slurm") :]
    example = section[section.index("```toml\n") + len("```toml\n") : section.index("```\n", section.index("```toml"))]
    plan = load_plan(write_plan(tmp_path, example, name="sweep.toml"))
    assert [run.name for run in plan.runs] == ["r50-bce", "r50-asl", "mlagcn-asl-word"] and plan.seeds == 3
    assert plan.prepared == {"faces": tmp_path / "prepared/faces"} and plan.embeddings() == ["word"]


@pytest.mark.slow
def test_a_run_over_several_devices_trains_through_torchrun(tmp_path, prepared, monkeypatch):
    # gloo on the CPU stands in for GPUs: the same torchrun launch, 2 processes.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = TrainConfig(
        prepared=str(prepared),
        model="timm:test_resnet",
        out=str(tmp_path / "s" / "r"),
        epochs=1,
        batch_size=8,
        image_size=16,
        device="cpu",
        workers=0,
        patience=0,
    )
    assert execute(RunJob("s/r", config, gpus_per_run=2)) == TRAINED
    assert json.loads((tmp_path / "s/r/config.json").read_text())["world_size"] == 2
    assert run_status(tmp_path / "s/r") == DONE and not lock_path(tmp_path / "s/r").exists()
    assert not list((tmp_path / "s").glob(".*.train.json"))  # its options file is gone


def test_a_run_saved_before_an_option_existed_resumes_with_its_default(tmp_path):
    from mlcdf.experiments.runner import _check_same_options

    run_dir = tmp_path / "r50-asl"
    run_dir.mkdir()
    planned = TrainConfig(prepared="p", model="resnet50", out=str(run_dir), loss="asl", epochs=2)
    saved = {key: value for key, value in dataclasses.asdict(planned.resolve()).items() if not key.startswith("asl_")}
    (run_dir / "config.json").write_text(json.dumps({"train": saved}))
    _check_same_options(run_dir, planned)  # an older mlcdf wrote no ASL settings: it trained the paper's
    with pytest.raises(MlcdfError, match=r"was trained with other options \(asl_gamma_neg 4.0 -> 1.0\)"):
        _check_same_options(run_dir, TrainConfig(prepared="p", model="resnet50", out=str(run_dir), loss="asl", epochs=2, asl_gamma_neg=1.0))
