"""No command overwrites a file it did not write (issue 13): every single-file output is replaced only when
it is that command's own earlier output; anything else at its name survives byte for byte, exit 2."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report import R101, write_metrics
from toy import toy_image, write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.errors import MlcdfError
from mlcdf.experiments.reproduce import ReproduceConfig, reproduce
from mlcdf.io import check_file_replaceable

runner = CliRunner()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "face.png"
    Image.fromarray(toy_image(np.array([1, 0, 0, 1, 0]), np.random.default_rng(1), size=32)).save(path)
    return path


def foreign(path: Path, content: bytes = b"my notes, not an mlcdf output\n") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return content


def assert_refused(result, path: Path, content: bytes, command: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.stderr.replace("\n", "")
    assert f"{path}: exists and was not written by '{command}'" in message and "Traceback" not in message
    assert path.read_bytes() == content


def a_png(path: Path) -> bytes:
    """An ordinary PNG that no mlcdf command stamped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path)
    return path.read_bytes()


@pytest.mark.parametrize("name", ["notes.csv", "notes.json"])
def test_predict_keeps_a_foreign_file_and_replaces_its_own(toy_run, image, tmp_path, name):
    out = tmp_path / name
    content = foreign(out, b'{"labels": ["mine"]}\n' if name.endswith(".json") else b"file_path,comment\nx.png,mine\n")
    assert_refused(runner.invoke(app, ["predict", str(toy_run), str(image), "--out", str(out)]), out, content, "mlcdf predict")
    out.unlink()
    for _ in range(2):  # the second run replaces the first one's file
        result = runner.invoke(app, ["predict", str(toy_run), str(image), "--out", str(out)])
        assert result.exit_code == 0, result.output
    assert out.read_bytes() != content and "face.png" in out.read_text()


def test_explain_keeps_a_foreign_png_and_replaces_its_own(toy_run, image, tmp_path):
    out = tmp_path / "explain"
    strip = out / "face_all.png"
    content = a_png(strip)
    result = runner.invoke(app, ["explain", str(toy_run), str(image), "--out", str(out)])
    assert_refused(result, strip, content, "mlcdf explain")
    assert sorted(path.name for path in out.iterdir()) == ["face_all.png"]  # refused before any overlay
    strip.unlink()
    for _ in range(2):
        result = runner.invoke(app, ["explain", str(toy_run), str(image), "--out", str(out)])
        assert result.exit_code == 0, result.output
    with Image.open(strip) as written:
        assert written.info["Software"] == "mlcdf explain"


def test_export_keeps_a_foreign_onnx_or_json(toy_run, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    content = foreign(out, b"another tool's model")
    assert_refused(runner.invoke(app, ["export", str(toy_run), "--onnx", str(out)]), out, content, "mlcdf export")
    out.unlink()
    record = out.with_suffix(".json")
    content = foreign(record, b'{"labels": ["mine"]}')
    assert_refused(runner.invoke(app, ["export", str(toy_run), "--onnx", str(out)]), record, content, "mlcdf export")
    assert not out.exists()


@pytest.mark.slow  # two exports, 11 s
def test_export_replaces_its_own(toy_run, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    for _ in range(2):
        result = runner.invoke(app, ["export", str(toy_run), "--onnx", str(out)])
        assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["opset"] == 18


def test_build_graph_keeps_a_foreign_npz_or_json_and_replaces_its_own(tmp_path):
    prepared = write_toy_prepared(tmp_path, {"train": 8})
    out = tmp_path / "graphs" / "g.npz"
    command = ["build-graph", "--prepared", str(prepared), "--out", str(out), "-q"]
    np.savez(out.parent.mkdir() or out, weights=np.zeros(3))  # an .npz of another program
    content = out.read_bytes()
    assert_refused(runner.invoke(app, command), out, content, "mlcdf build-graph")
    out.unlink()
    record = out.with_suffix(".json")
    content = foreign(record, b'{"subset": "mine"}')
    assert_refused(runner.invoke(app, command), record, content, "mlcdf build-graph")
    assert not out.exists()
    record.unlink()
    for _ in range(2):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    assert json.loads(record.read_text())["subset"] == "facial_components"


@pytest.mark.parametrize("fmt", ["md", "latex", "csv"])
def test_report_keeps_a_foreign_table_and_replaces_its_own(tmp_path, fmt):
    write_metrics(tmp_path / "eval", R101)
    out = tmp_path / "table.txt"
    content = foreign(out, b"| Category | Method |\n| --- | --- |\n| mine | mine |\n")
    command = ["report", str(tmp_path / "eval"), "--format", fmt, "--out", str(out)]
    assert_refused(runner.invoke(app, command), out, content, "mlcdf report")
    out.unlink()
    other_format = "csv" if fmt != "csv" else "md"  # an earlier report in any format is report's own
    for again in (command, command, [*command[:2], "--format", other_format, "--out", str(out)]):
        result = runner.invoke(app, again)
        assert result.exit_code == 0, result.output
    assert "92.9" in out.read_text()


def test_synth_keeps_a_foreign_preview_and_replaces_its_own(tmp_path):
    preview = tmp_path / "preview.png"
    content = a_png(preview)
    command = [
        "synth",
        "--out",
        str(tmp_path / "root"),
        "--train",
        "2",
        "--val",
        "0",
        "--test",
        "0",
        "--size",
        "32",
        "--workers",
        "1",
        "--preview",
        str(preview),
        "--quiet",
    ]
    assert_refused(runner.invoke(app, command), preview, content, "mlcdf synth")
    assert not (tmp_path / "root").exists()  # refused before any image is drawn
    preview.unlink()
    for _ in range(2):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    with Image.open(preview) as written:
        assert written.info["Software"] == "mlcdf synth"


def test_a_folder_or_link_at_a_file_output_is_refused_an_empty_file_replaced(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "link.csv").symlink_to(tmp_path / "folder.csv")
    for path in (tmp_path / "folder.csv", tmp_path / "link.csv"):
        with pytest.raises(MlcdfError, match="exists and is not a plain file"):
            check_file_replaceable(path, command="mlcdf predict", is_own=lambda _: True)
    (tmp_path / "empty.csv").touch()  # nothing in it to lose
    for path in (tmp_path / "absent.csv", tmp_path / "empty.csv"):
        check_file_replaceable(path, command="mlcdf predict", is_own=lambda _: False)


@pytest.mark.parametrize("name", ["results.csv", "report-facial_components.md"])
def test_reproduce_keeps_a_foreign_table_in_its_out(tmp_path, name):
    # Replacing its own tables is covered by test_reproduce (a second reproduce over the same OUT).
    out = tmp_path / "out"
    content = foreign(out / name)
    config = ReproduceConfig.smoke_test(out, subsets=("facial_components",), device="cpu")
    with pytest.raises(MlcdfError, match=f"{out / name}: exists and was not written by 'mlcdf reproduce'"):
        reproduce(config)
    assert (out / name).read_bytes() == content and [path.name for path in out.iterdir()] == [name]
