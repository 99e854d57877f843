"""mlcdf build-graph: co-occurrence maths, word and image embeddings, the graph files and the command."""

from __future__ import annotations

import gzip
import importlib
import json
import socket
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.data.prepared import META_FILE, SplitTable, load_prepared, write_split_csv
from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError
from mlcdf.graph import load_graph
from mlcdf.graph.build import GraphConfig, build_graph
from mlcdf.graph.cooccurrence import REWEIGHT_EPS, build_adjacency
from mlcdf.graph.embeddings import (
    DEFAULT_PHRASES,
    EmbeddingSource,
    gensim_data_file,
    label_phrases,
    parse_embedding_source,
    read_word_vectors_file,
    word_embeddings,
)
from mlcdf.graph.image_embeddings import fit_pca
from mlcdf.io import write_json
from mlcdf.labels import SUBSETS, count_cooccurrence

LABELS = ("a", "b", "c", "d", "e")
# a and b co-occur twice, a and c once; d is isolated (one image, alone); e has no image at all.
TARGETS = np.array(
    [
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0],
    ],
    dtype=np.uint8,
)


def write_prepared(folder: Path, targets: np.ndarray, labels: tuple[str, ...] = LABELS, subset: str = "toy") -> Path:
    """A prepared subset with the given train targets and one 32x32 image per row."""
    rng = np.random.default_rng(0)
    root, prepared = folder / "root", folder / "prepared" / subset
    prepared.mkdir(parents=True)
    paths, sequences = [], []
    for index, target in enumerate(targets):
        sequence = "-".join(labels[j] for j in np.flatnonzero(target))
        file_path = f"{subset}/images/train/{sequence or 'original'}/{index:06d}.png"
        (root / file_path).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        for j in np.flatnonzero(target):  # something label-specific to see
            pixels[4 * j : 4 * j + 6, :, j % 3] = 255
        Image.fromarray(pixels).save(root / file_path)
        paths.append(file_path)
        sequences.append(sequence)
    write_split_csv(prepared / "train.csv", SplitTable(paths, sequences, np.asarray(targets, np.uint8)), labels)
    write_json(
        prepared / META_FILE,
        {"subset": subset, "labels": list(labels), "root": str(root.resolve()), "splits": {"train": len(targets)}},
    )
    return prepared


def write_glove(path: Path, vectors: dict[str, list[float]]) -> Path:
    path.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------
# Co-occurrence and adjacency


def test_count_cooccurrence():
    counts, cooccurrence = count_cooccurrence(TARGETS)
    assert counts.tolist() == [3, 3, 2, 1, 0]
    expected = np.zeros((5, 5), dtype=int)
    expected[0, 1] = expected[1, 0] = 2
    expected[0, 2] = expected[2, 0] = 1
    np.testing.assert_array_equal(cooccurrence, expected)


