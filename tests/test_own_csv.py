"""``mlcdf prepare --format csv``: a user's own multi-label CSV, any vocabulary, through every stage."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image
from PIL import Image
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.data.own_csv import stratified_split
from mlcdf.data.prepared import load_prepared
from mlcdf.errors import MlcdfError

runner = CliRunner()

#: A 12-label vocabulary in form (b), with the name shapes users write.
TWELVE = (
    "Arched_Eyebrows",
    "5_o_Clock_Shadow",
    "lipColor",
    "nose",
    "eyeShape",
    "Big_Lips",
    "hairColor",
    "Bangs",
    "skin_tone",
    "Eyeglasses",
    "Smiling",
    "Young",
)
#: CelebA's 40 attributes, in list_attr_celeba.txt's order.
CELEBA = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def twelve_label_dataset(folder: Path, per_split=(12, 6, 6)) -> Path:
    """Form (b): ``file_path,labels,split``; images under ``folder/images``."""
    rng = np.random.default_rng(0)
    rows = []
    for split, count in zip(("train", "val", "test"), per_split):
        for index in range(count):
            present = [name for name in TWELVE if rng.random() < 0.3]
            file_path = f"{split}/{index:03d}.png"
            write_image(folder / "images" / file_path, seed=len(rows))
            rows.append([file_path, "|".join(present), split])
    return write_csv(folder / "twelve.csv", ["file_path", "labels", "split"], rows)


def celeba_dataset(folder: Path, count: int = 60, seed: int = 0) -> tuple[Path, np.ndarray]:
    """Form (a) as CelebA's attribute file: ``image_id`` then 40 columns of -1/1; no split column."""
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.1, 0.6, len(CELEBA))
    targets = (rng.random((count, len(CELEBA))) < rates).astype(int)
    rows = []
    for index, target in enumerate(targets):
        image_id = f"{index + 1:06d}.jpg"
        write_image(folder / "img_align_celeba" / image_id, seed=index)
        rows.append([image_id, *(2 * target - 1)])
    return write_csv(folder / "list_attr_celeba.csv", ["image_id", *CELEBA], rows), targets


def prepare(csv_path: Path, root: Path, out: Path, *extra: str):
    args = ["prepare", "--format", "csv", "--csv", str(csv_path), "--root", str(root), "--out", str(out), *extra]
    return runner.invoke(app, args, env={"COLUMNS": "300"})


def test_form_b_with_split_column(tmp_path):
    csv_path = twelve_label_dataset(tmp_path)
    result = prepare(csv_path, tmp_path / "images", tmp_path / "prepared", "--check-images", "decode")
    assert result.exit_code == 0, result.output
    prepared = load_prepared(tmp_path / "prepared" / "twelve")
    assert prepared.labels == tuple(sorted(TWELVE))  # the sorted union, printed
    assert "labels (the names found, sorted): " + ", ".join(sorted(TWELVE)) in result.output.replace("\n", "")
    assert prepared.splits == {"train": 12, "val": 6, "test": 6}
    assert prepared.meta["format"] == "csv" and prepared.root == (tmp_path / "images").resolve()
    with pytest.raises(MlcdfError, match="point at PREPARED/<subset>, not PREPARED"):
        load_prepared(tmp_path / "prepared")  # the parent of a dataset of any name
    rows = list(csv.reader(Path(csv_path).read_text(encoding="utf-8").splitlines()))[1:]
    test = prepared.read_split("test")
    for (file_path, names, split), got_path, sequence, target in zip(rows[18:], test.file_paths, test.sequences, test.targets):
        assert got_path == file_path and split == "test"
        present = names.split("|") if names else []
        assert {prepared.labels[j] for j in np.flatnonzero(target)} == set(present)
        assert sequence == "-".join(sorted(present, key=prepared.labels.index))


