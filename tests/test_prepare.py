import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import sequence_rows, write_release
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.data.prepared import load_prepared
from mlcdf.labels import SUBSETS

runner = CliRunner()


def run_prepare(root: Path, out: Path, *extra: str):
    return runner.invoke(app, ["prepare", "--root", str(root), "--out", str(out), *extra])


def test_prepare_writes_the_contract(release, tmp_path):
    out = tmp_path / "prepared"
    result = run_prepare(release, out)
    assert result.exit_code == 0, result.output
    for subset, labels in SUBSETS.items():
        prepared = load_prepared(out / subset)
        assert prepared.labels == labels
        assert prepared.root == release.resolve()
        assert prepared.splits == {"train": 6, "val": 6, "test": 6}
        with open(out / subset / "train.csv", newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == ["file_path", "sequence", *labels]
        table = prepared.read_split("train")
        assert table.sequences[0] == "" and table.targets[0].sum() == 0
        np.testing.assert_array_equal(table.num_steps, [0, 1, 2, 3, 4, 5])
        # "[3, 5, 1, 0, 0]" -> labels 1, 3, 5 set, order kept in the sequence
        np.testing.assert_array_equal(table.targets[3], [1, 0, 1, 0, 1])
        assert table.sequences[3] == "-".join([labels[2], labels[4], labels[0]])
        assert all(prepared.image_path(p).is_file() for p in table.file_paths)
    meta = json.loads((out / "facial_components" / "meta.json").read_text())
    assert meta["subset"] == "facial_components" and meta["splits"]["test"] == 6
    # the summary warns that these are not the official split sizes
    assert "official release has 29,408" in result.output


def test_absent_split_is_skipped_and_splits_option(tmp_path):
    root = write_release(tmp_path / "r", {("facial_components", "train"): sequence_rows("facial_components", "train", "png")})
    out = tmp_path / "p"
    result = run_prepare(root, out, "--subset", "facial_components")
    assert result.exit_code == 0, result.output
    assert "no val.csv" in result.output
    assert load_prepared(out / "facial_components").splits == {"train": 6}
    result = run_prepare(root, tmp_path / "p2", "--subset", "facial_components", "--splits", "test")
    assert result.exit_code == 2
    assert "no test CSV found" in result.output


BAD_LABELS = [
    ("[1, 2, 0, 0]", "has 4 entries"),
    ("[1, 9, 0, 0, 0]", "outside 0..5"),
    ("[1, 1, 0, 0, 0]", "repeats"),
    ("[1, 0, 2, 0, 0]", "after a zero"),
    ("[a, 0, 0, 0, 0]", "non-integer"),
]


@pytest.mark.parametrize("label, reason", BAD_LABELS)
def test_bad_label_names_file_and_line(tmp_path, label, reason):
    rows = sequence_rows("facial_components", "train", "png")
    rows[2] = (rows[2][0], label)
    root = write_release(tmp_path / "r", {("facial_components", "train"): rows})
    out = tmp_path / "p"
    result = run_prepare(root, out, "--subset", "facial_components")
    assert result.exit_code == 2
    csv_path = root / "facial_components" / "annotations" / "train.csv"
    # header is line 1, rows[2] is line 4
    assert f"{csv_path}:4:" in result.output.replace("\n", "")
    assert reason in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "mutate, reason, line",
    [
        (lambda rows: rows.__setitem__(1, ("", rows[1][1])), "empty file_path", 3),
        (lambda rows: rows.__setitem__(3, (rows[2][0], rows[2][1])), "repeats line 4", 5),
        (lambda rows: rows.__setitem__(2, (rows[2][0].replace("eye-nose", "nose-eye"), rows[2][1])), "sequence folder 'nose-eye'", 4),
        (lambda rows: rows.__setitem__(0, (rows[0][0], "[1, 0, 0, 0, 0]")), "is in 'original/'", 2),
        (lambda rows: rows.__setitem__(1, (rows[1][0].replace("/nose/", "/beard/"), rows[1][1])), "'beard' is not one of", 3),
    ],
)
def test_bad_rows(tmp_path, mutate, reason, line):
    rows = sequence_rows("facial_components", "train", "png")
    mutate(rows)
    root = write_release(tmp_path / "r", {("facial_components", "train"): rows}, images=False)
    out = tmp_path / "p"
    result = run_prepare(root, out, "--subset", "facial_components", "--check-images", "none")
    assert result.exit_code == 2, result.output
    flat = result.output.replace("\n", "")
    assert f"train.csv:{line}:" in flat and reason in flat
    assert not out.exists()