def test_adjacency_hand_computed_with_isolated_and_zero_count_labels():
    counts, cooccurrence = count_cooccurrence(TARGETS)
    adjacency = build_adjacency(cooccurrence, counts, t=0.4, p=0.25)

    # P(j|i): P(b|a) = 2/3, P(c|a) = 1/3, P(a|b) = 2/3, P(a|c) = 1/2; rows of d (isolated) and e (0/0) zero.
    conditional = np.zeros((5, 5))
    conditional[0, 1], conditional[0, 2], conditional[1, 0], conditional[2, 0] = 2 / 3, 1 / 3, 2 / 3, 1 / 2
    np.testing.assert_allclose(adjacency.conditional, conditional)
    # t = 0.4 keeps a->b, b->a, c->a and drops a->c (1/3).
    edges = np.zeros((5, 5), dtype=bool)
    edges[0, 1] = edges[1, 0] = edges[2, 0] = True
    np.testing.assert_array_equal(adjacency.edges, edges)
    assert adjacency.num_edges == 3

    # Column a receives two edges, column b one: each edge weighs p / (in-degree + 1e-6).
    into_a, into_b = 0.25 / (2 + REWEIGHT_EPS), 0.25 / (1 + REWEIGHT_EPS)
    A = np.identity(5)
    A[1, 0] = A[2, 0] = into_a
    A[0, 1] = into_b
    np.testing.assert_allclose(adjacency.A, A, rtol=0, atol=1e-12)

    # A_hat[i, j] = A[j, i] / sqrt(D_i D_j) with D = row sums of A: the transpose of ML-GCN's gen_adj.
    d = np.array([1 + into_b, 1 + into_a, 1 + into_a, 1.0, 1.0])
    A_hat = np.diag(1 / d)
    A_hat[0, 1] = into_a / np.sqrt(d[0] * d[1])  # from A[b, a]
    A_hat[0, 2] = into_a / np.sqrt(d[0] * d[2])  # from A[c, a]
    A_hat[1, 0] = into_b / np.sqrt(d[0] * d[1])  # from A[a, b]
    np.testing.assert_allclose(adjacency.A_hat, A_hat, rtol=0, atol=1e-12)
    assert A_hat[2, 0] == 0  # the symmetric D^-1/2 A D^-1/2 would put c->a here
    assert np.isfinite(adjacency.A_hat).all()
    # The isolated and the zero-count labels only keep themselves.
    for node in (3, 4):
        assert adjacency.A[node].tolist() == adjacency.A[:, node].tolist() == np.identity(5)[node].tolist()


def _ml_gcn_reference(cooccurrence: np.ndarray, counts: np.ndarray, t: float, p: float) -> tuple[np.ndarray, np.ndarray]:
    """ML-GCN's util.gen_A / gen_adj, line for line (their p is a hard-coded 0.25)."""
    _adj = cooccurrence.astype(np.float64) / counts[:, np.newaxis]
    _adj[_adj < t] = 0
    _adj[_adj >= t] = 1
    _adj = _adj * p / (_adj.sum(0, keepdims=True) + 1e-6)
    _adj = _adj + np.identity(len(counts), np.int32)
    A = torch.from_numpy(_adj)
    D = torch.diag(torch.pow(A.sum(1).float(), -0.5)).double()
    return _adj, torch.matmul(torch.matmul(A, D).t(), D).numpy()


@pytest.mark.parametrize("t,p", [(0.4, 0.25), (0.3, 0.2), (0.9, 1.0)])
def test_adjacency_matches_ml_gcn_reference(t: float, p: float):
    rng = np.random.default_rng(1)
    targets = (rng.random((200, 6)) < [0.5, 0.4, 0.3, 0.2, 0.6, 0.1]).astype(np.uint8)
    counts, cooccurrence = count_cooccurrence(targets)
    assert counts.min() > 0  # the reference divides by zero otherwise
    adjacency = build_adjacency(cooccurrence, counts, t=t, p=p)
    A, A_hat = _ml_gcn_reference(cooccurrence, counts, t, p)
    np.testing.assert_allclose(adjacency.A, A, atol=1e-12)
    np.testing.assert_allclose(adjacency.A_hat, A_hat, atol=1e-6)  # the reference's D is float32


@pytest.mark.parametrize("t,p", [(0.0, 0.25), (1.5, 0.25), (0.4, -0.1), (0.4, 1.5)])
def test_adjacency_rejects_out_of_range_parameters(t: float, p: float):
    counts, cooccurrence = count_cooccurrence(TARGETS)
    with pytest.raises(ValueError):
        build_adjacency(cooccurrence, counts, t=t, p=p)


# ---------------------------------------------------------------------------------------------------------
# Word embeddings


def test_parse_embedding_source():
    assert parse_embedding_source("glove") == EmbeddingSource("glove")
    assert parse_embedding_source("glove:/x/y.txt") == EmbeddingSource("glove", "/x/y.txt")
    assert parse_embedding_source("gensim:glove-wiki-gigaword-300").location == "glove-wiki-gigaword-300"
    assert not parse_embedding_source("image").is_word
    for bad in ("glove:", "gensim", "word2vec:x", "images"):
        with pytest.raises(ValueError, match="expected"):
            parse_embedding_source(bad)


