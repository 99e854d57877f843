"""Bundles: a trained run as one .mlcdf file that predict, explain and evaluate take instead of the run folder,
checked member by member on opening, and its way through the Hugging Face Hub (a local cache standing in)."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import zipfile

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from toy import toy_image
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.errors import MlcdfError, SchemaError
from mlcdf.inference.bundle import FORMAT_VERSION, HUB_FILENAME, MANIFEST, WEIGHTS, open_bundle
from mlcdf.inference.export import export_bundle
from mlcdf.inference.runs import predict_images, read_run

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
LABELS = ["nose", "eye", "eyebrow", "lip", "hair"]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    """A toy run trained one epoch, with a test evaluation whose thresholds were tuned on val."""
    from toy import write_toy_prepared

    from mlcdf.config import TrainConfig
    from mlcdf.train.stage import train

    folder = tmp_path_factory.mktemp("bundle")
    prepared = write_toy_prepared(folder, {"train": 16, "val": 8, "test": 8})
    run = folder / "run"
    config = TrainConfig(
        prepared=str(prepared), model="timm:test_resnet", out=str(run), epochs=1, batch_size=8, image_size=32, workers=0, device="cpu"
    )
    train(config)
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--tune-thresholds", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def bundle(evaluated_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle_out") / "toy.mlcdf"
    result = runner.invoke(app, ["export", str(evaluated_run), "--bundle", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    Image.fromarray(toy_image(np.array([1, 0, 0, 1, 0]), rng, size=32)).save(folder / "a.png")
    Image.fromarray(toy_image(np.array([0, 1, 0, 0, 1]), rng, size=48)).save(folder / "b.jpg")
    return folder


def scores(run, images) -> np.ndarray:
    return predict_images(run, [images], device="cpu", workers=0).scores


def test_a_bundle_predicts_as_its_run_to_the_bit_also_moved_and_without_the_run(evaluated_run, bundle, images, tmp_path):
    expected = scores(evaluated_run, images)
    assert expected.shape == (2, 5)
    assert np.array_equal(scores(bundle, images), expected)
    # Another folder, and no run anywhere: the bundle alone is the detector.
    run_copy = tmp_path / "run"
    shutil.copytree(evaluated_run, run_copy)
    moved = tmp_path / "elsewhere" / "detector.mlcdf"
    runner.invoke(app, ["export", str(run_copy), "--bundle", str(tmp_path / "made.mlcdf")])
    moved.parent.mkdir()
    shutil.move(tmp_path / "made.mlcdf", moved)
    shutil.rmtree(run_copy)
    assert np.array_equal(scores(moved, images), expected)
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(moved), str(images), "--out", str(out), "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert out.read_text().count("\n") == 3


def test_loading_a_bundle_reads_no_pickle(bundle, images, monkeypatch):
    expected = scores(bundle, images)

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was read")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    fresh = bundle.parent / "fresh-copy.mlcdf"  # another file: opened anew, not from this process's cache
    shutil.copyfile(bundle, fresh)
    assert np.array_equal(scores(fresh, images), expected)


def test_the_bundle_holds_the_whole_detector(evaluated_run, bundle):
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read(MANIFEST))
        members = {name: archive.read(name) for name in names - {MANIFEST}}
    assert {"config.json", WEIGHTS, "MODEL_CARD.md"} <= names
    assert manifest["format"] == "mlcdf-bundle" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["checkpoint"] == "best" and manifest["labels"] == LABELS
    info = read_run(evaluated_run)
    assert manifest["alignment"] == info.alignment == read_run(bundle).alignment
    assert manifest["normalisation"] == {"image_size": 32, "mean": list(info.input_mean), "std": list(info.input_std)}
    for name, data in members.items():
        assert manifest["members"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert members["config.json"] == (evaluated_run / "config.json").read_bytes()
    metrics = json.loads((evaluated_run / "eval" / "test" / "metrics.json").read_text())
    card = members["MODEL_CARD.md"].decode()
    assert f"{metrics['mAP']:.1f}" in card and "## Intended use" in card and "## Limits" in card
    # Tuned on val (--tune-thresholds), and the "set + prior order" decoder's orders from the train split.
    assert set(metrics["threshold"]) == set(LABELS)
    assert json.loads(members["thresholds.json"])["thresholds"] == metrics["threshold"]
    assert read_run(bundle).bundle.thresholds["thresholds"] == metrics["threshold"]
    assert json.loads(members["prior_orders.json"])["orders"] == metrics["sequence_decoder"]["prior"]["orders"]
    assert read_run(bundle).bundle.prior_orders["orders"] == metrics["sequence_decoder"]["prior"]["orders"]


def test_the_same_run_gives_the_same_bytes_and_only_a_bundle_is_replaced(evaluated_run, bundle, tmp_path):
    again = tmp_path / "again.mlcdf"
    export_bundle(evaluated_run, again)
    assert again.read_bytes() == bundle.read_bytes()
    export_bundle(evaluated_run, again)  # its own earlier output: replaced
    other = tmp_path / "notes.mlcdf"
    other.write_text("someone's notes")
    with pytest.raises(MlcdfError, match="not written by 'mlcdf export'"):
        export_bundle(evaluated_run, other)
    assert other.read_text() == "someone's notes"
    with pytest.raises(MlcdfError, match="ends in .mlcdf"):
        export_bundle(evaluated_run, tmp_path / "x.zip")
    with pytest.raises(MlcdfError, match="already a bundle"):
        export_bundle(bundle, tmp_path / "twice.mlcdf")


def test_explain_and_evaluate_take_a_bundle(evaluated_run, bundle, images, tmp_path):
    result = runner.invoke(app, ["explain", str(bundle), str(images / "a.png"), "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x" / "a_all.png").is_file()
    split = "test"
    from_run = runner.invoke(app, ["evaluate", "--run", str(evaluated_run), "--split", split, "--out", str(tmp_path / "r"), "--json", "-q"])
    from_bundle = runner.invoke(app, ["evaluate", "--run", str(bundle), "--split", split, "--out", str(tmp_path / "b"), "--json", "-q"])
    assert from_run.exit_code == 0 and from_bundle.exit_code == 0, from_bundle.output
    assert (tmp_path / "b" / "predictions.csv").read_text() == (tmp_path / "r" / "predictions.csv").read_text()
    no_out = runner.invoke(app, ["evaluate", "--run", str(bundle)])
    assert no_out.exit_code == 2 and "give --out DIR" in no_out.output


def with_thresholds(run, target, values):
    """A copy of ``run`` at ``target`` whose test evaluation records ``values`` as thresholds tuned on val."""
    shutil.copytree(run, target)
    metrics_file = target / "eval" / "test" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["threshold"] = values
    metrics_file.write_text(json.dumps(metrics))
    return target


def test_tuned_thresholds_decide_predictions_from_a_run_and_its_bundle(evaluated_run, images, tmp_path):
    # Even labels always predicted, odd ones never: decisions 0.5 could not give (the scores differ from 0 and 1).
    tuned = {label: 0.0 if index % 2 == 0 else 1.0 for index, label in enumerate(LABELS)}
    run = with_thresholds(evaluated_run, tmp_path / "run", tuned)
    bundle_path = tmp_path / "tuned.mlcdf"
    export_bundle(run, bundle_path)
    expected = np.array([[index % 2 == 0 for index in range(5)]] * 2)
    for source in (run, bundle_path):
        result = predict_images(source, [images], device="cpu", workers=0)
        assert np.array_equal(result.predicted, expected), source
        assert result.thresholds.to_json() == tuned and str(result.thresholds).startswith("tuned for F1 per label on ")
        out = tmp_path / f"{source.name}.json"
        cli = runner.invoke(app, ["predict", str(source), str(images), "--out", str(out), "--device", "cpu", "--workers", "0"])
        assert cli.exit_code == 0, cli.output
        written = json.loads(out.read_text())
        assert written["threshold"] == tuned
        assert [row["predicted"] for row in written["predictions"]] == ["nose+eyebrow+hair"] * 2
    # A number given on the command line wins, for every label.
    fixed = predict_images(bundle_path, [images], device="cpu", workers=0, threshold=0.5)
    assert fixed.thresholds.to_json() == 0.5 and np.array_equal(fixed.predicted, fixed.scores >= 0.5)


def test_tuned_thresholds_that_do_not_fit_or_do_not_exist_are_one_line_errors(evaluated_run, bundle, images, tmp_path):
    untuned = tmp_path / "untuned"
    shutil.copytree(evaluated_run, untuned)
    shutil.rmtree(untuned / "eval")
    assert predict_images(untuned, [images], device="cpu", workers=0).thresholds.to_json() == 0.5  # auto: none tuned, 0.5
    result = runner.invoke(app, ["predict", str(untuned), str(images), "--threshold", "tuned", "--device", "cpu"])
    assert result.exit_code == 2 and "has no tuned thresholds; run 'mlcdf evaluate --run RUN --tune-thresholds'" in result.output
    # A hand-edited evaluation: tuning that is not a record is no tuning; thresholds that are not numbers are named.
    hostile = with_thresholds(evaluated_run, tmp_path / "hostile", {label: "x" for label in LABELS})
    result = runner.invoke(app, ["predict", str(hostile), str(images), "--device", "cpu"])
    assert result.exit_code == 2 and f"{hostile}/eval/test/metrics.json: a tuned threshold is not a number" in result.output.replace(
        "\n", ""
    )
    metrics_file = hostile / "eval" / "test" / "metrics.json"
    metrics_file.write_text(json.dumps({**json.loads(metrics_file.read_text()), "threshold_tuning": "yes"}))
    assert predict_images(hostile, [images], device="cpu", workers=0).thresholds.to_json() == 0.5
    for bad in ("1.5", "nan", "best"):
        result = runner.invoke(app, ["predict", str(bundle), str(images), "--threshold", bad, "--device", "cpu"])
        assert result.exit_code == 2 and "a number in [0, 1], 'tuned' or 'auto'" in result.output, (bad, result.output)

    # A bundle whose thresholds.json names other labels (its hashes made to match: a careless edit, not damage).
    def other_labels(name, data):
        if name == "thresholds.json":
            document = json.loads(data)
            document["thresholds"] = {"nose": 0.5, "mouth": 0.5}
            return name, json.dumps(document).encode()
        return name, data

    edited = tmp_path / "edited.mlcdf"
    with zipfile.ZipFile(bundle) as source:
        members = {info.filename: source.read(info.filename) for info in source.infolist()}
    members = dict(other_labels(name, data) for name, data in members.items())
    manifest = json.loads(members[MANIFEST])
    manifest["members"]["thresholds.json"] = {
        "sha256": hashlib.sha256(members["thresholds.json"]).hexdigest(),
        "size": len(members["thresholds.json"]),
    }
    members[MANIFEST] = json.dumps(manifest).encode()
    with zipfile.ZipFile(edited, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["predict", str(edited), str(images), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 2 and "edited.mlcdf: thresholds.json: the tuned thresholds must name each" in result.output, result.output
    assert result.output.strip().count("\n") == 0 and not out.exists()


def test_a_bundle_holds_one_set_of_weights(evaluated_run, bundle, images, tmp_path):
    result = runner.invoke(app, ["predict", str(bundle), str(images), "--checkpoint", "last", "--device", "cpu"])
    assert result.exit_code == 2 and "holds the 'best' weights only" in result.output
    ema = tmp_path / "ema.mlcdf"
    export_bundle(evaluated_run, ema, checkpoint="ema")
    expected = predict_images(evaluated_run, [images], checkpoint="ema", device="cpu", workers=0).scores
    assert not np.array_equal(expected, scores(evaluated_run, images))  # the EMA weights are other weights
    for checkpoint in ("best", "ema"):
        assert np.array_equal(predict_images(ema, [images], checkpoint=checkpoint, device="cpu", workers=0).scores, expected)


def rewrite(source, target, change):
    """Copy the bundle ``source`` to ``target`` with ``change(name, data) -> (name, data) | None`` applied to each member."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            changed = change(info.filename, old.read(info.filename))
            if changed is not None:
                new.writestr(changed[0], changed[1])