def test_form_a_celeba_stratified(tmp_path):
    csv_path, targets = celeba_dataset(tmp_path)
    out = tmp_path / "prepared"
    args = ("--path-column", "image_id", "--split-ratios", "0.6,0.2,0.2", "--seed", "3", "--name", "celeba")
    result = prepare(csv_path, tmp_path / "img_align_celeba", out, *args)
    assert result.exit_code == 0, result.output
    prepared = load_prepared(out / "celeba")
    assert prepared.labels == tuple(CELEBA)
    # iterative stratification trades exact sizes for each label's share
    assert list(prepared.splits) == ["train", "val", "test"] and sum(prepared.splits.values()) == 60
    assert np.abs(np.array(list(prepared.splits.values())) - [36, 12, 12]).max() <= 2
    assert prepared.meta["split_by"] == {"ratios": [0.6, 0.2, 0.2], "seed": 3}
    by_id = {f"{i + 1:06d}.jpg": target for i, target in enumerate(targets)}
    seen = []
    for split in ("train", "val", "test"):
        table = prepared.read_split(split)
        seen += table.file_paths
        for file_path, target in zip(table.file_paths, table.targets):
            np.testing.assert_array_equal(target, by_id[file_path])  # -1 -> 0, 1 -> 1, in CELEBA's order
        positives = table.targets.sum(axis=0)
        assert f"{CELEBA[0]}" in result.output and f"{positives[0]} (" in result.output
    assert sorted(seen) == sorted(by_id)
    # The same seed gives the same split, byte for byte; another seed another split.
    again = prepare(csv_path, tmp_path / "img_align_celeba", tmp_path / "again", *args)
    assert again.exit_code == 0
    assert (out / "celeba" / "train.csv").read_bytes() == (tmp_path / "again" / "celeba" / "train.csv").read_bytes()
    other = prepare(csv_path, tmp_path / "img_align_celeba", tmp_path / "other", *args[:-4], "--seed", "4", "--name", "celeba")
    assert other.exit_code == 0
    assert (out / "celeba" / "train.csv").read_bytes() != (tmp_path / "other" / "celeba" / "train.csv").read_bytes()


def test_labels_option_selects_and_orders_columns(tmp_path):
    csv_path, targets = celeba_dataset(tmp_path, count=10)
    rows = list(csv.reader(Path(csv_path).read_text(encoding="utf-8").splitlines()))
    write_csv(tmp_path / "with_split.csv", rows[0] + ["split"], [row + ["train"] for row in rows[1:]])
    result = prepare(
        tmp_path / "with_split.csv",
        tmp_path / "img_align_celeba",
        tmp_path / "p",
        "--path-column",
        "image_id",
        "--labels",
        "Young,Bald,Smiling",
    )
    assert result.exit_code == 0, result.output
    prepared = load_prepared(tmp_path / "p" / "with_split")
    assert prepared.labels == ("Young", "Bald", "Smiling") and prepared.splits == {"train": 10}
    columns = [CELEBA.index(name) for name in prepared.labels]
    np.testing.assert_array_equal(prepared.read_split("train").targets, targets[:, columns])


def test_true_false_values_and_sequence_column(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / "img" / name)
    csv_path = write_csv(
        tmp_path / "mine.csv",
        ["file_path", "split", "sequence", "nose", "lip", "eye"],
        [
            ["a.png", "train", "lip-nose", "TRUE", "true", "false"],
            ["b.png", "train", "", "0", "-1", "False"],
            ["c.png", "val", "eye", "0", "0", "1"],
        ],
    )
    result = prepare(csv_path, tmp_path / "img", tmp_path / "p")
    assert result.exit_code == 0, result.output
    table = load_prepared(tmp_path / "p" / "mine").read_split("train")
    assert table.sequences == ["lip-nose", ""]  # the order applied is kept
    np.testing.assert_array_equal(table.targets, [[1, 1, 0], [0, 0, 0]])


def test_stratified_split_keeps_each_labels_rate():
    rng = np.random.default_rng(0)
    rates = np.linspace(0.05, 0.5, 12)
    targets = (rng.random((1000, 12)) < rates).astype(np.uint8)
    assigned = stratified_split(targets, (0.8, 0.1, 0.1), seed=0)
    assert np.bincount(assigned).tolist() == pytest.approx([800, 100, 100], abs=3)
    whole = targets.mean(axis=0)
    for split in range(3):
        rate = targets[assigned == split].mean(axis=0)
        # each split's positives are within one image of the label's share, for every label
        counts = targets[assigned == split].sum(axis=0)
        expected = targets.sum(axis=0) * (0.8, 0.1, 0.1)[split]
        assert np.abs(counts - expected).max() <= 2.5, (split, counts, expected)
        assert np.abs(rate - whole).max() < 0.03
    # a random split of the same sizes is much further off: the test can tell the two apart
    shuffled = np.random.default_rng(0).permutation(assigned)
    counts = targets[shuffled == 1].sum(axis=0)
    assert np.abs(counts - targets.sum(axis=0) * 0.1).max() > 5


