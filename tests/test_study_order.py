"""``mlcdf study order``: the analysis by value, the plan it builds, and the study end to end at the tiny preset."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.errors import MlcdfError
from mlcdf.experiments.study_order import (
    CSV_COLUMNS,
    METRICS,
    MULTILABEL,
    ORACLE,
    PRESETS,
    SEQUENCE,
    OrderRow,
    OrderStudyConfig,
    answer,
    run_study,
    sequence_minus_multilabel,
    study_markdown,
    summarise,
)


def row(model: str, seed: int, fixed: float, adaptive: float, mAP: float = 70.0) -> OrderRow:
    values = {"mAP": mAP, "CF1": 50.0, "OF1": 60.0, "Fixed-Acc": fixed, "Adaptive-Acc": adaptive}
    return OrderRow(model, seed, values)


HAND_MADE = [
    row(SEQUENCE, 0, 60.0, 40.0, mAP=70.0),
    row(SEQUENCE, 1, 64.0, 42.0, mAP=72.0),
    row(SEQUENCE, 2, 62.0, 38.0, mAP=74.0),
    row(MULTILABEL, 0, 55.0, 41.0, mAP=75.0),
    row(MULTILABEL, 1, 57.0, 40.0, mAP=76.0),
    row(MULTILABEL, 2, 59.0, 39.0, mAP=77.0),
    OrderRow(ORACLE, None, {"mAP": None, "CF1": None, "OF1": None, "Fixed-Acc": 80.0, "Adaptive-Acc": 70.0}),
]


def test_the_analysis_by_value(tmp_path: Path) -> None:
    table = summarise(HAND_MADE)
    assert table[(SEQUENCE, "Fixed-Acc")].mean == 62.0 and table[(SEQUENCE, "Fixed-Acc")].std == pytest.approx(2.0)  # sample std
    assert table[(ORACLE, "Fixed-Acc")].n == 1 and (ORACLE, "mAP") not in table
    differences = sequence_minus_multilabel(HAND_MADE)
    # Paired by seed: Fixed 5, 7, 3; Adaptive -1, 2, -1; mAP -5, -4, -3.
    assert differences["Fixed-Acc"].mean == pytest.approx(5.0) and (differences["Fixed-Acc"].low, differences["Fixed-Acc"].high) == (
        3.0,
        7.0,
    )
    assert differences["Adaptive-Acc"].mean == pytest.approx(0.0) and differences["Adaptive-Acc"].std == pytest.approx(math.sqrt(3))
    assert differences["mAP"].mean == pytest.approx(-4.0) and differences["mAP"].high == -3.0
    text = answer(HAND_MADE)
    assert "On Fixed-Acc: yes, higher in every one of 3 seeds (Δ +5.0 ± 2.0 points, from +3.0 to +7.0)" in text
    assert "On Adaptive-Acc: not consistently" in text
    assert "On mAP it costs 4.0 points on average (Δ -4.0 ± 1.0 points" in text
    assert "score 80.0 Fixed-Acc and 70.0 Adaptive-Acc" in text
    losing = [row(SEQUENCE, 0, 50.0, 30.0), row(MULTILABEL, 0, 55.0, 31.0)]
    assert "On Fixed-Acc: no, lower in the one seed (Δ -5.0 ± – points" in answer(losing)
    markdown = study_markdown(HAND_MADE, OrderStudyConfig(out=tmp_path), chance=42.0)
    assert "| SeqFakeFormer (predicts the order) | 3 | 72.0 ± 2.0 | 50.0 ± 0.0 | 60.0 ± 0.0 | 62.0 ± 2.0 | 40.0 ± 2.0 |" in markdown
    assert "| oracle (true set, prior order) | – | – | – | – | 80.0 | 70.0 |" in markdown
    assert "| Fixed-Acc | 3 | +5.0 ± 2.0 | +3.0 | +7.0 |" in markdown and "Chance mAP" in markdown and "42.0" in markdown
    # A study with no paired seed yet has its table and no answer.
    assert "Answer" not in study_markdown(HAND_MADE[:3], OrderStudyConfig(out=tmp_path)) and answer(HAND_MADE[:3]) == ""


def test_the_plan_has_both_models_and_every_seed_with_one_recipe(tmp_path: Path) -> None:
    """Both models share the backbone, recipe, epochs and sizes; only the model (and the multi-label loss) differ."""
    config = OrderStudyConfig(out=tmp_path, seeds=3)
    plan = config.plan()
    assert [entry.label for entry in plan.entries()] == [f"synth/{model}-s{k}" for model in (SEQUENCE, MULTILABEL) for k in range(3)]
    trained = {entry.run.name: plan.train_config(entry, tmp_path) for entry in plan.entries()}
    sequence, multilabel = trained["seqfakeformer-s2"], trained["multilabel-s0"]
    assert sequence.model == "seqfakeformer_r34" and sequence.backbone == "resnet18" and sequence.seed == 2
    assert multilabel.model == "timm:resnet18" and multilabel.loss == "asl" and multilabel.backbone is None
    for name in ("recipe", "epochs", "batch_size", "image_size", "lr", "pretrained", "prepared"):
        assert {getattr(c, name) for c in trained.values()} == {getattr(sequence, name)}, name
    assert (sequence.recipe, sequence.epochs, sequence.image_size, sequence.lr) == ("asl", 8, 64, 1e-3)
    assert sequence.prepared == str(tmp_path / "prepared" / "facial_components")
    synth = config.synth_config()
    assert (synth.strength, synth.train, synth.size) == (4.0, 800, 64)
    gpu = OrderStudyConfig(out=tmp_path, **PRESETS["gpu"])
    assert gpu.trace_strength == 4.0 and gpu.pretrained and gpu.backbone == "resnet34" and gpu.seeds == 5
    assert gpu.plan().train_config(gpu.plan().entries()[0], tmp_path).backbone == "resnet34"


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    for arguments, message in (
        (["--backbone", "no_such_net"], "not a timm model"),
        (["--recipe", "sgd"], "--recipe sgd: expected one of"),
        (["--trace-strength", "99"], "--strength 99"),
    ):
        result = runner.invoke(app, ["study", "order", "--out", str(tmp_path / "s"), *arguments])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_the_study_end_to_end_at_the_tiny_preset(tmp_path: Path) -> None:
    out = tmp_path / "study"
    config = OrderStudyConfig(out=out, device="cpu", **PRESETS["tiny"])
    result, rows = run_study(config)
    assert not result.failed and len(result.trained) == 4
    with open(out / "study.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == CSV_COLUMNS
    assert [(r["model"], r["seed"]) for r in table] == [
        (SEQUENCE, "0"),
        (SEQUENCE, "1"),
        (MULTILABEL, "0"),
        (MULTILABEL, "1"),
        (ORACLE, ""),
    ]
    for line in table[:4]:
        metrics = json.loads((out / "runs" / "synth" / f"{line['model']}-s{line['seed']}" / "eval" / "test" / "metrics.json").read_text())
        for metric in METRICS:
            assert float(line[metric]) == pytest.approx(metrics[metric], abs=1e-5)  # the run's own evaluation
        assert float(table[4]["Fixed-Acc"]) == pytest.approx(metrics["oracle_order"]["Fixed-Acc"], abs=1e-5)
    # The numbers in study.md are those of study.csv: means of its rows, and the paired differences.
    markdown = (out / "study.md").read_text(encoding="utf-8")
    for model, name in ((SEQUENCE, "SeqFakeFormer"), (MULTILABEL, "multi-label")):
        values = [[float(r[m]) for r in table if r["model"] == model] for m in METRICS]
        cells = re.search(rf"\| {name}[^|]* \| 2 \| (.*) \|", markdown)
        assert cells, markdown
        means = [float(cell.split(" ± ")[0]) for cell in cells.group(1).split(" | ")]
        assert means == pytest.approx([round(sum(v) / 2, 1) for v in values], abs=0.051)
    by_seed = {(r["model"], r["seed"]): float(r["Fixed-Acc"]) for r in table}
    delta = sum(by_seed[(SEQUENCE, k)] - by_seed[(MULTILABEL, k)] for k in "01") / 2
    assert f"| Fixed-Acc | 2 | {delta:+.1f} ± " in markdown and "**Answer.** Does predicting the order beat" in markdown
    assert f"| {float(table[4]['Fixed-Acc']):.1f} | {float(table[4]['Adaptive-Acc']):.1f} |" in markdown  # the oracle row
    with Image.open(out / "study.png") as figure:
        assert figure.info["Software"] == "mlcdf study order" and figure.width > 600
    # Rerun: everything is evaluated; the tables are rewritten from the run folders.
    again, _ = run_study(config)
    assert not again.trained and len(again.skipped) == 4
    with pytest.raises(MlcdfError, match="other settings .*epochs 1 -> 2"):
        run_study(OrderStudyConfig(out=out, device="cpu", **{**PRESETS["tiny"], "epochs": 2}))
    # The CLI over the same folder: a dry run lists every run as done.
    cli = CliRunner().invoke(app, ["study", "order", "--out", str(out), "--preset", "tiny", "--device", "cpu", "--dry-run"])
    assert cli.exit_code == 0, cli.output
    assert cli.output.count(": done") == 4 and "synth/multilabel-s1: done" in cli.output
