"""``mlcdf study cooccurrence``: the analysis by value, and the study end to end at the smallest settings."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.errors import MlcdfError
from mlcdf.evaluation.evaluate import PAPER_METRICS
from mlcdf.experiments.study import (
    CSV_COLUMNS,
    DIRECT,
    PRESETS,
    StudyConfig,
    StudyRow,
    graph_minus_direct,
    run_study,
    study_markdown,
    summarise,
)


def row(strength: float, model: str, seed: int, mAP: float, CF1: float = 50.0) -> StudyRow:
    return StudyRow(strength, model, seed, {**dict.fromkeys(PAPER_METRICS, 10.0), "mAP": mAP, "CF1": CF1})


def test_summaries_and_the_paired_difference_by_value(tmp_path: Path) -> None:
    rows = [
        row(0.0, DIRECT, 0, 60.0),
        row(0.0, DIRECT, 1, 64.0),
        row(0.0, "ml_gcn", 0, 58.0),
        row(0.0, "ml_gcn", 1, 61.0),
        row(0.9, DIRECT, 0, 70.0),
        row(0.9, "ml_gcn", 0, 75.0),
        row(0.9, "ml_gcn", 1, 77.0),  # seed 1 direct missing
    ]
    table = summarise(rows, "mAP")
    assert table[(0.0, DIRECT)].mean == 62.0 and table[(0.0, DIRECT)].std == pytest.approx(math.sqrt(8))  # sample std
    assert table[(0.9, "ml_gcn")].n == 2 and math.isnan(table[(0.9, DIRECT)].std)
    differences = graph_minus_direct(rows)
    assert differences[(0.0, "ml_gcn")].mean == pytest.approx(-2.5)  # (58-60, 61-64)
    assert differences[(0.0, "ml_gcn")].std == pytest.approx(math.sqrt(0.5))
    assert differences[(0.9, "ml_gcn")].n == 1 and differences[(0.9, "ml_gcn")].mean == 5.0  # paired seeds only
    text = study_markdown(rows, StudyConfig(out=tmp_path, models=(DIRECT, "ml_gcn")))
    assert "| 0 | direct | 2 | 62.0 ± 2.8 |" in text
    assert "| 0 | ml_gcn | 2 | -2.5 ± 0.7 |" in text and "| 0.9 | ml_gcn | 1 | +5.0 ± – |" in text


def test_the_plan_has_every_model_and_seed_on_every_strength(tmp_path: Path) -> None:
    """Run folders are <model>-s<k> even with one seed, so that adding seeds later trains only the new ones."""
    config = StudyConfig(out=tmp_path, strengths=(0.0, 0.5), seeds=1)
    assert [entry.label for entry in config.plan().entries()] == [
        f"{tag}/{model}-s0" for tag in ("rho0", "rho0.5") for model in (DIRECT, "ml_gcn", "ml_agcn")
    ]
    plan = StudyConfig(out=tmp_path, strengths=(0.9,), seeds=3).plan()
    trained = {entry.run.name: plan.train_config(entry, tmp_path) for entry in plan.entries()}
    assert trained["ml_gcn-s2"].seed == 2 and trained["direct-s1"].seed == 1
    assert trained["direct-s0"].model == "timm:resnet18" and trained["direct-s0"].graph is None
    assert trained["ml_agcn-s0"].backbone == "resnet18"
    assert trained["ml_agcn-s0"].graph == str(tmp_path / "graphs" / "rho0.9-word.npz")
    assert trained["ml_agcn-s0"].prepared == str(tmp_path / "prepared" / "rho0.9" / "facial_components")
    assert {config.loss for config in trained.values()} == {"asl"} and len(trained) == 9


def test_the_gpu_preset_keeps_the_cpu_presets_data_difficulty(tmp_path: Path) -> None:
    """The presets differ in model and budget, not in how visible the manipulations are (issue 28)."""
    gpu, cpu = StudyConfig(out=tmp_path, **PRESETS["gpu"]), StudyConfig(out=tmp_path)
    assert gpu.synth_config(0.5).strength == cpu.synth_config(0.5).strength == 4.0
    assert (gpu.backbone, gpu.image_size, gpu.pretrained) == ("resnet101", 224, True)


def tiny_study(out: Path, **changes) -> StudyConfig:
    settings = dict(
        out=out,
        strengths=(0.0, 1.0),
        seeds=2,
        models=(DIRECT, "ml_gcn"),
        backbone="test_resnet",
        train=24,
        val=8,
        test=16,
        data_size=32,
        image_size=16,
        epochs=1,
        batch_size=8,
        device="cpu",
    )
    return StudyConfig(**{**settings, **changes})


@pytest.mark.slow
def test_the_study_end_to_end_at_the_smallest_settings(tmp_path: Path) -> None:
    out = tmp_path / "study"
    result, rows = run_study(tiny_study(out))
    assert not result.failed and len(result.trained) == 8
    with open(out / "study.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == CSV_COLUMNS
    assert [(r["strength"], r["model"], r["seed"]) for r in table] == [
        (s, m, k) for s in ("0", "1") for m in (DIRECT, "ml_gcn") for k in ("0", "1")
    ]
    for line, study_row in zip(table, sorted(rows, key=lambda r: (r.strength, r.model != DIRECT, r.seed))):
        metrics = json.loads(
            (out / "runs" / f"rho{line['strength']}" / f"{line['model']}-s{line['seed']}" / "eval" / "test" / "metrics.json").read_text(
                encoding="utf-8"
            )
        )
        assert float(line["mAP"]) == pytest.approx(metrics["mAP"], abs=1e-5)  # the run's own evaluation
        assert float(line["mAP"]) == pytest.approx(study_row.values["mAP"], abs=1e-5)
    # The two datasets differ only in their label process: at RHO = 1 every fake is a recipe.
    for tag, share in (("rho0", lambda x: x < 1.0), ("rho1", lambda x: x == 1.0)):
        info = json.loads((out / "data" / tag / "facial_components" / "synth.json").read_text(encoding="utf-8"))
        assert share(info["cooccurrence"]["label_statistics"]["fakes_from_a_recipe_set"]), tag
    assert (out / "graphs" / "rho1-word.npz").is_file()
    markdown = (out / "study.md").read_text(encoding="utf-8")
    assert markdown.count("| direct | 2 |") == 2 and "| 1 | ml_gcn | 2 | " in markdown.split("Graph − direct")[1]
    assert "| 1 | 100% | " in markdown  # the datasets' table: at RHO = 1 every fake is a recipe
    with Image.open(out / "study.png") as figure:
        assert figure.info["Software"] == "mlcdf study cooccurrence" and figure.width > 600
    # Rerun: everything is evaluated already; the tables are rewritten from the run folders.
    again, _ = run_study(tiny_study(out))
    assert not again.trained and len(again.skipped) == 8
    # Other settings into the same folder would mix two studies: refused before anything runs.
    with pytest.raises(MlcdfError, match="other settings .*epochs 1 -> 2"):
        run_study(tiny_study(out, epochs=2))
    # The CLI over the same folder: a dry run lists every run as done.
    result = CliRunner().invoke(
        app,
        [
            "study",
            "cooccurrence",
            "--out",
            str(out),
            "--strengths",
            "0,1",
            "--seeds",
            "2",
            "--models",
            "direct,ml_gcn",
            "--backbone",
            "test_resnet",
            "--train",
            "24",
            "--val",
            "8",
            "--test",
            "16",
            "--data-size",
            "32",
            "--image-size",
            "16",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.count(": done") == 8 and "rho1/ml_gcn-s1: done" in result.output


def test_bad_study_options_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    for arguments, message in (
        (["--strengths", "0,1.5"], "1.5 is not a co-occurrence strength"),
        (["--strengths", "0,x"], "expected numbers separated by commas"),
        (["--models", "ml_gcn"], "expected direct and one or more"),
        (["--backbone", "no_such_net"], "not a timm model"),
    ):
        result = runner.invoke(app, ["study", "cooccurrence", "--out", str(tmp_path / "s"), *arguments])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "s").exists()
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.md").write_text("my notes\n")
    with pytest.raises(MlcdfError, match="study.md"):
        run_study(tiny_study(tmp_path / "s"))
    assert (tmp_path / "s" / "study.md").read_text() == "my notes\n"
