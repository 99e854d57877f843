"""predict / explain / export on images the model never saw, including another size and a broken file."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
from toy import toy_image
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.inference.export import model_opset, supported_opsets

runner = CliRunner()


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.fromarray(toy_image(np.array([1, 0, 0, 1, 0]), rng, size=32)).save(folder / "a.png")
    Image.fromarray(toy_image(np.array([0, 1, 0, 0, 0]), rng, size=80)).save(folder / "b.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def test_predict_skips_unreadable_and_writes_csv_and_json(toy_run, images, tmp_path):
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(toy_run), str(images), "--out", str(out), "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "broken.png: skipped" in result.output.replace("\n", "")
    rows = list(csv.DictReader(out.read_text(encoding="utf-8").splitlines()))
    assert [r["file_path"].rsplit("/", 1)[1] for r in rows] == ["a.png", "b.jpg"]
    for row in rows:
        scores = [float(row[f"score_{name}"]) for name in ("nose", "eye", "eyebrow", "lip", "hair")]
        assert all(0 <= s <= 1 for s in scores) and float(row["fake_score"]) == max(scores)
    json_out = tmp_path / "p.json"
    assert runner.invoke(app, ["predict", str(toy_run), str(images / "a.png"), "--out", str(json_out), "--device", "cpu"]).exit_code == 0
    assert len(json.loads(json_out.read_text())["predictions"]) == 1
    assert runner.invoke(app, ["predict", str(toy_run), str(images / "broken.png"), "--device", "cpu"]).exit_code == 2


def test_explain_writes_one_overlay_per_label(toy_run, images, tmp_path):
    result = runner.invoke(app, ["explain", str(toy_run), str(images / "b.jpg"), "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for name in ("nose", "eye", "eyebrow", "lip", "hair", "all"):
        with Image.open(tmp_path / "x" / f"b_{name}.png") as picture:
            assert picture.width >= 80
    result = runner.invoke(
        app, ["explain", str(toy_run), str(images / "a.png"), "--out", str(tmp_path / "y"), "--label", "beard", "--device", "cpu"]
    )
    assert result.exit_code == 2 and "unknown label" in result.output


def test_bombs_are_skipped_by_predict_and_refused_by_explain(toy_run, images, tmp_path):
    from test_hostile_data import png_bomb

    bomb = png_bomb(images / "bomb.png")
    big = images / "big.jpg"
    Image.new("RGB", (2000, 1500), "gray").save(big)
    args = ["--device", "cpu", "--workers", "0"]
    result = runner.invoke(app, ["predict", str(toy_run), str(images), "--out", str(tmp_path / "p.csv"), *args])
    assert result.exit_code == 0, result.output
    assert "bomb.png: skipped, cannot read the image" in result.output.replace("\n", "")
    assert [r["file_path"].rsplit("/", 1)[1] for r in csv.DictReader((tmp_path / "p.csv").read_text(encoding="utf-8").splitlines())] == [
        "a.png",
        "b.jpg",
        "big.jpg",
    ]
    # --max-pixels: the 2000x1500 image is over a limit of 1 million pixels.
    result = runner.invoke(app, ["predict", str(toy_run), str(big), "--max-pixels", "1000000", *args])
    assert result.exit_code == 2 and "exceeds the limit of 1,000,000 pixels" in result.output.replace("\n", "")
    result = runner.invoke(app, ["explain", str(toy_run), str(bomb), "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert result.exit_code == 2 and "exceeds the limit" in result.output and not (tmp_path / "x").exists()
    # Overlays of a large image are drawn at a bounded size.
    result = runner.invoke(app, ["explain", str(toy_run), str(big), "--out", str(tmp_path / "x"), "--label", "nose", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "x" / "big_nose.png") as picture:
        assert picture.width == 1024


def test_predict_and_explain_do_not_write_into_their_inputs(toy_run, images, tmp_path):
    config = (toy_run / "config.json").read_bytes()
    for out in (toy_run / "config.json", toy_run / "preds.csv"):
        result = runner.invoke(app, ["predict", str(toy_run), str(images / "a.png"), "--out", str(out), "--device", "cpu"])
        assert result.exit_code == 2 and "lies inside the run" in result.output.replace("\n", "")
    assert (toy_run / "config.json").read_bytes() == config and not (toy_run / "preds.csv").exists()
    result = runner.invoke(app, ["explain", str(toy_run), str(images / "a.png"), "--out", str(toy_run / "x"), "--device", "cpu"])
    assert result.exit_code == 2 and not (toy_run / "x").exists()
    # Predictions written beside the images they score are fine.
    result = runner.invoke(app, ["predict", str(toy_run), str(images), "--out", str(images / "p.csv"), "--device", "cpu"])
    assert result.exit_code == 0, result.output


def test_export_onnx_matches_pytorch(toy_run, tmp_path):
    pytest.importorskip("onnxruntime")
    result = runner.invoke(app, ["export", str(toy_run), "--onnx", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.onnx").stat().st_size > 0
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["max_abs_diff_vs_pytorch"] < 1e-4
    assert model_opset(tmp_path / "m.onnx") == record["opset"] == 18


@pytest.mark.parametrize("opset", [1, 17, 99])
def test_export_refuses_an_opset_torch_cannot_write_before_writing(toy_run, tmp_path, opset):
    pytest.importorskip("onnxruntime")
    result = runner.invoke(app, ["export", str(toy_run), "--onnx", str(tmp_path / "m.onnx"), "--opset", str(opset)])
    opsets = supported_opsets()
    assert result.exit_code == 2, result.output
    assert f"--opset {opset}: torch" in result.output and f"opsets {opsets.start} to {opsets.stop - 1}" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_never_writes_another_opset_than_asked(toy_run, tmp_path, monkeypatch):
    # Asked for 17, torch's exporter logs a failed version conversion and keeps opset 18: refused, nothing written.
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr("mlcdf.inference.export.supported_opsets", lambda: range(17, 19))
    result = runner.invoke(app, ["export", str(toy_run), "--onnx", str(tmp_path / "m.onnx"), "--opset", "17"])
    assert result.exit_code == 2, result.output
    assert "torch.onnx wrote opset 18 instead of the requested 17; not written" in result.output.replace("\n", "")
    assert list(tmp_path.iterdir()) == []


def test_predict_writes_file_names_that_are_not_utf8_escaped(toy_run, tmp_path):
    folder = tmp_path / "named"
    folder.mkdir()
    Image.fromarray(toy_image(np.array([1, 0, 0, 0, 0]), np.random.default_rng(2), size=32)).save(folder / os.fsdecode(b"caf\xe9.png"))
    for name in ("p.csv", "p.json"):
        result = runner.invoke(
            app, ["predict", str(toy_run), str(folder), "--out", str(tmp_path / name), "--device", "cpu", "--workers", "0"]
        )
        assert result.exit_code == 0, result.output
    expected = f"{folder}/caf\\xe9.png"
    assert [row["file_path"] for row in csv.DictReader((tmp_path / "p.csv").read_text(encoding="utf-8").splitlines())] == [expected]
    assert [row["file_path"] for row in json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))["predictions"]] == [expected]
