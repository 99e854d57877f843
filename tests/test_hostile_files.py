"""Damaged, foreign and interrupted files: graphs, word vectors, the image cache, predictions and metrics.

Each hostile file is written by the test itself. The promise under test: one line naming the file (and
line) and exit code 2, or (for our own derived image cache) a silent rebuild; never a traceback, never a
wrong result taken as a right one.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_graph import LABELS, TARGETS, write_glove, write_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.data.dataset import build_image_cache
from mlcdf.data.images import load_rgb
from mlcdf.data.prepared import load_prepared
from mlcdf.data.seqdeepfake import PrepareConfig, prepare
from mlcdf.errors import MlcdfError, SchemaError
from mlcdf.evaluation.evaluate import read_metrics, read_predictions
from mlcdf.experiments.reproduce import ReproduceConfig
from mlcdf.experiments.runner import _build_graph
from mlcdf.graph import load_graph, save_graph
from mlcdf.graph.build import GraphConfig, build_graph
from mlcdf.graph.cooccurrence import build_adjacency
from mlcdf.graph.embeddings import read_word_vectors_file
from mlcdf.labels import SUBSETS
from mlcdf.progress import silent

runner = CliRunner()


def one_line_error(result) -> str:
    """The CLI's message, after checking it is a user error on one line without a traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    return result.output


# ---------------------------------------------------------------------------------------------------------
# Graph files


@pytest.fixture
def graph_path(tmp_path: Path) -> Path:
    prepared = write_prepared(tmp_path, TARGETS)
    glove = write_glove(tmp_path / "g.txt", {name: [i, 1.0, -i] for i, name in enumerate(LABELS)})
    out = tmp_path / "graphs" / "toy.npz"
    build_graph(GraphConfig(prepared=prepared, out=out, embedding=f"glove:{glove}", t=0.4))
    return out


class Killed(BaseException):
    """Stands for SIGKILL at a chosen rename: nothing after it runs (not even ``except Exception``)."""


def test_graph_npz_and_json_are_one_unit_when_killed_at_any_rename(graph_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Rebuild with another t (other edges, other A) and kill at the 1st, 2nd, ... rename in turn.
    config = GraphConfig(
        prepared=graph_path.parent.parent / "prepared" / "toy",
        out=graph_path,
        embedding=f"glove:{graph_path.parent.parent / 'g.txt'}",
        t=0.9,
    )
    real_replace, outcomes = os.replace, []
    for kill_at in range(1, 4):
        calls = []

        def replace(src, dst, *, kill_at=kill_at, calls=calls):
            calls.append(dst)
            if len(calls) == kill_at:
                raise Killed
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        try:
            build_graph(config)
        except Killed:
            pass
        monkeypatch.setattr(os, "replace", real_replace)
        try:
            graph = load_graph(graph_path)
        except SchemaError as error:
            assert error.path == graph_path.with_suffix(".json") and "does not describe toy.npz" in str(error)
            outcomes.append("refused")
            continue
        # Whatever loads is one build: its arrays are the ones its recorded t gives.
        expected = build_adjacency(graph.cooccurrence, graph.label_counts, t=graph.info["t"], p=graph.info["p"])
        np.testing.assert_allclose(graph.A, expected.A, rtol=1e-6)
        assert json.loads(graph_path.with_suffix(".json").read_text()) == graph.info
        outcomes.append(graph.info["t"])
    # killed before any rename: the old graph; between the .npz and the .json: refused; not killed: the new.
    assert outcomes == [0.4, "refused", 0.9]


def test_graph_record_with_an_undefined_value_still_matches_its_json(graph_path: Path):
    graph = load_graph(graph_path)
    save_graph(graph_path, dataclasses.replace(graph, info={**graph.info, "pca_explained_variance": float("nan")}))
    assert np.isnan(load_graph(graph_path).info["pca_explained_variance"])


def test_reproduce_rebuilds_its_graph_left_half_replaced(tmp_path: Path):
    plan = ReproduceConfig.smoke_test(tmp_path).plan()
    subset = "facial_components"
    write_prepared(tmp_path, TARGETS, labels=SUBSETS[subset], subset=subset)
    messages: list[str] = []
    _build_graph(plan, tmp_path, subset, "word", messages.append, silent, None)
    path = tmp_path / "graphs" / f"{subset}-word.npz"
    stamp, logged = path.stat().st_mtime_ns, len(messages)
    _build_graph(plan, tmp_path, subset, "word", messages.append, silent, None)
    assert path.stat().st_mtime_ns == stamp and len(messages) == logged  # a sound graph is reused
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "t": 0.9}))  # the previous build's .json
    _build_graph(plan, tmp_path, subset, "word", messages.append, silent, None)
    assert "rebuilding the label graph" in messages[logged] and load_graph(path).info["t"] == 0.4


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "tail_cut":
        path.write_bytes(data[:-20])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flipped_byte":  # inside an uncompressed member: the zip CRC no longer matches
        offset = data.index(b"A_hat.npy") + 200
        path.write_bytes(data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :])
    else:
        path.write_text("labels,A\n")


