"""The seqfakeformer recipe's images (jitter ranges, 256 px, Normalize(0.5)) and a sequence run used on new
images: predict (steps in order with their probabilities), explain (Grad-CAM per predicted step) and export
(the greedy decoder unrolled into ONNX)."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from toy import LABELS, write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.config import TrainConfig
from mlcdf.data.dataset import Augment, MultiLabelImages
from mlcdf.data.images import load_rgb
from mlcdf.errors import MlcdfError
from mlcdf.inference.explain import explain_image, grad_cam
from mlcdf.inference.runs import load_run_model, predict_images, read_run
from mlcdf.labels import ids_to_sequence, step_name
from mlcdf.models import create_model, model_info, resolve_config
from mlcdf.tasks import SequenceTask
from mlcdf.train.checkpoint import load_checkpoint, save_checkpoint
from mlcdf.train.stage import train

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
SIZE = 64  # test_resnet has stride 32: a 2 x 2 feature map, so Grad-CAM maps are not constant
AUTHORS_JITTER = {"brightness": (0.5, 1.3), "contrast": (0.8, 1.5), "saturation": (0.2, 1.5)}


def test_the_recipe_is_the_seqfakeformer_models_default_with_the_authors_images():
    assert model_info("seqfakeformer_r50").recipe == "seqfakeformer" and model_info("resnet50").recipe == "asl"
    config = resolve_config(TrainConfig(prepared="p", model="seqfakeformer_r50", out="o"))
    assert (config.recipe, config.image_size, config.lr, config.clip_grad_norm) == ("seqfakeformer", 256, 1e-3, 0.1)
    assert config.jitter is None and config.jitter_ranges() == AUTHORS_JITTER
    assert config.normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) == ((0.5,) * 3, (0.5,) * 3)
    # A multi-label model keeps today's defaults, and its own normalisation.
    plain = resolve_config(TrainConfig(prepared="p", model="resnet50", out="o"))
    assert (plain.recipe, plain.image_size, plain.jitter) == ("asl", 224, 0.1)
    assert plain.jitter_ranges() == {name: (0.9, 1.1) for name in AUTHORS_JITTER}
    assert plain.normalisation((0.1, 0.2, 0.3), (1, 2, 3)) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    # What the user gives wins over the recipe: a recipe, a size, a symmetric jitter.
    chosen = resolve_config(TrainConfig(prepared="p", model="seqfakeformer_r50", out="o", recipe="asl", image_size=96, jitter=0.2))
    assert (chosen.recipe, chosen.image_size) == ("asl", 96) and chosen.jitter_ranges()["saturation"] == pytest.approx((0.8, 1.2))
    own_jitter = resolve_config(TrainConfig(prepared="p", model="seqfakeformer_r50", out="o", jitter=0.0))
    assert own_jitter.jitter_ranges() == {name: (1.0, 1.0) for name in AUTHORS_JITTER}


def test_jitter_factors_are_drawn_over_the_recipes_ranges():
    ranges = resolve_config(TrainConfig(prepared="p", model="seqfakeformer_r34", out="o")).jitter_ranges()
    images = np.zeros((400, 4, 4, 3), dtype=np.uint8)

    class Source:
        def __len__(self):
            return len(images)

        def read(self, indices):
            return images[indices]

    dataset = MultiLabelImages(Source(), np.zeros((400, 5)), augment=Augment(**ranges), seed=3)
    batch = dataset.__getitems__([(0, index) for index in range(400)])
    for name, (low, high) in AUTHORS_JITTER.items():
        factors = batch[name].numpy()
        assert low <= factors.min() and factors.max() <= high, name
        # 400 uniform draws reach within 2% of the range's width of each end (a symmetric +-0.1 would not).
        assert factors.min() < low + 0.02 * (high - low) and factors.max() > high - 0.02 * (high - low), name
    assert 150 < int(batch["flip"].sum()) < 250
    with pytest.raises(ValueError, match="brightness"):
        Augment(brightness=(1.3, 0.5))


def test_the_recipes_normalisation_is_recorded_and_used_at_predict(tmp_path):
    # A multi-label timm model normalises with ImageNet's statistics; under the seqfakeformer recipe with 0.5.
    prepared = write_toy_prepared(tmp_path, {"train": 8, "val": 4})
    run = tmp_path / "run"
    config = TrainConfig(
        prepared=str(prepared),
        model="timm:test_efficientnet_ln",
        out=str(run),
        recipe="seqfakeformer",
        epochs=1,
        batch_size=4,
        workers=0,
        device="cpu",
    )
    train(config)
    saved = json.loads((run / "config.json").read_text())
    assert create_model("timm:test_efficientnet_ln", 5).input_mean == (0.485, 0.456, 0.406)
    assert saved["input_mean"] == [0.5] * 3 and saved["input_std"] == [0.5] * 3
    assert saved["train"]["image_size"] == 256 and saved["train"]["recipe"] == "seqfakeformer"
    assert saved["augment"] == {"flip": True, **{name: list(bounds) for name, bounds in AUTHORS_JITTER.items()}}
    image = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
    model = load_run_model(run, "best", "cpu")
    pixels = torch.from_numpy(np.array(load_rgb(image, 256))).permute(2, 0, 1).float()[None] / 255

    def by_hand(mean, std):
        with torch.no_grad():
            return torch.sigmoid(model((pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)))[0].numpy()

    scores = predict_images(run, [image], device="cpu", workers=0).scores[0]
    np.testing.assert_allclose(scores, by_hand([0.5] * 3, [0.5] * 3), rtol=1e-5, atol=1e-6)
    # The normalisation comes from config.json, not from the model or the recipe: change it there and predict follows.
    (run / "config.json").write_text(json.dumps({**saved, "input_mean": [0.2, 0.3, 0.4], "input_std": [0.25, 0.5, 1.0]}))
    scores = predict_images(run, [image], device="cpu", workers=0).scores[0]
    np.testing.assert_allclose(scores, by_hand([0.2, 0.3, 0.4], [0.25, 0.5, 1.0]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(by_hand([0.2, 0.3, 0.4], [0.25, 0.5, 1.0]), by_hand([0.5] * 3, [0.5] * 3))


@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory):
    """A SeqFakeFormer run (the recipe by default) whose best weights decode different sequences for different
    images: a fresh model's, with a sharpened output layer (a 1-epoch model on the toy gives one sequence)."""
    folder = tmp_path_factory.mktemp("sequence")
    prepared = write_toy_prepared(folder, {"train": 8, "val": 4, "test": 12})
    run = folder / "run"
    values = dict(model="seqfakeformer_r34", backbone="test_resnet", epochs=1, batch_size=4, image_size=SIZE, workers=0, device="cpu")
    train(TrainConfig(prepared=str(prepared), out=str(run), **values))
    torch.manual_seed(0)
    fresh = create_model("seqfakeformer_r34", 5, backbone="test_resnet")
    with torch.no_grad():
        for parameter in fresh.head.parameters():
            parameter.mul_(30)
        for parameter in fresh.input_proj.parameters():
            parameter.mul_(10)
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    state["model"] = fresh.state_dict()
    save_checkpoint(run / "checkpoints" / "best.pt", state)
    images = folder / "images"
    images.mkdir()
    root = prepared.parent.parent / "root" / "facial_components" / "images" / "test"
    for index, path in enumerate(sorted(root.rglob("*.png"))):
        shutil.copy(path, images / f"{index:02d}.png")
    return run, images