def _write_three_images(root: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        write_image(root / name)


BAD_CSVS = [
    # (header, rows, extra args, expected message, line)
    (
        ["file_path", "split", "x", "y"],
        [["a.png", "train", "1", "0"], ["b.png", "train", "2", "0"]],
        (),
        "column 'x': '2' is not one of",
        3,
    ),
    (["file_path", "split", "x", "y"], [["a.png", "train", "1", ""]], (), "column 'y': '' is not one of", 2),
    (
        ["file_path", "labels", "split"],
        [["a.png", "x|y", "train"], ["b.png", "x|z", "train"]],
        ("--labels", "x,y"),
        "unknown label(s) 'z'",
        3,
    ),
    (["file_path", "labels", "split"], [["a.png", "x||y", "train"]], (), "has an empty name", 2),
    (["file_path", "labels", "split"], [["a.png", "x", "train"], ["", "y", "train"]], (), "empty file_path", 3),
    (["file_path", "labels", "split"], [["a.png", "x", "train"], ["b.png", "y", "val"], ["a.png", "y", "test"]], (), "repeats line 2", 4),
    (["file_path", "labels", "split"], [["a.png", "x", "train"], ["d.png", "y", "train"]], (), "image d.png is missing", 3),
    (["file_path", "labels", "split"], [["a.png", "x", "training"]], (), "split 'training' is not one of train, val, test", 2),
    (["file_path", "labels", "split"], [["../a.png", "x", "train"]], (), "has a '..' part", 2),
    (["file_path", "labels", "split"], [["/etc/passwd", "x", "train"]], (), "is absolute", 2),
    (["file_path", "labels", "sequence", "split"], [["a.png", "x|y", "x", "train"]], (), "does not name each present label once", 2),
    (["file_path", "labels"], [["a.png", "x"]], (), "no 'split' column", 1),
    (["image", "labels", "split"], [["a.png", "x", "train"]], (), "no 'file_path' column", 1),
    (["file_path", "split", "x-ray"], [["a.png", "train", "1"]], (), "holds '-'", 1),
    (["file_path", "labels", "split"], [["a.png", "x", "train"]], ("--split-ratios", "0.8,0.1,0.1"), "and --split-ratios was given", 1),
    (["file_path", "split", "x"], [["a.png", "train", "1", "0"]], (), "4 columns, the header has 3", 2),
]


@pytest.mark.parametrize("header, rows, extra, message, line", BAD_CSVS, ids=[case[3][:30] for case in BAD_CSVS])
def test_bad_csv_exit_2_names_file_and_line_writes_nothing(tmp_path, header, rows, extra, message, line):
    _write_three_images(tmp_path / "img")
    csv_path = write_csv(tmp_path / "bad.csv", header, rows)
    result = prepare(csv_path, tmp_path / "img", tmp_path / "out", *extra)
    assert result.exit_code == 2, result.output
    text = result.output.replace("\n", "")
    assert f"{csv_path}:{line}: " in text and message in text, text
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "labels, message",
    [("x,x", "--labels names a label twice"), ("x,,y", "--labels: an empty label name"), ("x-y", "--labels: label name 'x-y' holds '-'")],
)
def test_bad_labels_option(tmp_path, labels, message):
    _write_three_images(tmp_path / "img")
    csv_path = write_csv(tmp_path / "s.csv", ["file_path", "labels", "split"], [["a.png", "x", "train"]])
    result = prepare(csv_path, tmp_path / "img", tmp_path / "out", "--labels", labels)
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "out").exists()


def test_skip_missing_and_decode(tmp_path):
    _write_three_images(tmp_path / "img")
    (tmp_path / "img" / "c.png").write_bytes(b"not a png")
    rows = [["a.png", "x", "train"], ["b.png", "y", "train"], ["c.png", "x|y", "train"], ["d.png", "y", "val"]]
    csv_path = write_csv(tmp_path / "s.csv", ["file_path", "labels", "split"], rows)
    result = prepare(csv_path, tmp_path / "img", tmp_path / "out", "--check-images", "decode")
    assert result.exit_code == 2 and f"{csv_path}:4: image c.png is unreadable" in result.output.replace("\n", "")
    assert not (tmp_path / "out").exists()
    result = prepare(csv_path, tmp_path / "img", tmp_path / "out", "--check-images", "decode", "--skip-missing")
    assert result.exit_code == 0, result.output
    prepared = load_prepared(tmp_path / "out" / "s")
    assert prepared.splits == {"train": 2}  # c.png unreadable, d.png missing: val is left empty, so absent
    assert prepared.meta["dropped"] == {"missing": 1, "unreadable": 1}