def test_word_embeddings_from_a_glove_file(tmp_path: Path):
    path = write_glove(tmp_path / "tiny.txt", {"nose": [1, 0, 0], "eye": [0, 1, 0], "eyes": [0, 3, 0], "hair": [2, 2, 2]})
    phrases = tmp_path / "phrases.json"
    phrases.write_text(json.dumps({"hair": "HAIR wig"}))
    result = word_embeddings(("nose", "eye", "hair"), EmbeddingSource("glove", str(path)), phrases)
    np.testing.assert_allclose(result.vectors, [[1, 0, 0], [0, 2, 0], [2, 2, 2]])
    assert result.vectors.dtype == np.float32
    per_label = result.info["per_label"]
    assert per_label["eye"] == {"phrase": "eye eyes", "words_found": ["eye", "eyes"], "words_missing": []}
    assert per_label["hair"]["words_found"] == ["hair"]  # found lower-cased
    assert per_label["hair"]["words_missing"] == ["wig"]
    assert result.info["dim"] == 3 and result.info["source"] == f"glove:{path}"
    assert any("wig" in warning for warning in result.warnings)


def test_word2vec_text_binary_and_gzip_files(tmp_path: Path):
    from gensim.models import KeyedVectors

    vectors = KeyedVectors(vector_size=4)
    vectors.add_vectors(["nose", "lip"], np.array([[1, 2, 3, 4], [-1, 0.5, 0, 2]], dtype=np.float32))
    for name, binary in (("w.txt", False), ("w.bin", True), ("w.txt.gz", False), ("w.bin.gz", True)):
        vectors.save_word2vec_format(str(tmp_path / name), binary=binary)
        loaded = read_word_vectors_file(tmp_path / name)
        np.testing.assert_allclose(loaded["lip"], [-1, 0.5, 0, 2], err_msg=name)
    with gzip.open(tmp_path / "glove.txt.gz", "wt") as handle:
        handle.write("nose 1 2\nlip 3 4\n")
    np.testing.assert_allclose(read_word_vectors_file(tmp_path / "glove.txt.gz")["lip"], [3, 4])


