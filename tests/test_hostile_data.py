"""Hostile data inputs (issue 13): no command deletes what it did not write, reads outside the dataset
root, or ends in a traceback. Every hostile file is written here by the test itself, tiny."""

import json
import struct
import zlib
from pathlib import Path

import pytest
from conftest import sequence_rows, write_image, write_release
from PIL import Image
from toy import write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.config import TrainConfig
from mlcdf.data.dataset import build_image_cache
from mlcdf.data.images import DEFAULT_MAX_PIXELS, load_rgb, verify_image
from mlcdf.data.prepared import load_prepared
from mlcdf.errors import MlcdfError, SchemaError
from mlcdf.train.stage import train

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def one_line(result) -> str:
    """The output of a command that failed as a user error: exit 2, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, Exception)
    return result.output.replace("\n", "")


def file_tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A few dozen bytes that declare ``width`` x ``height`` RGB pixels (10^10 by default: 30 GB decoded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------------------------------------------------
# Outputs never replace what the command did not write, nor land in its inputs


def test_prepare_into_its_own_root_is_refused_and_deletes_nothing(release):
    before = file_tree(release)
    flat = one_line(invoke("prepare", "--root", release, "--subset", "facial_components", "--out", release))
    assert "--root" in flat and str(release) in flat
    assert file_tree(release) == before


def test_prepare_inside_its_root_is_refused(release):
    flat = one_line(invoke("prepare", "--root", release, "--subset", "facial_components", "--out", release / "prepared"))
    assert "inside --root" in flat
    assert not (release / "prepared").exists()


def test_prepare_does_not_replace_a_folder_it_did_not_write(release, tmp_path):
    mine = tmp_path / "other" / "facial_components" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me")
    flat = one_line(invoke("prepare", "--root", release, "--subset", "facial_components", "--out", tmp_path / "other"))
    assert "not written by 'mlcdf prepare'" in flat and str(mine.parent) in flat
    assert mine.read_text() == "keep me"
    # A previous prepared subset, and an empty folder, are replaced.
    (tmp_path / "p" / "facial_components").mkdir(parents=True)
    assert invoke("prepare", "--root", release, "--subset", "facial_components", "--out", tmp_path / "p").exit_code == 0
    assert invoke("prepare", "--root", release, "--subset", "facial_components", "--out", tmp_path / "p").exit_code == 0


def test_a_reader_restores_a_prepared_subset_cut_off_mid_replace(tmp_path):
    prepared = write_toy_prepared(tmp_path, {"train": 3})
    prepared.rename(prepared.with_name(".facial_components.old"))  # killed between the two renames
    assert load_prepared(prepared).splits == {"train": 3}
    assert not prepared.with_name(".facial_components.old").exists()


def test_prepare_and_synth_out_below_a_file(release, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    flat = one_line(invoke("prepare", "--root", release, "--subset", "facial_components", "--out", blocker / "p"))
    assert str(blocker) in flat and "not a folder" in flat
    flat = one_line(invoke("synth", "--out", blocker / "s", "--train", 1, "--val", 0, "--test", 0, "--size", 32, "--workers", 1))
    assert str(blocker) in flat and "not a folder" in flat
    assert blocker.read_text() == "x"


def test_build_graph_into_the_prepared_folder_is_refused(tmp_path):
    prepared = write_toy_prepared(tmp_path, {"train": 4})
    flat = one_line(invoke("build-graph", "--prepared", prepared, "--out", prepared / "g.npz"))
    assert "inside --prepared" in flat
    assert not (prepared / "g.npz").exists()


@pytest.mark.parametrize("where", ["inside", "equal", "containing"])
def test_train_out_overlapping_the_prepared_folder_is_refused(tmp_path, where):
    prepared = write_toy_prepared(tmp_path / "data", {"train": 4, "val": 4})
    out = {"inside": prepared / "run", "equal": prepared, "containing": tmp_path / "data"}[where]
    before = file_tree(tmp_path)
    flat = one_line(
        invoke(
            "train",
            "--prepared",
            prepared,
            "--model",
            "timm:test_resnet",
            "--out",
            out,
            "--epochs",
            1,
            "--batch-size",
            4,
            "--image-size",
            16,
            "--workers",
            0,
            "--device",
            "cpu",
            "--quiet",
        )
    )
    assert f"{out}: the output" in flat and "--prepared" in flat
    assert file_tree(tmp_path) == before and not (prepared / "run").exists()


@pytest.mark.parametrize("flag", ["--predictions", "--val-predictions"])
def test_evaluate_out_containing_the_predictions_it_reads_is_refused(tmp_path, flag):
    from test_evaluate import make_predictions

    from mlcdf.evaluation.evaluate import write_predictions

    given = tmp_path / "given.csv"
    write_predictions(given, make_predictions())
    earlier = tmp_path / "eval"  # an earlier evaluation, whose predictions.csv is read again
    assert invoke("evaluate", "--predictions", given, "--out", earlier, "--quiet").exit_code == 0
    inputs = {"--predictions": given, "--val-predictions": given, flag: earlier / "predictions.csv"}
    before = file_tree(earlier)
    flat = one_line(
        invoke(
            "evaluate",
            "--predictions",
            inputs["--predictions"],
            "--out",
            earlier,
            "--quiet",
            "--tune-thresholds",
            "--val-predictions",
            inputs["--val-predictions"],
        )
    )
    assert f"{earlier}: the output contains {flag}" in flat
    assert file_tree(earlier) == before


def test_evaluate_into_the_predictions_file_is_refused(tmp_path):
    from test_evaluate import make_predictions

    from mlcdf.evaluation.evaluate import evaluate_predictions_file, write_predictions

    given = tmp_path / "given.csv"
    write_predictions(given, make_predictions())
    content = given.read_bytes()
    with pytest.raises(MlcdfError, match="the output is --predictions"):
        evaluate_predictions_file(given, given)
    assert given.read_bytes() == content


# ---------------------------------------------------------------------------------------------------------
# Image paths stay inside the dataset root


@pytest.mark.parametrize("escape", ["../outside/original/000000.png", "/tmp/outside/original/000000.png", "x/../../original/1.png"])
def test_annotation_paths_must_stay_inside_the_root(tmp_path, escape):
    rows = sequence_rows("facial_components", "train", "png")
    rows[2] = (escape, "[0, 0, 0, 0, 0]")
    root = write_release(tmp_path / "r", {("facial_components", "train"): rows}, images=False)
    flat = one_line(invoke("prepare", "--root", root, "--subset", "facial_components", "--out", tmp_path / "p", "--check-images", "none"))
    assert "train.csv:4:" in flat and "dataset root" in flat
    assert not (tmp_path / "p").exists()


def test_prepared_paths_must_stay_inside_the_root(tmp_path):
    prepared = write_toy_prepared(tmp_path, {"train": 3})
    lines = (prepared / "train.csv").read_text().splitlines()
    lines[2] = "../../../../etc/passwd," + lines[2].split(",", 1)[1]
    (prepared / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SchemaError, match=r"train\.csv:3: .*'\.\./\.\./\.\./\.\./etc/passwd'.*dataset root"):
        load_prepared(prepared).read_split("train")


def test_a_symlink_inside_the_root_is_followed(tmp_path):
    prepared = write_toy_prepared(tmp_path, {"train": 2})
    table = load_prepared(prepared).read_split("train")
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "root" / "facial_components" / "images" / "train").rename(elsewhere)
    (tmp_path / "root" / "facial_components" / "images" / "train").symlink_to(elsewhere)
    assert load_rgb(load_prepared(prepared).image_path(table.file_paths[1])).shape == (32, 32, 3)


# ---------------------------------------------------------------------------------------------------------
# CSV and meta.json contents


def write_annotations(root: Path, body: bytes) -> Path:
    path = root / "facial_components" / "annotations" / "train.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    return root


@pytest.mark.parametrize(
    "row, reason",
    [
        (b'facial_components/images/train/original/\xff.png,"[0, 0, 0, 0, 0]"\n', "not UTF-8"),
        (b'"' + b"a" * 200_000 + b'","[0, 0, 0, 0, 0]"\n', "field larger than"),
    ],
)
def test_annotation_csv_bytes_and_field_sizes(tmp_path, row, reason):
    good = b'facial_components/images/train/original/0.png,"[0, 0, 0, 0, 0]"\n'
    root = write_annotations(tmp_path / "r", b"file_path,label\n" + good + row)
    flat = one_line(invoke("prepare", "--root", root, "--subset", "facial_components", "--out", tmp_path / "p", "--check-images", "none"))
    assert "train.csv:3:" in flat and reason in flat


@pytest.mark.parametrize(
    "row, reason",
    [(b"facial_components/\xff.png,,0,0,0,0,0\n", "not UTF-8"), (b'"' + b"a" * 200_000 + b'",,0,0,0,0,0\n', "field larger than")],
)
def test_prepared_csv_bytes_and_field_sizes(tmp_path, row, reason):
    prepared = write_toy_prepared(tmp_path, {"train": 3})
    with open(prepared / "train.csv", "ab") as handle:
        handle.write(row)
    with pytest.raises(SchemaError, match=rf"train\.csv:5: .*{reason}"):
        load_prepared(prepared).read_split("train")


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_header_only_split_is_an_error_naming_it(tmp_path, split):
    prepared = write_toy_prepared(tmp_path, {"train": 3, "val": 2})
    text = (prepared / f"{split}.csv").read_text()
    (prepared / f"{split}.csv").write_text(text.splitlines()[0] + "\n")
    with pytest.raises(SchemaError, match=rf"{split}\.csv: no rows"):
        load_prepared(prepared).read_split(split)


@pytest.mark.parametrize(
    "key, value",
    [
        ("subset", 3),
        ("labels", "nose"),
        ("labels", [1, 2]),
        ("root", 5),
        ("splits", [3]),
        ("splits", {"train": "x"}),
        ("splits", {"train": -1}),
    ],
)
def test_meta_json_values_are_checked_by_type(tmp_path, key, value):
    prepared = write_toy_prepared(tmp_path, {"train": 3})
    meta = json.loads((prepared / "meta.json").read_text())
    meta[key] = value
    (prepared / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaError, match=rf"meta\.json: {key!r}"):
        load_prepared(prepared)


# ---------------------------------------------------------------------------------------------------------
# Decompression bombs and huge images


def test_a_bomb_is_an_unreadable_image(tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 80
    with pytest.raises(OSError, match="exceeds the limit of 89,478,485 pixels"):
        load_rgb(bomb, 32)
    assert "exceeds the limit" in verify_image(bomb)


def test_the_pixel_limit_is_ours_and_can_be_raised(tmp_path, monkeypatch):
    write_image(tmp_path / "a.png", size=40)
    with pytest.raises(OSError, match="40x40 = 1,600 pixels exceeds the limit of 1,000"):
        load_rgb(tmp_path / "a.png", 16, max_pixels=1000)
    # Above Pillow's own bomb limit (here made tiny), a raised limit still decodes.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert load_rgb(tmp_path / "a.png", 16, max_pixels=2000).shape == (16, 16, 3)
    assert DEFAULT_MAX_PIXELS == 89_478_485


def test_prepare_decode_reports_and_skips_a_bomb(release, tmp_path):
    png_bomb(release / "facial_components/images/test/eyebrow-hair-nose/000003.png")
    args = ("prepare", "--root", release, "--subset", "facial_components", "--check-images", "decode")
    flat = one_line(invoke(*args, "--out", tmp_path / "p"))
    assert "test.csv:5:" in flat and "exceeds the limit" in flat
    result = invoke(*args, "--out", tmp_path / "p2", "--skip-missing")
    assert result.exit_code == 0, result.output
    assert load_prepared(tmp_path / "p2" / "facial_components").splits["test"] == 5
    # --max-pixels lowers (or raises) the limit: at 100 pixels every 16x16 image is refused.
    flat = one_line(invoke(*args, "--out", tmp_path / "p3", "--max-pixels", 100))
    assert "exceeds the limit of 100 pixels" in flat


def test_the_cache_build_names_a_bomb(tmp_path):
    prepared = load_prepared(write_toy_prepared(tmp_path, {"train": 3}))
    victim = prepared.image_path(prepared.read_split("train").file_paths[1])
    png_bomb(victim)
    with pytest.raises(MlcdfError, match=rf"{victim.name}: cannot decode .*exceeds the limit"):
        build_image_cache(prepared, "train", 16, workers=1)


def test_image_embeddings_name_a_bomb(tmp_path):
    from mlcdf.graph.build import GraphConfig, build_graph

    prepared_dir = write_toy_prepared(tmp_path, {"train": 4})
    prepared = load_prepared(prepared_dir)
    png_bomb(prepared.image_path(prepared.read_split("train").file_paths[2]))
    config = GraphConfig(
        prepared=prepared_dir, out=tmp_path / "g.npz", embedding="image", backbone="test_resnet", image_size=16, workers=0, device="cpu"
    )
    with pytest.raises(MlcdfError, match=r"000002\.png: .*exceeds the limit"):
        build_graph(config)
    assert not (tmp_path / "g.npz").exists()


# ---------------------------------------------------------------------------------------------------------
# Undecodable images read without the cache (decoded batch by batch, possibly in DataLoader workers)


def corrupt(prepared_dir: Path, split: str, row: int) -> Path:
    """Replace the image of ``row`` of ``split`` with bytes that are no image; returns its path."""
    prepared = load_prepared(prepared_dir)
    victim = prepared.image_path(prepared.read_split(split).file_paths[row])
    victim.write_bytes(b"not an image")
    return victim


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "in-a-worker"])
def test_train_no_cache_names_an_undecodable_image(tmp_path, workers):
    prepared = write_toy_prepared(tmp_path, {"train": 4, "val": 4})
    victim = corrupt(prepared, "train", 2)
    flat = one_line(
        invoke(
            "train",
            "--prepared",
            prepared,
            "--model",
            "timm:test_resnet",
            "--out",
            tmp_path / "run",
            "--no-cache",
            "--workers",
            workers,
            "--epochs",
            1,
            "--batch-size",
            4,
            "--image-size",
            16,
            "--device",
            "cpu",
            "--quiet",
        )
    )
    assert f"{victim}: cannot decode" in flat and "DataLoader" not in flat


def test_evaluate_of_a_no_cache_run_names_an_undecodable_image(tmp_path):
    prepared = write_toy_prepared(tmp_path, {"train": 4, "val": 4, "test": 4})
    run = tmp_path / "run"
    train(
        TrainConfig(
            prepared=str(prepared),
            model="timm:test_resnet",
            out=str(run),
            epochs=1,
            batch_size=4,
            image_size=16,
            workers=0,
            device="cpu",
            cache=False,
        )
    )
    victim = corrupt(prepared, "test", 3)
    flat = one_line(invoke("evaluate", "--run", run, "--device", "cpu", "--quiet"))
    assert f"{victim}: cannot decode" in flat
    assert not (run / "eval").exists()