def _by_hand(run, paths):
    """Each image alone through the model at the run's size, with the recorded normalisation: the task's
    decoding and the probability of each emitted token."""
    info = read_run(run)
    model = load_run_model(info, "best", "cpu")
    task = SequenceTask(LABELS)
    mean, std = torch.tensor(info.input_mean).view(1, 3, 1, 1), torch.tensor(info.input_std).view(1, 3, 1, 1)
    ids, probabilities = [], []
    with torch.no_grad():
        for path in paths:
            x = (torch.from_numpy(np.array(load_rgb(path, SIZE))).permute(2, 0, 1).float()[None] / 255 - mean) / std
            outputs = model(x)
            steps = task.decode(outputs)[0]
            ids.append(steps.numpy())
            chosen = outputs[0].softmax(-1).gather(1, outputs[0].argmax(-1, keepdim=True))[:, 0]
            probabilities.append(np.where(steps.numpy() > 0, chosen.numpy(), 0.0))
    return np.array(ids), np.array(probabilities)


def test_the_run_records_the_recipe_it_defaulted_to(sequence_run):
    run, _ = sequence_run
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["recipe"] == "seqfakeformer" and saved["train"]["image_size"] == SIZE
    assert saved["input_mean"] == [0.5] * 3 and saved["augment"]["saturation"] == [0.2, 1.5]