def test_missing_column(tmp_path):
    root = tmp_path / "r"
    csv_path = root / "facial_components" / "annotations" / "train.csv"
    csv_path.parent.mkdir(parents=True)
    csv_path.write_text('path,label\na.png,"[0, 0, 0, 0, 0]"\n')
    result = run_prepare(root, tmp_path / "p", "--subset", "facial_components")
    assert result.exit_code == 2
    assert "train.csv:1:" in result.output.replace("\n", "") and "'file_path'" in result.output


def test_error_in_second_subset_writes_nothing(tmp_path):
    good = sequence_rows("facial_components", "train", "png")
    bad = sequence_rows("facial_attributes", "train", "jpg")
    bad[5] = (bad[5][0], "[1, 2, 3, 4, 9]")
    root = write_release(tmp_path / "r", {("facial_components", "train"): good, ("facial_attributes", "train"): bad})
    out = tmp_path / "p"
    result = run_prepare(root, out)
    assert result.exit_code == 2
    assert not (out / "facial_components").exists()


def test_missing_image_and_skip_missing(release, tmp_path):
    victim = release / "facial_attributes/images/val/Eyeglasses-Bangs/000002.jpg"
    victim.unlink()
    out = tmp_path / "p"
    result = run_prepare(release, out, "--subset", "facial_attributes")
    assert result.exit_code == 2
    assert "val.csv:4:" in result.output.replace("\n", "") and "is missing" in result.output
    assert not out.exists()
    result = run_prepare(release, out, "--subset", "facial_attributes", "--skip-missing")
    assert result.exit_code == 0, result.output
    prepared = load_prepared(out / "facial_attributes")
    assert prepared.splits["val"] == 5
    assert victim.relative_to(release).as_posix() not in prepared.read_split("val").file_paths
    assert json.loads((out / "facial_attributes" / "meta.json").read_text())["dropped"]["val"]["missing"] == 1


def test_decode_finds_truncated_image(release, tmp_path):
    victim = release / "facial_components/images/test/eyebrow-hair-nose/000003.png"
    victim.write_bytes(victim.read_bytes()[:60])
    out = tmp_path / "p"
    # existence check alone does not notice
    assert run_prepare(release, out, "--subset", "facial_components").exit_code == 0
    result = run_prepare(release, tmp_path / "p2", "--subset", "facial_components", "--check-images", "decode", "--workers", "2")
    assert result.exit_code == 2
    assert "test.csv:5:" in result.output.replace("\n", "") and "unreadable" in result.output
    assert not (tmp_path / "p2").exists()
    result = run_prepare(release, tmp_path / "p3", "--subset", "facial_components", "--check-images", "decode", "--skip-missing")
    assert result.exit_code == 0
    assert load_prepared(tmp_path / "p3" / "facial_components").splits["test"] == 5


def test_rerun_replaces_output(release, tmp_path):
    out = tmp_path / "p"
    assert run_prepare(release, out, "--subset", "facial_components").exit_code == 0
    (out / "facial_components" / "stale.txt").write_text("x")
    assert run_prepare(release, out, "--subset", "facial_components").exit_code == 0
    assert not (out / "facial_components" / "stale.txt").exists()


def test_load_prepared_errors(tmp_path):
    from mlcdf.errors import MissingArtifactError

    with pytest.raises(MissingArtifactError, match="run 'mlcdf prepare' first"):
        load_prepared(tmp_path)