def test_unreadable_or_missing_word_vector_file(tmp_path: Path):
    with pytest.raises(MissingArtifactError):
        read_word_vectors_file(tmp_path / "absent.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("nose 1 2 3\nlip 1 x\n")
    with pytest.raises(SchemaError, match="bad.txt"):
        read_word_vectors_file(bad)


def test_label_without_known_word_is_an_error_naming_it(tmp_path: Path):
    path = write_glove(tmp_path / "tiny.txt", {"nose": [1, 0]})
    with pytest.raises(MlcdfError, match=r"1 label\(s\) with no word.*'eye'.*--label-phrases"):
        word_embeddings(("nose", "eye"), EmbeddingSource("glove", str(path)))


@pytest.mark.parametrize("subset", list(SUBSETS))
def test_embedded_glove_loads_offline(subset: str):
    labels = SUBSETS[subset]
    result = word_embeddings(labels, EmbeddingSource("glove"))
    assert result.vectors.shape == (5, 50) and np.isfinite(result.vectors).all()
    assert not result.warnings
    for label in labels:
        entry = result.info["per_label"][label]
        assert entry["words_found"] == DEFAULT_PHRASES[label].lower().split() and not entry["words_missing"]
    assert len({tuple(row) for row in result.vectors.round(5)}) == 5
    # A known value of glove.6B.50d: the first component of "nose".
    if subset == "facial_components":
        assert result.vectors[0, 0] == pytest.approx(0.225)


def test_embedded_glove_names_its_limits_for_unknown_phrases(tmp_path: Path):
    phrases = tmp_path / "phrases.json"
    phrases.write_text(json.dumps({"nose": "snout"}))
    with pytest.raises(MlcdfError, match="embedded GloVe holds only"):
        word_embeddings(SUBSETS["facial_components"], EmbeddingSource("glove"), phrases)


def test_label_phrases_file_is_checked(tmp_path: Path):
    labels = ("nose", "Bangs", "my_label")
    assert label_phrases(labels) == {"nose": "nose", "Bangs": "bangs fringe hairstyle", "my_label": "my label"}
    path = tmp_path / "p.json"
    for content, message in (
        ({"tail": "tail"}, "'tail' is not a label"),
        ({"nose": ""}, "non-empty string"),
        ({"nose": ["nose"]}, "non-empty string"),
        (["nose"], "JSON object"),
    ):
        path.write_text(json.dumps(content))
        with pytest.raises(SchemaError, match=message):
            label_phrases(labels, path)
    path.write_text("{nose")
    with pytest.raises(SchemaError, match=r"p.json:1: not valid JSON"):
        label_phrases(labels, path)


def test_gensim_offline_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import gensim.downloader as api

    def offline_load(name, return_path=False):  # what gensim raises without internet and without a cache
        raise ValueError(f"unable to read local cache {tmp_path}/information.json during fallback, connect to the Internet and retry")

    monkeypatch.setattr(api, "BASE_DIR", str(tmp_path))
    monkeypatch.setattr(api, "load", offline_load)
    start = time.monotonic()
    with pytest.raises(MlcdfError, match="gensim:glove-wiki-gigaword-300: cannot download.*glove:PATH"):
        word_embeddings(SUBSETS["facial_components"], EmbeddingSource("gensim", "glove-wiki-gigaword-300"))
    assert time.monotonic() - start < 5
    assert socket.getdefaulttimeout() is None  # the download timeout does not leak


def test_gensim_unreachable_server_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import gensim.downloader as api

    monkeypatch.setattr(api, "BASE_DIR", str(tmp_path))  # gensim's real code, against the refused network
    start = time.monotonic()
    with pytest.raises(MlcdfError, match="needs internet once"):
        gensim_data_file("glove-wiki-gigaword-300")
    assert time.monotonic() - start < 5


def test_gensim_model_downloaded_earlier_loads_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import gensim.downloader as api

    folder = tmp_path / "tiny-glove-2"
    folder.mkdir()
    (folder / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    with gzip.open(folder / "tiny-glove-2.gz", "wt") as handle:
        handle.write("2 2\nnose 1 2\neye 3 4\n")
    monkeypatch.setattr(api, "BASE_DIR", str(tmp_path))
    monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("gensim.downloader.load called"))
    assert gensim_data_file("tiny-glove-2") == folder / "tiny-glove-2.gz"
    result = word_embeddings(("nose", "eye"), EmbeddingSource("gensim", "tiny-glove-2"))
    np.testing.assert_allclose(result.vectors, [[1, 2], [3, 4]])


# ---------------------------------------------------------------------------------------------------------
# The stage and the files


def test_build_graph_writes_the_contract(tmp_path: Path):
    prepared = write_prepared(tmp_path, TARGETS)
    glove = write_glove(tmp_path / "g.txt", {name: [i, 1.0, -i] for i, name in enumerate(LABELS)})
    config = GraphConfig(prepared=prepared, out=tmp_path / "graphs" / "toy.npz", embedding=f"glove:{glove}")
    result = build_graph(config)
    graph = load_graph(tmp_path / "graphs" / "toy.npz")
    assert graph.labels == LABELS
    assert graph.label_counts.tolist() == [3, 3, 2, 1, 0]
    np.testing.assert_allclose(graph.A_hat, result.adjacency.A_hat, rtol=1e-6)
    np.testing.assert_allclose(graph.embeddings[2], [2, 1, -2])
    info = json.loads((tmp_path / "graphs" / "toy.json").read_text())
    assert (info["t"], info["p"], info["num_edges"], info["zero_count_labels"]) == (0.4, 0.25, 3, ["e"])
    assert info["embedding"]["dim"] == 3 and info["embedding"]["per_label"]["d"]["words_found"] == ["d"]
    assert info["config"]["embedding"] == f"glove:{glove}"
    assert result.zero_count_labels == ["e"]
    assert any("isolated" in warning for warning in result.warnings)


def test_graph_config_rejects_bad_combinations(tmp_path: Path):
    base = {"prepared": tmp_path, "out": tmp_path / "g.npz"}
    for extra, message in (
        ({"embedding": "word2vec"}, "unknown embedding source"),
        ({"out": tmp_path / "g.json"}, "must end in .npz"),
        ({"t": 0.0}, "--t"),
        ({"p": 2.0}, "--p"),
        ({"from_run": tmp_path}, "only applies to --embedding image"),
        ({"embedding": "image", "label_phrases": tmp_path / "p.json"}, "only applies to word embeddings"),
        ({"embedding": "image", "from_run": tmp_path, "pretrained": True}, "run's own weights"),
        ({"embedding": "image", "dim": 0}, "--dim"),
    ):
        with pytest.raises(MlcdfError, match=message):
            GraphConfig(**{**base, **extra})


def test_image_embeddings_with_a_tiny_timm_model(tmp_path: Path):
    prepared = write_prepared(tmp_path, np.concatenate([TARGETS, TARGETS[:5]]))
    config = GraphConfig(
        prepared=prepared,
        out=tmp_path / "img.npz",
        embedding="image",
        backbone="test_resnet",
        dim=4,
        image_size=32,
        batch_size=5,
        device="cpu",
    )
    result = build_graph(config)
    graph = load_graph(tmp_path / "img.npz")
    assert graph.embeddings.shape == (5, 4) and np.isfinite(graph.embeddings).all()
    np.testing.assert_array_equal(graph.embeddings[4], 0)  # e has no image: the centroid
    assert np.abs(graph.embeddings[:4]).sum(axis=1).min() > 0
    embedding = graph.info["embedding"]
    assert embedding["kind"] == "image" and embedding["backbone"] == "timm:test_resnet"
    assert embedding["random_init"] and embedding["feature_dim"] == 96 and embedding["dim"] == 4
    assert [embedding["per_label"][label]["images"] for label in LABELS] == [6, 6, 4, 1, 0]
    assert any("RANDOM weights" in warning for warning in result.warnings)
    # Same seed, same random network, same embeddings.
    again = build_graph(GraphConfig(**{**config.__dict__, "out": tmp_path / "again.npz"}))
    np.testing.assert_allclose(again.graph.embeddings, graph.embeddings, atol=1e-5)


def test_image_embeddings_dim_is_clamped_to_the_data():
    features = np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32)
    projected, explained = fit_pca(features, 128)
    assert projected.shape == (6, 5) and explained == pytest.approx(1.0)
    with pytest.raises(MlcdfError, match="at least 2"):
        fit_pca(features[:1], 4)
    with pytest.raises(MlcdfError, match="same features"):
        fit_pca(np.ones((4, 3), np.float32), 2)


