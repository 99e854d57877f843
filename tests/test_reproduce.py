"""make reproduce: the plan covers the paper's tables, re-runs skip and resume, the smoke variant runs."""

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.config import TrainConfig
from mlcdf.errors import SchemaError
from mlcdf.evaluation.report import method_of, paper_results
from mlcdf.experiments.plans import paper_plan
from mlcdf.experiments.reproduce import ReproduceConfig, reproduce, status
from mlcdf.experiments.runner import DONE, RESUME, run_status
from mlcdf.graph.embeddings import PAPER_WORD_EMBEDDING
from mlcdf.models import resolve_config
from mlcdf.train.callbacks import SilentCallbacks

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
TINY_RUN = "timm:test_resnet-bce"

#: The paper's plan as the code defined it before it became a plan file (PAPER_RUNS: model, loss,
#: embedding, recipe), frozen here so that the file cannot drift from it.
FORMER_PAPER_RUNS = [
    ("resnet50", "bce", None, "asl"),
    ("resnet50", "asl", None, "asl"),
    ("resnet101", "bce", None, "asl"),
    ("resnet101", "asl", None, "asl"),
    ("tresnet_m", "bce", None, "asl"),
    ("tresnet_m", "asl", None, "asl"),
    ("ml_gcn", "bce", "word", "mlgcn"),
    ("iml_gcn", "asl", "image", "asl"),
    ("iml_gcn", "asl", "word", "asl"),
    ("ml_agcn", "asl", "image", "asl"),
    ("ml_agcn", "asl", "word", "asl"),
    ("ml_agcn", "bce", "word", "asl"),
]


def former_train_config(out: Path, subset: str, model: str, loss: str, embedding: str | None, recipe: str) -> TrainConfig:
    """ReproduceConfig.train_config as it was, with its defaults (the paper's settings)."""
    name = "-".join(part for part in (model, loss, embedding) if part)
    return TrainConfig(
        prepared=str(out / "prepared" / subset),
        model=model,
        out=str(out / "runs" / subset / name),
        loss=loss,
        graph=str(out / "graphs" / f"{subset}-{embedding}.npz") if embedding else None,
        recipe=recipe,
        epochs=40,
        batch_size=128,
        image_size=224,
        patience=10,
        device="auto",
        pretrained=True,
        workers=None,
    )


def test_paper_plan_file_is_the_former_plan(tmp_path):
    out = tmp_path / "r"
    plan = ReproduceConfig(out=out, data=tmp_path).plan()
    assert plan.subsets == ("facial_components", "facial_attributes") and plan.seeds == 1 and plan.paper
    assert plan.word_embedding == PAPER_WORD_EMBEDDING and not plan.keep_last
    entries = plan.entries()
    expected = [former_train_config(out, subset, *run) for subset in plan.subsets for run in FORMER_PAPER_RUNS]
    # Compared resolved: a run that names no recipe trains with its model's (asl for these), as before.
    assert [resolve_config(plan.train_config(entry, out)) for entry in entries] == [resolve_config(config) for config in expected]
    assert [entry.name for entry in entries[:12]] == [Path(config.out).name for config in expected[:12]]


def test_plan_is_every_published_row_of_both_tables():
    plan = paper_plan()
    planned = {(method_of(run.model)[0], run.options["loss"], run.embedding) for run in plan.runs}
    for subset in ("facial_components", "facial_attributes"):
        published = {(row.method, row.loss, row.embedding) for row in paper_results() if row.subset == subset}
        assert planned == published
    assert len(plan.runs) == 12 and len({run.name for run in plan.runs}) == 12


def test_only_selects_runs_by_glob():
    assert [run.name for run in paper_plan().select(("resnet*", "*-image"))] == [
        "resnet50-bce",
        "resnet50-asl",
        "resnet101-bce",
        "resnet101-asl",
        "iml_gcn-asl-image",
        "ml_agcn-asl-image",
    ]


class StopAfterFirstEpoch(SilentCallbacks):
    """Interrupts training once the first epoch's checkpoint is written, like a Ctrl-C."""

    def epoch_end(self, record: dict) -> None:
        raise KeyboardInterrupt


TINY_PLAN = """
[defaults]
subsets = ["facial_components"]
paper = true

[[runs]]
name = "timm:test_resnet-bce"
model = "timm:test_resnet"
loss = "bce"
"""