@pytest.mark.parametrize("how", ["truncated", "tail_cut", "empty", "flipped_byte", "text"])
def test_damaged_graph_file_is_a_schema_error(graph_path: Path, how: str):
    _damage(graph_path, how)
    with pytest.raises(SchemaError, match="toy.npz: not a readable graph .npz"):
        load_graph(graph_path)


def _rewrite_arrays(path: Path, **changes) -> None:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays.update(changes)
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"A_hat": np.full((5, 5), "x")}, "'A_hat' holds <U1 values, expected numbers"),
        ({"embeddings": np.full((5, 3), "1.5")}, "'embeddings' holds <U3 values"),
        ({"A": np.ones((5, 4), np.float32)}, "'A' has shape (5, 4), expected (5, 5)"),
        ({"label_counts": np.ones(4, np.int64)}, "'label_counts' has shape (4,), expected (5)"),
        ({"label_counts": np.full(5, 1.5)}, "'label_counts' holds float64 values, expected integers"),
        ({"cooccurrence": -np.ones((5, 5), np.int64)}, "'cooccurrence' holds negative counts"),
        ({"labels": np.arange(5)}, "'labels' must be a non-empty list of names"),
        ({"embeddings": np.ones(5, np.float32)}, "'embeddings' has shape (5,), expected (5, D)"),
        ({"A_hat": np.diag([1, np.nan, 1, 1, 1]).astype(np.float32)}, "'A_hat' holds NaN or infinite values (first in row 1)"),
        ({"embeddings": np.array([[0, 0, 0]] * 3 + [[0, np.inf, 0]] * 2, np.float32)}, "'embeddings' holds NaN or infinite"),
        ({"info": np.array("[1, 2]")}, "'info' must hold the build record as a JSON object"),
    ],
)
def test_graph_arrays_of_the_wrong_shape_type_or_value_are_refused(graph_path: Path, changes: dict, message: str):
    _rewrite_arrays(graph_path, **changes)
    with pytest.raises(SchemaError) as caught:
        load_graph(graph_path)
    assert caught.value.path == graph_path and message in str(caught.value)


# ---------------------------------------------------------------------------------------------------------
# Word-vector files (glove:PATH)


@pytest.mark.parametrize(
    "content,where,message",
    [
        (b"nose 1 2\nlip nan 4\n", ":2:", "the vector of 'lip' holds NaN or infinite values"),
        (b"nose 1 2\nlip 3 -inf\n", ":2:", "NaN or infinite"),
        (b"nose 1 2\nlip 1e39 4\n", ":2:", "NaN or infinite"),  # beyond float32
        (b"2 2\nnose 1 2\nlip inf 4\n", ":3:", "NaN or infinite"),  # word2vec text, header on line 1
        (b"nose 1 2\nl\xe8vre 3 4\n", ":2:", "not UTF-8 text"),
        (b"nose 1 2\nlip 3\n", ":2:", "1 numbers after 'lip', expected 2"),  # gensim pads it with 3.0
        (b"nose 1 2\nlip 3 4 5\n", ":2:", "3 numbers after 'lip', expected 2"),
        (b"nose 1 2\nlip 3 x\n", ":2:", "not a number"),
        (b"3 2\nnose 1 2\nlip 3 4\n", ":1:", "the header announces 3 vectors, the file holds 2"),
        (b"", ":", "no word vectors in the file"),  # gensim: TypeError
        (b"\n\n", ":", "no word vectors in the file"),
    ],
)
def test_hostile_word_vector_files_name_file_and_line(tmp_path: Path, content: bytes, where: str, message: str):
    path = tmp_path / "vectors.txt"
    path.write_bytes(content)
    with pytest.raises(SchemaError) as caught:
        read_word_vectors_file(path)
    assert str(caught.value).startswith(f"{path}{where} ") and message in str(caught.value)