def test_image_embeddings_from_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    class RunModel(torch.nn.Module):
        input_mean = (0.5, 0.5, 0.5)
        input_std = (0.25, 0.25, 0.25)

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            assert x.shape[-1] == 24  # the run's training size
            return self.conv(x)

    calls = []

    def load_run_model(run_dir, checkpoint="best", device="cpu"):
        calls.append((Path(run_dir), checkpoint, torch.device(device)))
        return RunModel().to(device).eval()

    def read_run(run_dir):
        return types.SimpleNamespace(config=types.SimpleNamespace(image_size=24, input_size=24))

    importlib.import_module("mlcdf.inference")  # the real package first: the patch below replaces only its runs module
    fake = types.ModuleType("mlcdf.inference.runs")
    fake.load_run_model, fake.read_run = load_run_model, read_run
    monkeypatch.setitem(sys.modules, "mlcdf.inference.runs", fake)
    monkeypatch.setattr("mlcdf.inference.runs", fake, raising=False)
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    prepared = write_prepared(tmp_path, TARGETS)
    result = build_graph(GraphConfig(prepared=prepared, out=tmp_path / "run.npz", embedding="image", from_run=run_dir, dim=3, device="cpu"))
    assert calls == [(run_dir, "best", torch.device("cpu"))]
    embedding = result.graph.info["embedding"]
    assert embedding["backbone"] == f"run:{run_dir}" and not embedding["random_init"]
    assert embedding["feature_dim"] == 8 and result.graph.embeddings.shape == (5, 3)
    assert not any("RANDOM" in warning for warning in result.warnings)