@pytest.fixture
def tiny_plan(tmp_path) -> Path:
    """The paper's plan cut to one tiny configuration on one subset."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_PLAN)
    return path


def smoke(out: Path, plan_file: Path, **overrides) -> ReproduceConfig:
    return ReproduceConfig.smoke_test(out, plan_file=plan_file, device="cpu", **overrides)


def test_interrupted_run_resumes_and_finished_run_is_skipped(tiny_plan, tmp_path):
    config = smoke(tmp_path / "out", tiny_plan, epochs=2)
    run_dir = config.run_dir("facial_components", TINY_RUN)
    with pytest.raises(KeyboardInterrupt):
        reproduce(config, callbacks=StopAfterFirstEpoch())
    assert run_status(run_dir) == RESUME
    assert [p.status for p in status(config)] == [RESUME]
    assert not (run_dir.parent / f"{TINY_RUN}.lock").exists()  # the interrupted launcher let go of the run

    lines: list[str] = []
    result = reproduce(config, log=lines.append)
    assert result.trained == ["facial_components/timm:test_resnet-bce"] and not result.failed
    assert any("resuming" in line for line in lines)
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]  # epoch 0 was not trained again
    assert run_status(run_dir) == DONE
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert not (run_dir / "checkpoints" / "last.pt").exists()  # resume state dropped once evaluated
    report = config.report_path("facial_components").read_text()
    assert "timm:test_resnet" in report and "ResNet101 + ASL" in report and "| paper |" in report
    assert list(csv.DictReader((tmp_path / "out" / "results.csv").open()))[0]["method"] == "timm:test_resnet"

    again = reproduce(config)
    assert again.skipped == ["facial_components/timm:test_resnet-bce"] and not again.trained


def test_resuming_with_other_options_fails_that_run_only(tiny_plan, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        reproduce(smoke(tmp_path / "out", tiny_plan, epochs=2, keep_last=True), callbacks=StopAfterFirstEpoch())
    result = reproduce(smoke(tmp_path / "out", tiny_plan, epochs=3))
    [(label, reason)] = result.failed.items()
    assert label == "facial_components/timm:test_resnet-bce"
    assert "epochs 2 -> 3" in reason and "delete it" in reason
    # The command says which run failed and exits 1 (the others would have gone on).
    cli = runner.invoke(
        app,
        ["reproduce", "--smoke", "--plan", str(tiny_plan), "--out", str(tmp_path / "out"), "--epochs", "3", "--device", "cpu", "--quiet"],
    )
    assert cli.exit_code == 1
    assert "failed: facial_components/timm:test_resnet-bce" in cli.output


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give the Seq-DeepFake root"),
        (["--smoke", "--data", "."], "drop --data"),
        (["--data", "no/such/folder"], "no/such/folder: no such folder"),
        (["--smoke", "--only", "vgg*"], "matches no run"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path, args, message):
    result = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    result = runner.invoke(app, ["reproduce", "--smoke", "--out", str(tmp_path / "out"), "--dry-run"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert result.output.count(" new ") == 24
    assert "ml_agcn-asl-image" in result.output and "mlgcn" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "variables, expected",
    [
        (["REPRODUCE_SMOKE=1"], 'reproduce --smoke --device auto --out "reproduce-smoke"'),
        (["DATA=/data/Seq DeepFake", "DEVICE=cuda"], 'reproduce --data "/data/Seq DeepFake" --device cuda --out "reproduce"'),
    ],
)
def test_make_reproduce_passes_its_variables(variables, expected):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "reproduce", "MLCDF=mlcdf", *variables], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert f"mlcdf {expected}" in dry.stdout


@pytest.mark.slow
def test_smoke_variant_runs_the_whole_plan(tmp_path):
    out = tmp_path / "smoke"
    try:
        result = runner.invoke(app, ["reproduce", "--smoke", "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        for subset, table in (("facial_components", "Table II"), ("facial_attributes", "Table I")):
            report = (out / f"report-{subset}.md").read_text()
            assert table in report
            assert report.count("| Δ vs paper |") == 12  # each of our 12 runs beside its published row
            assert all(run_status(out / "runs" / subset / run.name) == DONE for run in paper_plan().runs)
        assert len(list(csv.DictReader((out / "results.csv").open()))) == 24
        assert "24 already done" in runner.invoke(app, ["reproduce", "--smoke", "--out", str(out), "--quiet"]).output
    finally:
        shutil.rmtree(out, ignore_errors=True)  # a few GB of checkpoints


def test_a_corrupt_run_config_is_named(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    (run_dir / "config.json").write_text('{"train": {"epochs": 2,}\n')
    with pytest.raises(SchemaError, match=r"config\.json:1: not valid JSON"):
        run_status(run_dir)


# --- Shipped plans by name; the sequence plan (issue 26) ---------------------------------------------------


def test_the_sequence_plan_resolves_by_name_and_holds_its_runs(tmp_path):
    out = tmp_path / "r"
    plan = ReproduceConfig(out=out, data=tmp_path, plan_file="sequence").plan()
    assert plan.source.endswith("resources/plans/sequence.toml") and plan.paper and plan.report_columns == "tasks"
    assert plan.subsets == ("facial_components", "facial_attributes")
    configs = {entry.label: plan.train_config(entry, out) for entry in plan.entries()}
    assert len(configs) == 8
    for subset in plan.subsets:
        for size in ("r34", "r50"):
            config = configs[f"{subset}/seqfakeformer_{size}"]
            # The authors' recipe: 170 epochs at batch 32 and 256 px, kept to the end (no early stopping).
            assert (config.model, config.recipe, config.epochs, config.batch_size, config.image_size, config.patience) == (
                f"seqfakeformer_{size}",
                "seqfakeformer",
                170,
                32,
                256,
                0,
            )
            assert config.pretrained and config.weight_decay == 1e-4 and config.lr is None  # the recipe's lr
        direct, graph = configs[f"{subset}/resnet101-asl"], configs[f"{subset}/ml_gcn-bce-word"]
        assert (direct.model, direct.loss, direct.epochs, direct.image_size, direct.batch_size) == ("resnet101", "asl", 40, 224, 128)
        assert (graph.model, graph.loss, graph.recipe, graph.graph) == (
            "ml_gcn",
            "bce",
            "mlgcn",
            str(out / "graphs" / f"{subset}-word.npz"),
        )
    # They are the paper's best direct and graph models on mAP summed over its two tables.
    summed: dict[tuple, float] = {}
    for row in paper_results():
        key = (row.category, method_of(row.method)[0], row.loss, row.embedding)
        summed[key] = summed.get(key, 0.0) + row.values["mAP"]
    for category, model, loss, embedding in (("direct", "resnet101", "asl", None), ("indirect", "ml_gcn", "bce", "word")):
        best = max((key for key in summed if key[0] == category), key=summed.__getitem__)
        assert best == (category, method_of(model)[0], loss, embedding)
    # A path still works, and the paper's plan is the default and has a name.
    assert ReproduceConfig(out=out, data=tmp_path, plan_file=REPO / "mlcdf/resources/plans/sequence.toml").plan() == plan
    assert ReproduceConfig(out=out, data=tmp_path, plan_file="paper").plan() == ReproduceConfig(out=out, data=tmp_path).plan()


def test_command_line_and_smoke_overrides_hold_for_runs_with_their_own_values(tmp_path):
    out = tmp_path / "s"
    plan = ReproduceConfig.smoke_test(out, plan_file="sequence").plan()
    for entry in plan.entries():
        config = plan.train_config(entry, out)
        assert (config.epochs, config.batch_size, config.image_size, config.pretrained) == (1, 16, 32, False), entry.label
    assert plan.train_config(plan.entries()[0], out).patience == 0  # not overridden: stays the run's own
    plan = ReproduceConfig(out=out, data=tmp_path, plan_file="sequence", epochs=3).plan()
    assert {plan.train_config(entry, out).epochs for entry in plan.entries()} == {3}


def test_an_unknown_plan_name_is_one_line_listing_the_shipped_plans(tmp_path):
    result = runner.invoke(app, ["reproduce", "--smoke", "--plan", "sequnce", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--plan sequnce: no such file, nor a shipped plan; the shipped plans are paper, sequence" in result.stderr
    assert not (tmp_path / "out").exists()
    # A path-like name is a file that is missing, as before.
    result = runner.invoke(app, ["reproduce", "--smoke", "--plan", str(tmp_path / "mine.toml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "mine.toml" in result.stderr and not (tmp_path / "out").exists()


def test_a_bad_report_columns_in_a_plan_names_the_line(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(TINY_PLAN.replace("paper = true", 'paper = true\nreport_columns = "wide"'))
    with pytest.raises(SchemaError, match=r"plan\.toml:5: defaults\.report_columns must be one of auto, paper, tasks, all, got 'wide'"):
        ReproduceConfig(out=tmp_path / "out", plan_file=path, smoke=True).plan()


@pytest.mark.slow
def test_smoke_variant_of_the_sequence_plan(tmp_path):
    # Measured on the 2-core CPU: 3 min 4 s (1 min 5 s of CPU time); 6 min with both cores busy elsewhere.
    out = tmp_path / "smoke"
    try:
        result = runner.invoke(app, ["reproduce", "--plan", "sequence", "--smoke", "--device", "cpu", "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        for subset in ("facial_components", "facial_attributes"):
            report = (out / f"report-{subset}.md").read_text()
            header = next(line for line in report.splitlines() if line.startswith("| Category"))
            assert header == "| Category | Method | Run | #Params (M) | mAP | CF1 | OF1 | Fixed-Acc | Adaptive-Acc |"
            sources = [line.split("|")[3].strip() for line in report.splitlines() if line.startswith("| ") and "---" not in line]
            # Each of our runs beside its published row, SeqFakeFormer's included, and the oracle last.
            assert sources[1:13] == [
                "seqfakeformer_r34",
                "QUOTED (not README)",
                "Δ vs paper",
                "seqfakeformer_r50",
                "Seq-DeepFake README",
                "Δ vs paper",
                "resnet101-asl",
                "paper",
                "Δ vs paper",
                "ml_gcn-bce-word",
                "paper",
                "Δ vs paper",
            ]
            assert sources[-1] == "oracle"
            for run in ("seqfakeformer_r34", "resnet101-asl"):
                metrics = json.loads((out / "runs" / subset / run / "eval" / "test" / "metrics.json").read_text())
                assert {"Fixed-Acc", "Adaptive-Acc", "oracle_order", "mAP"} <= set(metrics)
        table = list(csv.DictReader((out / "results.csv").open()))
        assert len(table) == 8 and all(row["Fixed-Acc"] and row["mAP"] for row in table)
    finally:
        shutil.rmtree(out, ignore_errors=True)
