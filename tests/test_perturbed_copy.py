"""``mlcdf perturb``: a perturbed copy with the same layout and annotations, that ``mlcdf prepare`` reads."""

from __future__ import annotations

import csv
import io
import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.data import perturb

runner = CliRunner()


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def invoke(*args: str):
    return runner.invoke(app, ["perturb", "--quiet", "--workers", "2", *args])


def test_fixed_condition_copy_has_the_same_layout_and_annotations(release, tmp_path):
    out = tmp_path / "copy"
    result = invoke("--root", str(release), "--out", str(out), "--spec", "noise:4", "--splits", "val,test", "--seed", "3")
    assert result.exit_code == 0, result.output
    for subset in ("facial_components", "facial_attributes"):
        source = [f for f in files_under(release / subset) if "/train" not in f and "train.csv" not in f]
        copied = files_under(out / subset)
        extra = {"perturb.json", "annotations/val.perturbations.csv", "annotations/test.perturbations.csv"}
        assert sorted(set(copied) - extra) == source
        for split in ("val", "test"):
            assert (out / subset / "annotations" / f"{split}.csv").read_bytes() == (
                release / subset / "annotations" / f"{split}.csv"
            ).read_bytes()
    # Each image is the original under the condition, seeded by (seed, crc32(path)), saved in its own format.
    file_path = "facial_components/images/test/nose/000001.png"
    original = Image.open(release / file_path).convert("RGB")
    expected = perturb.apply(original, perturb.Condition("noise", 4), (3, zlib.crc32(file_path.encode())))
    np.testing.assert_array_equal(np.asarray(Image.open(out / file_path)), np.asarray(expected))
    jpeg_path = "facial_attributes/images/test/original/000000.jpg"
    assert Image.open(out / jpeg_path).format == "JPEG"
    buffer = io.BytesIO()
    perturb.apply(Image.open(release / jpeg_path).convert("RGB"), perturb.Condition("noise", 4), (3, zlib.crc32(jpeg_path.encode()))).save(
        buffer, format="JPEG", quality=95
    )
    assert (out / jpeg_path).read_bytes() == buffer.getvalue()
    with open(out / "facial_components" / "annotations" / "test.perturbations.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["perturbation"], r["level"], r["parameter"]) for r in rows} == {("noise", "4", "0.01")}
    assert json.loads((out / "facial_components" / "perturb.json").read_text())["spec"] == "noise:4"

    prepared = tmp_path / "prepared"
    result = runner.invoke(
        app, ["prepare", "--root", str(out), "--out", str(prepared), "--subset", "facial_components", "--check-images", "decode"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((prepared / "facial_components" / "meta.json").read_text())["splits"] == {"val": 6, "test": 6}


def test_random_conditions_are_drawn_per_image_and_recorded(release, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert (
        invoke(
            "--root", str(release), "--out", str(first), "--spec", "random", "--subset", "facial_components", "--splits", "train,test"
        ).exit_code
        == 0
    )
    assert invoke("--root", str(release), "--out", str(second), "--spec", "random", "--subset", "facial_components").exit_code == 0
    with open(first / "facial_components" / "annotations" / "test.perturbations.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and len({(r["perturbation"], r["level"]) for r in rows}) > 1
    for row in rows:
        drawn = perturb.draw_condition((0, zlib.crc32(row["file_path"].encode())))
        assert (row["perturbation"], int(row["level"])) == (drawn.name, drawn.level)
        # The same image gets the same condition and pixels whatever else is copied alongside.
        assert (first / row["file_path"]).read_bytes() == (second / row["file_path"]).read_bytes()


def test_refusals_write_nothing(release, tmp_path):
    out = tmp_path / "copy"
    for spec, fragment in (("jpeg", "names 5 conditions"), ("jpeg:9", "levels are whole numbers 1-5"), ("sharpen", "valid: saturation")):
        result = invoke("--root", str(release), "--out", str(out), "--spec", spec)
        assert result.exit_code == 2 and fragment in result.output, result.output
    result = invoke("--root", str(release), "--out", str(release / "inside"), "--spec", "jpeg:1")
    assert result.exit_code == 2 and "--root" in result.output
    foreign = tmp_path / "foreign" / "facial_components"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("keep")
    result = invoke("--root", str(release), "--out", str(tmp_path / "foreign"), "--spec", "jpeg:1", "--subset", "facial_components")
    assert result.exit_code == 2 and "not written by 'mlcdf perturb'" in result.output
    assert files_under(tmp_path / "foreign") == ["facial_components/mine.txt"]
    (release / "facial_components/images/test/nose/000001.png").write_bytes(b"not an image")
    result = invoke("--root", str(release), "--out", str(out), "--spec", "jpeg:1", "--subset", "facial_components")
    assert result.exit_code == 2 and "000001.png: cannot decode" in result.output
    assert not (out / "facial_components").exists() and files_under(out) == []  # not even a temporary left


def test_rerun_replaces_its_own_copy(release, tmp_path):
    out = tmp_path / "copy"
    args = ("--root", str(release), "--out", str(out), "--subset", "facial_components")
    assert invoke(*args, "--spec", "blur:1").exit_code == 0
    assert invoke(*args, "--spec", "blur:5").exit_code == 0
    assert json.loads((out / "facial_components" / "perturb.json").read_text())["spec"] == "blur:5"