def test_nan_in_a_binary_word2vec_file_names_the_word(tmp_path: Path):
    path = tmp_path / "vectors.bin"
    path.write_bytes(b"2 2\nnose " + np.array([1, 2], "<f4").tobytes() + b"\nlip " + np.array([np.nan, 2], "<f4").tobytes() + b"\n")
    with pytest.raises(SchemaError, match="vectors.bin: the vector of 'lip' holds NaN"):
        read_word_vectors_file(path)


def test_valid_vectors_keep_their_values_and_first_duplicate(tmp_path: Path):
    path = tmp_path / "vectors.txt"
    path.write_bytes(b"nose 1 2\nnose 5 6\nlip 3.5 -4e-3\n\n")
    vectors = read_word_vectors_file(path)
    assert vectors.index_to_key == ["nose", "lip"]
    np.testing.assert_allclose(vectors.vectors, [[1, 2], [3.5, -4e-3]])


def test_build_graph_refuses_nan_word_vectors_in_one_line(tmp_path: Path):
    prepared = write_prepared(tmp_path, TARGETS)
    glove = tmp_path / "g.txt"
    glove.write_text("a 1 2\nb 1 2\nc nan 2\nd 1 2\ne 1 2\n")
    out = tmp_path / "g.npz"
    result = runner.invoke(app, ["build-graph", "--prepared", str(prepared), "--out", str(out), "--embedding", f"glove:{glove}"])
    assert f"{glove}:3: the vector of 'c' holds NaN" in one_line_error(result).replace("\n", "")
    assert not out.exists() and not out.with_suffix(".json").exists()


# ---------------------------------------------------------------------------------------------------------
# The image cache: our own derived file, rebuilt when it is stale or damaged


@pytest.fixture
def prepared(release, tmp_path):
    prepare(PrepareConfig(root=release, out=tmp_path / "prepared", subsets=("facial_components",)))
    return load_prepared(tmp_path / "prepared" / "facial_components")


def _damage_cache(path: Path, how: str) -> None:
    sidecar = path.with_suffix(".json")
    if how == "sidecar_not_json":
        sidecar.write_text('{"rows": 6,')
    elif how == "sidecar_a_list":
        sidecar.write_text("[6, 8]")
    elif how == "sidecar_not_utf8":
        sidecar.write_bytes(b'{"rows": "\xff"}')
    elif how == "npy_truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif how == "npy_header_only":
        path.write_bytes(path.read_bytes()[:60])
    elif how == "npy_wrong_size":
        np.save(path, np.zeros((6, 4, 4, 3), np.uint8))
    elif how == "npy_wrong_rows":
        np.save(path, np.zeros((5, 8, 8, 3), np.uint8))
    elif how == "npy_wrong_dtype":
        np.save(path, np.zeros((6, 8, 8, 3), np.float32))


@pytest.mark.parametrize(
    "how",
    [
        "sidecar_not_json",
        "sidecar_a_list",
        "sidecar_not_utf8",
        "npy_truncated",
        "npy_header_only",
        "npy_wrong_size",
        "npy_wrong_rows",
        "npy_wrong_dtype",
    ],
)
def test_damaged_cache_is_rebuilt(prepared, how: str):
    table = prepared.read_split("train")
    path = build_image_cache(prepared, "train", 8, table=table)
    _damage_cache(path, how)
    assert build_image_cache(prepared, "train", 8, table=table) == path
    cached = np.load(path, allow_pickle=False)
    assert cached.shape == (6, 8, 8, 3) and cached.dtype == np.uint8
    for row, file_path in enumerate(table.file_paths):
        np.testing.assert_array_equal(cached[row], load_rgb(prepared.image_path(file_path), 8))