def test_predict_gives_each_images_steps_in_order_with_their_probabilities(sequence_run, tmp_path):
    run, images = sequence_run
    paths = sorted(images.glob("*.png"))
    ids, probabilities = _by_hand(run, paths)
    assert len({tuple(row) for row in ids.tolist()}) >= 3  # the rows differ, so a mix-up would show
    result = predict_images(run, [images], device="cpu", workers=0, batch_size=5)
    assert result.paths == paths
    np.testing.assert_array_equal(result.sequences, ids)
    np.testing.assert_allclose(result.step_probabilities, probabilities, rtol=1e-5, atol=1e-6)
    # A row that never ends with EOS may hold the PAD token (7), named "#7" as evaluate's pred_sequence does.
    expected_steps = [
        [(step_name(i, LABELS), p) for i, p in zip(row, prob) if i] for row, prob in zip(ids.tolist(), probabilities.tolist())
    ]
    for got, want in zip(result.predicted_steps(), expected_steps):
        assert [name for name, _ in got] == [name for name, _ in want]
        assert [p for _, p in got] == pytest.approx([p for _, p in want], rel=1e-5)

    out = tmp_path / "predictions.csv"
    args = ["predict", str(run), str(images), "--out", str(out), "--device", "cpu", "--workers", "0"]
    result = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    first = " > ".join(f"{name} {p:.2f}" for name, p in expected_steps[0]) or "real"
    assert "sequence (step probability)" in result.output and first in result.output
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["sequence"] for row in rows] == ["-".join(name for name, _ in steps) for steps in expected_steps]
    for row, steps in zip(rows, expected_steps):
        written = [float(value) for value in row["step_probabilities"].split()]
        assert written == pytest.approx([p for _, p in steps], rel=1e-5)
    assert [row["sequence"] for row in rows] == [ids_to_sequence(row, LABELS) for row in ids]
    assert runner.invoke(app, args).exit_code == 0  # its own file is replaced
    json_out = tmp_path / "predictions.json"
    assert runner.invoke(app, [*args[:4], str(json_out), *args[5:]]).exit_code == 0
    written = json.loads(json_out.read_text())["predictions"]
    assert [row["sequence"] for row in written] == [row["sequence"] for row in rows]


def test_explain_draws_one_grad_cam_per_predicted_step(sequence_run, tmp_path):
    run, images = sequence_run
    paths = sorted(images.glob("*.png"))
    ids, probabilities = _by_hand(run, paths)
    row = next(index for index, steps in enumerate(ids.tolist()) if sum(1 for i in steps if 0 < i <= 5) >= 2)
    steps = [(step, LABELS[i - 1]) for step, i in enumerate(ids[row].tolist(), start=1) if 0 < i <= 5]
    out = tmp_path / "explain"
    results = explain_image(run, paths[row], out, device="cpu")
    assert [(item.step, item.label) for item in results] == steps
    assert [item.probability for item in results] == pytest.approx([probabilities[row, step - 1] for step, _ in steps], rel=1e-5)
    assert [item.path.name for item in results] == [f"{paths[row].stem}_step{step}_{name}.png" for step, name in steps]
    assert all(item.path.is_file() for item in results) and (out / f"{paths[row].stem}_all.png").is_file()
    # The heat maps differ between steps: each follows its own token's gradient.
    pixels = [np.asarray(Image.open(item.path), dtype=np.int16) for item in results]
    assert np.abs(pixels[0] - pixels[1]).max() > 0

    # --label keeps that label's step; a label the decoder did not emit is refused in one line, nothing written.
    result = runner.invoke(
        app, ["explain", str(run), str(paths[row]), "--out", str(tmp_path / "one"), "--label", steps[1][1], "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    kept = [f"{paths[row].stem}_step{step}_{name}.png" for step, name in steps if name == steps[1][1]]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(kept + ([f"{paths[row].stem}_all.png"] if len(kept) > 1 else []))
    missing = next(name for name in LABELS if name not in [n for _, n in steps])
    result = runner.invoke(
        app, ["explain", str(run), str(paths[row]), "--out", str(tmp_path / "none"), "--label", missing, "--device", "cpu"]
    )
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "no step" in result.output
    assert not any((tmp_path / "none").glob("*.png"))


def test_grad_cam_per_label_refuses_a_sequence_model(sequence_run):
    run, _ = sequence_run
    model = load_run_model(run, "best", "cpu")
    with pytest.raises(MlcdfError, match="per predicted step"):
        grad_cam(model, torch.zeros(1, 3, SIZE, SIZE), [0])


@pytest.mark.slow
def test_export_unrolls_the_greedy_decoder(sequence_run, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from mlcdf.inference.export import export_onnx

    run, images = sequence_run
    report = export_onnx(run, tmp_path / "seq.onnx")
    assert report.max_abs_diff <= 1e-4
    paths = sorted(images.glob("*.png"))
    ids, _ = _by_hand(run, paths)
    batch = np.stack([load_rgb(path, SIZE) for path in paths]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    session = onnxruntime.InferenceSession(str(tmp_path / "seq.onnx"), providers=["CPUExecutionProvider"])
    probabilities, sequence = session.run(["probabilities", "sequence"], {"images": batch})
    np.testing.assert_array_equal(sequence, ids)
    with torch.no_grad():
        expected = SequenceTask(LABELS).scores(load_run_model(run, "best", "cpu")((torch.from_numpy(batch) - 0.5) / 0.5))
    np.testing.assert_allclose(probabilities, expected.numpy(), atol=1e-5)
    assert "sequence: int64" in json.loads((tmp_path / "seq.json").read_text())["output"]