def with_manifest(edit):
    def change(name, data):
        if name != MANIFEST:
            return name, data
        manifest = json.loads(data)
        edit(manifest)
        return name, json.dumps(manifest).encode()

    return change


def future_version(manifest):
    manifest["format_version"] = FORMAT_VERSION + 1


def escaping_member(manifest):
    manifest["members"]["../config.json"] = manifest["members"]["config.json"]


def tampered(name, data):
    return name, (data[:-1] + bytes([data[-1] ^ 1])) if name == WEIGHTS else data


def escaping(name, data):
    return ("../config.json" if name == "config.json" else name), data


def bad_bundles(bundle, folder):
    """Each bad input of the issue, and the words its one-line error must hold."""
    data = bundle.read_bytes()
    cases = {
        "truncated.mlcdf": (lambda path: path.write_bytes(data[: len(data) // 2]), "truncated or damaged"),
        "not-a-zip.mlcdf": (lambda path: path.write_bytes(b"\x89PNG not a bundle at all"), "not a zip archive"),
        "future.mlcdf": (lambda path: rewrite(bundle, path, with_manifest(future_version)), f"version {FORMAT_VERSION + 1} is newer"),
        "tampered.mlcdf": (lambda path: rewrite(bundle, path, tampered), "does not match its sha256"),
        "escape.mlcdf": (lambda path: rewrite(bundle, path, escaping), "would leave the bundle"),
        "extra.mlcdf": (lambda path: rewrite(bundle, path, with_manifest(escaping_member)), "not part of bundle format"),
    }
    for name, (make, words) in cases.items():
        make(folder / name)
        yield folder / name, words


def test_bad_bundles_are_one_line_errors_and_nothing_is_written(bundle, images, tmp_path):
    for path, words in bad_bundles(bundle, tmp_path):
        out = tmp_path / "out.csv"
        result = runner.invoke(app, ["predict", str(path), str(images), "--out", str(out), "--device", "cpu"])
        assert result.exit_code == 2, (path.name, result.output)
        assert words in result.output and str(path.name) in result.output, (path.name, result.output)
        assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output
        assert not out.exists()
        with pytest.raises(SchemaError):
            open_bundle(path)


def test_a_zip_bomb_member_is_refused_before_it_is_expanded(bundle, tmp_path):
    bomb = tmp_path / "bomb.mlcdf"
    huge = b"\0" * (64 << 20)

    def inflate(name, data):
        return (name, huge) if name == "MODEL_CARD.md" else (name, data)

    def declare(manifest):
        manifest["members"]["MODEL_CARD.md"] = {"sha256": hashlib.sha256(huge).hexdigest(), "size": len(huge)}

    with zipfile.ZipFile(bundle) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            name, data = inflate(info.filename, source.read(info.filename))
            if name == MANIFEST:
                manifest = json.loads(data)
                declare(manifest)
                data = json.dumps(manifest).encode()
            target.writestr(name, data)
    with pytest.raises(SchemaError, match="refusing a zip bomb"):
        open_bundle(bomb)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """The Hub as a local cache in offline mode; uploads land where a download would find them."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    uploads = []

    def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, **kwargs):
        commit = "0" * 40
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        target = repo / "snapshots" / commit / path_in_repo
        target.parent.mkdir(parents=True, exist_ok=True)
        data = path_or_fileobj if isinstance(path_or_fileobj, bytes) else open(path_or_fileobj, "rb").read()  # noqa: SIM115
        target.write_bytes(data)
        uploads.append((repo_id, path_in_repo))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", upload_file)
    return uploads


def test_push_to_hub_and_load_from_it_offline(evaluated_run, images, hub_cache, tmp_path):
    path = tmp_path / "toy.mlcdf"
    result = runner.invoke(app, ["export", str(evaluated_run), "--bundle", str(path), "--push-to-hub", "lab/toy"])
    assert result.exit_code == 0, result.output
    assert "hf-hub:lab/toy" in result.output
    assert hub_cache == [("lab/toy", HUB_FILENAME), ("lab/toy", "README.md")]
    assert np.array_equal(scores("hf-hub:lab/toy", images), scores(evaluated_run, images))
    result = runner.invoke(app, ["predict", "hf-hub:lab/toy", str(images), "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    missing = runner.invoke(app, ["predict", "hf-hub:lab/other", str(images), "--device", "cpu"])
    assert missing.exit_code == 2 and "hf-hub:lab/other: cannot get model.mlcdf" in missing.output
    bad_name = runner.invoke(app, ["export", str(evaluated_run), "--bundle", str(path), "--push-to-hub", "not a repo"])
    assert bad_name.exit_code == 2 and "not a Hub repository name" in bad_name.output
    alone = runner.invoke(app, ["export", str(evaluated_run), "--push-to-hub", "lab/toy", "--onnx", str(tmp_path / "m.onnx")])
    assert alone.exit_code == 2 and "--bundle" in alone.output


def test_a_graph_model_bundle_carries_its_graph(tmp_path, images):
    from toy import write_toy_prepared

    from mlcdf.config import TrainConfig
    from mlcdf.graph import LabelGraph, save_graph
    from mlcdf.train.stage import train

    rng = np.random.default_rng(0)
    adjacency = rng.random((5, 5)) + np.eye(5)
    graph_file = tmp_path / "graph.npz"
    save_graph(
        graph_file,
        LabelGraph(
            tuple(LABELS), np.ones(5), np.zeros((5, 5)), np.eye(5), adjacency / adjacency.sum(1, keepdims=True), rng.standard_normal((5, 8))
        ),
    )
    prepared = write_toy_prepared(tmp_path, {"train": 8, "val": 8})
    run = tmp_path / "gcn"
    train(
        TrainConfig(
            prepared=str(prepared),
            model="ml_gcn",
            backbone="test_resnet",
            graph=str(graph_file),
            out=str(run),
            epochs=1,
            batch_size=8,
            image_size=32,
            workers=0,
            device="cpu",
        )
    )
    path = tmp_path / "gcn.mlcdf"
    export_bundle(run, path)
    with zipfile.ZipFile(path) as archive:
        assert archive.read("graph.npz") == (run / "graph.npz").read_bytes()
    moved = tmp_path / "moved" / "gcn.mlcdf"
    moved.parent.mkdir()
    shutil.move(path, moved)
    expected = scores(run, images)
    shutil.rmtree(run)
    assert np.array_equal(scores(moved, images), expected)


def test_a_missing_run_or_bundle_is_named(images, tmp_path):
    for command in (["predict", str(tmp_path / "gone.mlcdf"), str(images)], ["evaluate", "--run", str(tmp_path / "gone.mlcdf")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "gone.mlcdf: not found (neither a run folder nor a bundle)" in result.output, result.output
    assert list(tmp_path.iterdir()) == []