def test_option_of_the_other_format_is_refused(tmp_path):
    _write_three_images(tmp_path / "img")
    csv_path = write_csv(tmp_path / "s.csv", ["file_path", "labels", "split"], [["a.png", "x", "train"]])
    result = prepare(csv_path, tmp_path / "img", tmp_path / "out", "--subset", "facial_components")
    assert result.exit_code == 2 and "--subset do not apply to --format csv" in result.output.replace("\n", "")
    result = runner.invoke(
        app,
        ["prepare", "--root", str(tmp_path / "img"), "--out", str(tmp_path / "o"), "--split-ratios", "0.8,0.1,0.1"],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 2 and "--split-ratios do not apply to --format seqdeepfake" in result.output.replace("\n", "")
    result = prepare(csv_path, tmp_path / "img", tmp_path / "out", "--split-ratios", "0.8,0.3,0.1")
    assert result.exit_code == 2 and "must sum to 1" in result.output.replace("\n", "")


def test_seqdeepfake_subset_name_needs_its_vocabulary(tmp_path):
    _write_three_images(tmp_path / "img")
    rows = [["a.png", "nose", "train"], ["b.png", "lip|eye", "train"]]
    csv_path = write_csv(tmp_path / "s.csv", ["file_path", "labels", "split"], rows)
    result = prepare(csv_path, tmp_path / "img", tmp_path / "out", "--name", "facial_components")
    assert result.exit_code == 2 and "is the Seq-DeepFake subset whose labels are nose, eye" in result.output
    assert not (tmp_path / "out").exists()
    labels = "nose,eye,eyebrow,lip,hair"
    result = prepare(csv_path, tmp_path / "img", tmp_path / "out", "--name", "facial_components", "--labels", labels)
    assert result.exit_code == 0, result.output
    assert load_prepared(tmp_path / "out" / "facial_components").labels == tuple(labels.split(","))


@pytest.mark.parametrize("num_labels", [2, 101])
def test_graph_models_take_any_number_of_labels(num_labels):
    import torch

    from mlcdf.models import GraphTensors, create_model, list_models, model_info

    for name in [name for name in list_models() if model_info(name).requires_graph]:
        graph = GraphTensors(torch.rand(num_labels, num_labels), torch.rand(num_labels, 7))
        model = create_model(name, num_labels, graph=graph, backbone="test_resnet")
        logits = model(torch.rand(2, 3, 32, 32))
        assert logits.shape == (2, num_labels), name
        logits.sum().backward()


def test_missing_stratification_package_is_one_line(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "iterstrat.ml_stratifiers", None)
    monkeypatch.setitem(sys.modules, "iterstrat", None)
    _write_three_images(tmp_path / "img")
    csv_path = write_csv(tmp_path / "s.csv", ["file_path", "labels"], [["a.png", "x"], ["b.png", "y"], ["c.png", ""]])
    result = prepare(csv_path, tmp_path / "img", tmp_path / "out", "--split-ratios", "0.8,0.1,0.1")
    assert result.exit_code == 2 and "pip install 'mlcdf[csv]'" in result.output.replace("\n", "")
    assert not (tmp_path / "out").exists()


def write_word_vectors(path: Path, labels: tuple[str, ...], dim: int = 6) -> Path:
    """A GloVe-format file holding every lower-cased word of the label names, and nothing else."""
    from mlcdf.graph.embeddings import name_words

    words = sorted({word.lower() for label in labels for word in name_words(label)})
    rng = np.random.default_rng(0)
    path.write_text("".join(f"{w} {' '.join(f'{v:.4f}' for v in rng.normal(size=dim))}\n" for w in words), encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("dataset", ["twelve", "celeba"])
def test_own_dataset_through_every_stage(tmp_path, dataset):
    if dataset == "twelve":
        csv_path, root, extra = twelve_label_dataset(tmp_path), tmp_path / "images", ()
        name, labels = "twelve", tuple(sorted(TWELVE))
    else:
        csv_path, _ = celeba_dataset(tmp_path, count=40)
        root, extra = tmp_path / "img_align_celeba", ("--path-column", "image_id", "--split-ratios", "0.6,0.2,0.2")
        name, labels = "list_attr_celeba", tuple(CELEBA)
    wide = {"env": {"COLUMNS": "300"}}
    assert prepare(csv_path, root, tmp_path / "prepared", *extra).exit_code == 0
    prepared = tmp_path / "prepared" / name

    # build-graph: the words of names like 5_o_Clock_Shadow or lipColor, from the user's vector file
    vectors = write_word_vectors(tmp_path / "vectors.txt", labels)
    graph = tmp_path / "graph.npz"
    result = runner.invoke(
        app, ["build-graph", "--prepared", str(prepared), "--embedding", f"glove:{vectors}", "--out", str(graph)], **wide
    )
    assert result.exit_code == 0, result.output
    info = json.loads(graph.with_suffix(".json").read_text())
    words = {label: entry["words_found"] for label, entry in info["embedding"]["per_label"].items()}
    if dataset == "twelve":
        assert words["5_o_Clock_Shadow"] == ["5", "o", "clock", "shadow"] and words["lipColor"] == ["lip", "color"]
        assert "A_hat = " in result.output  # 12 labels: the matrices are printed
    else:
        assert words["Arched_Eyebrows"] == ["arched", "eyebrows"] and "matrices (cooccurrence, A, A_hat) are in graph.npz" in result.output
    with np.load(graph) as arrays:
        assert arrays["embeddings"].shape == (len(labels), 6) and arrays["A_hat"].shape == (len(labels),) * 2

    # train a graph model on it, evaluate, predict, explain, export
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--prepared",
            str(prepared),
            "--model",
            "ml_gcn",
            "--backbone",
            "test_resnet",
            "--graph",
            str(graph),
            "--out",
            str(run),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--image-size",
            "16",
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--split", "test", "--device", "cpu"], **wide)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert list(metrics["per_label"]) == list(labels)
    with open(run / "eval" / "test" / "predictions.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["file_path", *(column for label in labels for column in (f"target_{label}", f"score_{label}"))]
    with Image.open(run / "eval" / "test" / "ap_per_label.png") as bars, Image.open(run / "eval" / "test" / "pr_curves.png") as curves:
        # 40 labels: one horizontal bar per row, and the legend beside the curves in two columns
        assert (bars.height > bars.width) == (dataset == "celeba")
        assert curves.width > (1300 if dataset == "celeba" else 1000)
    result = runner.invoke(app, ["report", str(run), "--paper"], **wide)
    assert result.exit_code == 0, result.output
    assert "paper" not in result.output.split("\n", 2)[-1] and name in result.output  # no published rows to compare

    images = sorted(root.rglob("*.png")) + sorted(root.rglob("*.jpg"))
    out_csv = tmp_path / "predictions.csv"
    result = runner.invoke(app, ["predict", str(run), str(images[0]), "--out", str(out_csv), "--device", "cpu"], **wide)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(Path(out_csv).read_text(encoding="utf-8").splitlines()))
    assert len(rows) == 1 and [k for k in rows[0] if k.startswith("score_")] == [f"score_{label}" for label in labels]
    if dataset == "celeba":  # 40 labels: the screen shows predicted labels with scores, not 40 columns
        assert "every label's score is in --out FILE" in result.output and "Young" not in result.output.split("fake")[0]
    result = runner.invoke(app, ["explain", str(run), str(images[0]), "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "x" / f"{images[0].stem}_{labels[0]}.png") as panel:
        width, height = panel.size
    with Image.open(tmp_path / "x" / f"{images[0].stem}_all.png") as grid:
        # every label's overlay, in a near-square grid: 4 x 3 for 12 labels, 7 x 6 for 40
        assert grid.size == ((4 * width, 3 * height) if dataset == "twelve" else (7 * width, 6 * height))
    if dataset == "celeba":
        result = runner.invoke(app, ["export", str(run), "--onnx", str(tmp_path / "m.onnx")])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "m.json").read_text())["labels"] == list(labels)


def test_name_words_and_unknown_names_listed(tmp_path):
    from mlcdf.graph.embeddings import EmbeddingSource, name_words, read_word_vectors_file, word_embeddings

    assert name_words("5_o_Clock_Shadow") == ["5", "o", "Clock", "Shadow"]
    assert name_words("lipColor") == ["lip", "Color"] and name_words("HTTPServer") == ["HTTP", "Server"]
    assert name_words("Arched_Eyebrows") == ["Arched", "Eyebrows"] and name_words("eye2shape") == ["eye", "2", "shape"]
    vectors = write_word_vectors(tmp_path / "v.txt", ("lipColor", "nose"))
    assert sorted(read_word_vectors_file(vectors).key_to_index) == ["color", "lip", "nose"]
    embeddings = word_embeddings(("lipColor", "nose"), EmbeddingSource("glove", str(vectors)))
    assert embeddings.info["per_label"]["lipColor"]["words_found"] == ["lip", "color"]
    with pytest.raises(MlcdfError) as error:
        word_embeddings(("lipColor", "Goatee", "nose", "Wearing_Hat"), EmbeddingSource("glove", str(vectors)))
    message = str(error.value)
    assert "2 label(s) with no word" in message and "'Goatee'" in message and "'Wearing_Hat'" in message
    assert "--label-phrases" in message and "glove:PATH" in message and "gensim:NAME" in message and "\n" not in message
