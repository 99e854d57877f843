"""predict and export by value: their scores equal the run's model applied by hand, checkpoint by checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from by_hand import checkpoint_weights, image_pixels, run_config, scores_by_hand, train_tiny_run, unit_range
from PIL import Image
from toy import toy_image, write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
CHECKPOINTS = ("best", "last", "ema")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run whose best, last and EMA weights all differ.

    Training alone may pick the last epoch's weights as best, so best.pt's weights are shifted here: then
    loading the wrong file gives other scores.
    """
    folder = tmp_path_factory.mktemp("inference")
    out = train_tiny_run(write_toy_prepared(folder, {"train": 16, "val": 8}), folder / "run")
    best_path = out / "checkpoints" / "best.pt"
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    best["model"] = {
        name: value + 0.05 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for name, value in best["model"].items()
    }
    torch.save(best, best_path)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """User images of the run's size and of other sizes (resized by predict)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    paths = []
    for name, target, size in (("a.png", [1, 0, 0, 1, 0], 32), ("b.png", [0, 1, 1, 0, 0], 48), ("c.png", [0, 0, 0, 0, 1], 64)):
        Image.fromarray(toy_image(np.array(target), rng, size=size)).save(folder / name)
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="module")
def by_hand(run, images) -> dict[str, np.ndarray]:
    return {name: scores_by_hand(run, checkpoint_weights(run, name), images) for name in CHECKPOINTS}


def predicted_scores(run: Path, images: list[Path], checkpoint: str, out: Path) -> np.ndarray:
    """``mlcdf predict --out FILE.csv``'s scores, rows in the order of ``images``."""
    result = runner.invoke(
        app, ["predict", str(run), *map(str, images), "--checkpoint", checkpoint, "--device", "cpu", "--workers", "0", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        rows = {row["file_path"]: row for row in csv.DictReader(handle)}
    labels = run_config(run)["labels"]
    return np.array([[float(rows[str(path)][f"score_{label}"]) for label in labels] for path in images])


def test_the_three_checkpoints_score_differently(by_hand):
    """Without this, the tests below could not tell one checkpoint from another."""
    for first, second in (("best", "last"), ("best", "ema"), ("last", "ema")):
        assert np.abs(by_hand[first] - by_hand[second]).max() > 1e-4, (first, second)  # 100 times the tolerance below


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_predict_scores_are_the_named_checkpoint_applied_by_hand(run, images, by_hand, checkpoint, tmp_path):
    scores = predicted_scores(run, images, checkpoint, tmp_path / "p.csv")
    np.testing.assert_allclose(scores, by_hand[checkpoint], rtol=0, atol=1e-6)


def test_onnx_outputs_equal_predict_on_the_same_files(run, images, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(run), "--onnx", str(onnx_path), "--checkpoint", "best"])
    assert result.exit_code == 0, result.output
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    # The exported model takes [0, 1] RGB at the run's image size and normalises inside.
    pixels = unit_range(image_pixels(images, run_config(run)["train"]["image_size"])).numpy()
    onnx_scores = session.run(None, {"images": pixels})[0]
    np.testing.assert_allclose(onnx_scores, predicted_scores(run, images, "best", tmp_path / "p.csv"), rtol=0, atol=1e-5)