def test_cache_that_cannot_be_rebuilt_is_one_error(prepared, monkeypatch: pytest.MonkeyPatch):
    table = prepared.read_split("train")
    path = build_image_cache(prepared, "train", 8, table=table)
    _damage_cache(path, "npy_truncated")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np.lib.format, "open_memmap", disk_full)
    with pytest.raises(MlcdfError, match=f"{path}: cannot write the image cache \\(No space left on device\\)"):
        build_image_cache(prepared, "train", 8, table=table)


# ---------------------------------------------------------------------------------------------------------
# predictions.csv (evaluate --predictions) and metrics.json (report)

HEADER = "file_path,target_a,score_a,target_b,score_b\n"


@pytest.mark.parametrize(
    "body,line,message",
    [
        (b"x.png,1,0.5,0,0.25\ny\xe9.png,1,0.5,0,0.25\n", 3, "not UTF-8 text"),
        (b"x.png,1,0.5,0,0.25\n" + b"y" * 200_000 + b".png,1,0.5,0,0.25\n", 3, "field larger than field limit"),
        (b"x.png,1,0.5,0,0.25\ny.png,1,0.5,0,high\n", 3, "score_b is 'high', not a number"),
        (b"x.png,1,0.5,2,0.25\n", 2, "target columns must be 0 or 1"),
    ],
)
def test_hostile_predictions_csv_names_file_and_line(tmp_path: Path, body: bytes, line: int, message: str):
    path = tmp_path / "p.csv"
    path.write_bytes(HEADER.encode() + body)
    with pytest.raises(SchemaError) as caught:
        read_predictions(path)
    assert (caught.value.path, caught.value.line) == (path, line) and message in str(caught.value)
    result = runner.invoke(app, ["evaluate", "--predictions", str(path), "--out", str(tmp_path / "eval")])
    assert f"p.csv:{line}:" in one_line_error(result).replace("\n", "")
    assert not (tmp_path / "eval").exists()


def test_non_utf8_header_is_line_1(tmp_path: Path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"file_path,target_\xe9,score_\xe9\nx.png,1,0.5\n")
    with pytest.raises(SchemaError, match="p.csv:1: not UTF-8 text"):
        read_predictions(path)


def _metrics(**changes) -> dict:
    document = {name: 50.0 for name in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")}
    return {**document, "labels": ["a", "b"], "num_params": 1.5, **changes}


@pytest.mark.parametrize(
    "content,message",
    [
        (b'{"mAP": 50.0,\n "CP": "\xff"}', "metrics.json:2: not UTF-8 text"),
        (json.dumps(_metrics(mAP=True)).encode(), "'mAP' is True, expected a finite number or null"),
        (json.dumps(_metrics(CF1=float("nan"))).encode(), "'CF1' is nan"),
        (json.dumps(_metrics(OF1=float("inf"))).encode(), "'OF1' is inf"),
        (json.dumps(_metrics(num_params="44.9M")).encode(), "'num_params' is '44.9M'"),
        (json.dumps(_metrics(labels=[1, 2])).encode(), "missing the 'labels' list of names"),
        (json.dumps({k: v for k, v in _metrics().items() if k != "OR"}).encode(), "missing 'OR'"),
    ],
)
def test_hostile_metrics_json_is_one_line_in_report(tmp_path: Path, content: bytes, message: str):
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "metrics.json").write_bytes(content)
    with pytest.raises(SchemaError, match="metrics.json"):
        read_metrics(folder / "metrics.json")
    assert message in one_line_error(runner.invoke(app, ["report", str(folder)])).replace("\n", "")


def test_valid_metrics_json_reads(tmp_path: Path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(_metrics(num_params=None, CF1=None)))
    assert read_metrics(path)["labels"] == ["a", "b"]