def test_image_embeddings_report_a_missing_image(tmp_path: Path):
    prepared = write_prepared(tmp_path, TARGETS)
    missing = load_prepared(prepared).image_path(load_prepared(prepared).read_split("train").file_paths[3])
    missing.unlink()
    config = GraphConfig(prepared=prepared, out=tmp_path / "x.npz", embedding="image", backbone="test_resnet", device="cpu")
    with pytest.raises(MissingArtifactError, match=missing.name):
        build_graph(config)
    assert not (tmp_path / "x.npz").exists()


# ---------------------------------------------------------------------------------------------------------
# The command


def test_cli_builds_the_default_glove_graph(tmp_path: Path):
    prepared = write_prepared(tmp_path, TARGETS[:, :5], labels=SUBSETS["facial_components"], subset="facial_components")
    out = tmp_path / "graphs" / "c.npz"
    result = CliRunner().invoke(app, ["build-graph", "--prepared", str(prepared), "--out", str(out), "--t", "0.5"])
    assert result.exit_code == 0, result.output
    for text in ("edges surviving t = 0.5: 3 of 20", "A_hat", "Co-occurrence", "labels with no training image", "hair"):
        assert text in result.output
    graph = load_graph(out)
    assert graph.embeddings.shape == (5, 50) and graph.info["embedding"]["source"] == "glove"
    assert graph.info["t"] == 0.5


def test_cli_json_output(tmp_path: Path):
    prepared = write_prepared(tmp_path, TARGETS[:, :5], labels=SUBSETS["facial_attributes"], subset="facial_attributes")
    out = tmp_path / "a.npz"
    result = CliRunner().invoke(app, ["build-graph", "--prepared", str(prepared), "--out", str(out), "--json", "-q"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["npz"] == str(out) and info["embedding"]["per_label"]["Bangs"]["words_found"] == ["bangs", "fringe", "hairstyle"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--embedding", "word2vec"], "unknown embedding source"),
        (["--backbone", "resnet50"], "--backbone only apply to --embedding image"),
        (["--label-phrases", "{phrases}"], "with no word in the vocabulary of"),
        (["--out", "{tmp}/g.txt"], "must end in .npz"),
        (["--prepared", "{tmp}/nowhere"], "meta.json: not found"),
    ],
)
def test_cli_user_errors_exit_2_and_write_nothing(tmp_path: Path, args: list[str], message: str):
    prepared = write_prepared(tmp_path, TARGETS)
    phrases = tmp_path / "phrases.json"
    phrases.write_text(json.dumps({"c": "qqqzzz"}))
    glove = write_glove(tmp_path / "g.txt", {name: [1.0, 2.0] for name in LABELS})
    base = ["build-graph", "--prepared", str(prepared), "--out", str(tmp_path / "g.npz"), "--embedding", f"glove:{glove}"]
    args = [arg.format(tmp=tmp_path, phrases=phrases) for arg in args]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "g.npz").exists() and not (tmp_path / "g.json").exists()


def test_cli_help_explains_t_and_p():
    result = CliRunner().invoke(app, ["build-graph", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for needle in ("P(j | i) >= t", "--p", "Examples", "mlcdf build-graph --prepared", "gensim:NAME"):
        assert needle in text


def test_image_embeddings_with_local_weights(tmp_path: Path):
    import safetensors.torch
    import timm

    weights = tmp_path / "test_resnet.safetensors"
    safetensors.torch.save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(weights))
    prepared = write_prepared(tmp_path, TARGETS)
    config = GraphConfig(
        prepared=prepared,
        out=tmp_path / "w.npz",
        embedding="image",
        backbone="test_resnet",
        weights=weights,
        dim=2,
        image_size=32,
        device="cpu",
    )
    result = build_graph(config)
    embedding = result.graph.info["embedding"]
    assert not embedding["random_init"] and embedding["weights"] == str(weights)
    assert not any("RANDOM" in warning for warning in result.warnings)
