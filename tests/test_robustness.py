"""evaluate --perturb on a real tiny run: robustness.csv equals the metrics of perturbed images scored by hand."""

from __future__ import annotations

import _socket
import csv
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from by_hand import checkpoint_weights, model_with, train_tiny_run, unit_range
from PIL import Image
from sklearn.metrics import average_precision_score
from toy import write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.data import perturb
from mlcdf.evaluation.evaluate import PAPER_METRICS
from mlcdf.evaluation.robustness import COLUMNS, read_robustness, render_comparison, score_conditions, summarise

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
SPECS = ["jpeg:1,5", "contrast:5+noise:3"]


@pytest.fixture(scope="module")
def robust(tmp_path_factory):
    folder = tmp_path_factory.mktemp("robustness")
    prepared = write_toy_prepared(folder, {"train": 16, "val": 8, "test": 12})
    run = train_tiny_run(prepared, folder / "run")
    args = ["evaluate", "--run", str(run), "--device", "cpu", "--quiet", "--workers", "0"]
    result = runner.invoke(app, [*args, *(item for spec in SPECS for item in ("--perturb", spec))])
    assert result.exit_code == 0, result.output
    return prepared, run, run / "eval" / "test"


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@torch.no_grad()
def map_by_hand(run: Path, prepared: Path, condition: tuple[str, int], type_index: int) -> float:
    """Decode each test image with Pillow, perturb it with the seed the docs promise, score it, take the mAP."""
    meta = json.loads((prepared / "meta.json").read_text())
    config = json.loads((run / "config.json").read_text())
    rows = read_rows(prepared / "test.csv")
    images = []
    for row_index, row in enumerate(rows):
        image = Image.open(Path(meta["root"]) / row["file_path"]).convert("RGB")
        image = perturb.apply(image, perturb.Condition(*condition), seed=(0, row_index, type_index, condition[1]))
        images.append(np.asarray(image))
    x = unit_range(np.stack(images))
    mean = torch.tensor(config["input_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["input_std"]).view(1, 3, 1, 1)
    scores = torch.sigmoid(model_with(run, checkpoint_weights(run, "best"))((x - mean) / std)).numpy()
    targets = np.array([[int(row[label]) for label in meta["labels"]] for row in rows])
    return 100 * np.mean([average_precision_score(targets[:, j], scores[:, j]) for j in range(targets.shape[1]) if targets[:, j].any()])


def test_robustness_table_has_clean_first_then_each_condition(robust):
    _, _, evaluation = robust
    rows = read_rows(evaluation / "robustness.csv")
    assert list(rows[0]) == list(COLUMNS) == ["perturbation", "level", *PAPER_METRICS, "exact_match"]
    assert [(row["perturbation"], row["level"]) for row in rows] == [
        ("clean", "0"),
        ("jpeg", "1"),
        ("jpeg", "5"),
        ("contrast", "5"),
        ("noise", "3"),
    ]
    assert (evaluation / "metrics.json").is_file()  # the clean evaluation is written as before
    assert (evaluation / "robustness.png").stat().st_size > 1000
    text = (evaluation / "robustness.md").read_text()
    assert "jpeg:5 (JPEG quality 10)" in text and "worst" in text


@pytest.mark.parametrize("condition,type_index", [(("clean", 0), 0), (("jpeg", 5), 6), (("contrast", 5), 1), (("noise", 3), 3)])
def test_each_conditions_map_equals_the_perturbed_images_scored_by_hand(robust, condition, type_index):
    prepared, run, evaluation = robust
    row = next(r for r in read_rows(evaluation / "robustness.csv") if (r["perturbation"], int(r["level"])) == condition)
    assert float(row["mAP"]) == pytest.approx(map_by_hand(run, prepared, condition, type_index), abs=1e-3)


def test_clean_row_matches_metrics_json_on_png_images(robust):
    _, _, evaluation = robust
    clean = read_rows(evaluation / "robustness.csv")[0]
    metrics = json.loads((evaluation / "metrics.json").read_text())
    for name in PAPER_METRICS:
        assert float(clean[name]) == pytest.approx(metrics[name], abs=1e-4)


@pytest.fixture
def unix_sockets(monkeypatch):
    """DataLoader workers hand tensors back over local Unix sockets; the network stays refused."""
    refused = socket.socket.connect

    def connect(self, address):
        return _socket.socket.connect(self, address) if self.family == socket.AF_UNIX else refused(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def test_workers_and_condition_sets_do_not_change_the_draws(robust, unix_sockets):
    """Image row's noise comes from (seed, row, type, level): the same in worker processes and beside other conditions."""
    _, run, _ = robust
    noise = perturb.Condition("noise", 3)
    alone = score_conditions(run, [noise], device="cpu", workers=0)
    together = score_conditions(run, [perturb.Condition("blur", 2), noise], device="cpu", workers=2, batch_size=5)
    np.testing.assert_allclose(alone.scores[:, 1], together.scores[:, 2], atol=1e-6)
    other_seed = score_conditions(run, [noise], device="cpu", workers=0, seed=1)
    assert not np.allclose(alone.scores[:, 1], other_seed.scores[:, 1])


def test_summary_and_comparison(robust):
    _, _, evaluation = robust
    rows = read_robustness(evaluation / "robustness.csv")
    summary = summarise(rows)
    perturbed = [row["mAP"] for row in rows[1:]]
    assert summary["mean_mAP"] == pytest.approx(np.mean(perturbed))
    assert summary["worst_mAP"] == min(perturbed) and summary["conditions"] == 4
    assert f"| a | {rows[0]['mAP']:.2f} | {np.mean(perturbed):.2f} | 4 | {summary['worst']} |" in render_comparison([("a", rows)])


def test_bad_spec_is_one_line_and_exit_2_before_any_work(robust, tmp_path):
    _, run, _ = robust
    out = tmp_path / "never"
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--perturb", "jpeg:90", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 2
    assert "levels are whole numbers 1-5" in result.output and "Traceback" not in result.output
    assert not out.exists()
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--perturb", "sharpen", "--out", str(out)])
    assert result.exit_code == 2 and "saturation" in result.output and "webp" in result.output


def test_perturb_needs_run(tmp_path):
    predictions = tmp_path / "p.csv"
    predictions.write_text("file_path,target_a,score_a\nx,1,0.5\n")
    result = runner.invoke(app, ["evaluate", "--predictions", str(predictions), "--out", str(tmp_path / "o"), "--perturb", "jpeg"])
    assert result.exit_code == 2 and "--perturb" in result.output


def test_report_robustness_section(robust, tmp_path):
    _, run, evaluation = robust
    rows = read_robustness(evaluation / "robustness.csv")
    summary = summarise(rows)
    # A run folder and its evaluation folder are the same run: each is reported on its own (report refuses
    # one configuration and seed twice).
    for path in (run, evaluation):
        result = runner.invoke(app, ["report", str(path), "--robustness"])
        assert result.exit_code == 0, result.output
        section = result.output.split("## Robustness")[1]
        assert section.count(f"| {rows[0]['mAP']:.2f} | {summary['mean_mAP']:.2f} | 4 | {summary['worst']} |") == 1
    result = runner.invoke(app, ["report", str(tmp_path), "--robustness"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["report", str(run), "--robustness", "--format", "csv"])
    assert result.exit_code == 2 and "Markdown" in result.output


def test_unreadable_image_is_one_line_and_nothing_is_written(robust, tmp_path, unix_sockets):
    prepared, run, _ = robust
    meta = json.loads((prepared / "meta.json").read_text())
    image = Path(meta["root"]) / read_rows(prepared / "test.csv")[3]["file_path"]
    original = image.read_bytes()
    image.write_bytes(b"not a png")
    try:
        out = tmp_path / "eval"
        # The clean pass reads the image cache built before; the perturbed pass decodes the file.
        args = ["evaluate", "--run", str(run), "--device", "cpu", "--quiet", "--out", str(out), "--perturb", "jpeg:1", "--workers", "1"]
        result = runner.invoke(app, args)
    finally:
        image.write_bytes(original)
    assert result.exit_code == 2, result.output
    assert f"{image.name}: cannot decode" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()
