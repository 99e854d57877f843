"""The graph file contract (DESIGN.md §3): ``GRAPH.npz`` holds the arrays, ``GRAPH.json`` the parameters.

The ``.npz`` is self-contained: it also holds the parameters (array ``info``, the JSON text), and the
``.json`` is a readable copy written after it. Reading checks that the copy (when present) matches, so a
``.npz`` and a ``.json`` from different builds are never taken as one graph.

No pickle: arrays of strings are stored as fixed-width unicode and the file is read with
``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlcdf.errors import MissingArtifactError, SchemaError, first_line
from mlcdf.io import atomic_path, check_file_replaceable, json_object_with, read_json_object, write_json

ARRAYS = ("labels", "label_counts", "cooccurrence", "A", "A_hat", "embeddings")

#: The build record (the ``.json``'s content) inside the ``.npz``, so that the two cannot disagree unseen.
INFO_ARRAY = "info"


@dataclass(frozen=True)
class LabelGraph:
    """A label graph over C labels.

    Attributes:
        labels: label names, in vocabulary order.
        label_counts: (C,) training images carrying each label.
        cooccurrence: (C, C) training images carrying both labels; zero diagonal.
        A: (C, C) re-weighted binary adjacency with the identity added (ML-GCN's ``gen_A``).
        A_hat: (C, C) normalised adjacency fed to the GCN (ML-GCN's ``gen_adj``).
        embeddings: (C, D) node features.
        info: the parameters recorded in the ``.json`` beside the ``.npz``.
    """

    labels: tuple[str, ...]
    label_counts: np.ndarray
    cooccurrence: np.ndarray
    A: np.ndarray
    A_hat: np.ndarray
    embeddings: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])


def json_path_for(npz_path: str | Path) -> Path:
    return Path(npz_path).with_suffix(".json")


#: Keys every build record has (``mlcdf.graph.build``): how a ``.json`` beside a graph is known as one.
_is_build_record = json_object_with({"subset", "labels", "t", "p", "embedding"})


def check_graph_replaceable(path: str | Path) -> None:
    """Raise unless ``path`` and its ``.json`` are absent or an earlier graph (see :func:`check_file_replaceable`)."""
    check_file_replaceable(path, command="mlcdf build-graph", is_own=_is_graph_archive)
    check_file_replaceable(json_path_for(path), command="mlcdf build-graph", is_own=_is_build_record)


def _is_graph_archive(path: Path) -> bool:
    """An ``.npz`` (a zip of ``.npy`` files) holding the contract's arrays; only its member names are read."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {f"{name}.npy" for name in ARRAYS} <= set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def save_graph(path: str | Path, graph: LabelGraph) -> None:
    """Write ``path`` (``.npz``, with ``graph.info`` inside) atomically, then its ``.json`` copy of ``info``.

    The ``.npz`` is the unit: a build killed between the two renames leaves a complete ``.npz`` beside
    the previous ``.json``, which :func:`load_graph` then reports as not matching.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        # One dict, so the info array keeps its INFO_ARRAY name; typed Any, as savez's **arrays share the
        # call with its bool allow_pickle.
        arrays: dict[str, Any] = {
            "labels": np.array(graph.labels, dtype=str),
            "label_counts": np.asarray(graph.label_counts, dtype=np.int64),
            "cooccurrence": np.asarray(graph.cooccurrence, dtype=np.int64),
            "A": np.asarray(graph.A, dtype=np.float32),
            "A_hat": np.asarray(graph.A_hat, dtype=np.float32),
            "embeddings": np.asarray(graph.embeddings, dtype=np.float32),
            INFO_ARRAY: np.array(json.dumps(graph.info)),
        }
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    write_json(json_path_for(path), graph.info)


def load_graph(path: str | os.PathLike[str]) -> LabelGraph:
    """Read a graph written by :func:`save_graph` (or ``mlcdf build-graph``) and check its arrays.

    Raises:
        MissingArtifactError: there is no such file.
        SchemaError: the file is not a readable ``.npz``, an array is missing or has the wrong shape or
            type, a number is NaN or infinite, or the ``.json`` beside it describes another build.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(path, "build it with 'mlcdf build-graph'")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in ARRAYS if name not in npz.files]
            if missing:
                raise SchemaError(path, f"missing arrays {missing}")
            arrays = {name: npz[name] for name in (*ARRAYS, INFO_ARRAY) if name in npz.files}
    # A truncated or damaged archive fails in zipfile (BadZipFile, EOFError, zlib.error) or in numpy's
    # header parser (ValueError); an unreadable file in open (OSError).
    except (zipfile.BadZipFile, EOFError, zlib.error, ValueError, OSError) as error:
        raise SchemaError(path, f"not a readable graph .npz ({first_line(error)})") from None
    labels = arrays["labels"]
    if labels.ndim != 1 or labels.dtype.kind != "U" or len(labels) == 0:
        raise SchemaError(path, f"array 'labels' must be a non-empty list of names, got {labels.dtype} of shape {labels.shape}")
    c = len(labels)
    _check_numbers(path, "label_counts", arrays["label_counts"], (c,), "iu")
    _check_numbers(path, "cooccurrence", arrays["cooccurrence"], (c, c), "iu")
    _check_numbers(path, "A", arrays["A"], (c, c), "iuf")
    _check_numbers(path, "A_hat", arrays["A_hat"], (c, c), "iuf")
    _check_numbers(path, "embeddings", arrays["embeddings"], (c, None), "iuf")
    return LabelGraph(
        labels=tuple(str(name) for name in labels),
        label_counts=arrays["label_counts"],
        cooccurrence=arrays["cooccurrence"],
        A=arrays["A"].astype(np.float32),
        A_hat=arrays["A_hat"].astype(np.float32),
        embeddings=arrays["embeddings"].astype(np.float32),
        info=_graph_info(path, arrays.get(INFO_ARRAY)),
    )


_KIND_NAMES = {"iu": "integers", "iuf": "numbers"}


def _check_numbers(path: Path, name: str, array: np.ndarray, shape: tuple[int | None, ...], kinds: str) -> None:
    """``array`` has ``shape`` (None: any positive size), a dtype of ``kinds`` and only finite values."""
    expected = "(" + ", ".join("D" if size is None else str(size) for size in shape) + ")"
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)) or 0 in array.shape:
        raise SchemaError(path, f"array {name!r} has shape {array.shape}, expected {expected}")
    if array.dtype.kind not in kinds:
        raise SchemaError(path, f"array {name!r} holds {array.dtype} values, expected {_KIND_NAMES[kinds]}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0][0])
        raise SchemaError(path, f"array {name!r} holds NaN or infinite values (first in row {row}); rebuild the graph")
    if kinds == "iu" and (array < 0).any():
        raise SchemaError(path, f"array {name!r} holds negative counts")


def _graph_info(path: Path, embedded: np.ndarray | None) -> dict:
    """The build record inside the ``.npz``, checked against the ``.json`` copy beside it.

    A graph written by an older mlcdf has no record inside; its ``.json`` (if any) is taken as it is.
    """
    sidecar = json_path_for(path)
    beside = read_json_object(sidecar) if sidecar.is_file() else None
    if embedded is None:
        return beside or {}
    try:
        info = json.loads(str(embedded)) if embedded.ndim == 0 and embedded.dtype.kind == "U" else None
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict):
        raise SchemaError(path, f"array {INFO_ARRAY!r} must hold the build record as a JSON object")
    if beside is not None and beside != info:
        raise SchemaError(
            sidecar,
            f"does not describe {path.name} (left by an interrupted or another build?); delete it or rerun "
            "'mlcdf build-graph' (the .npz holds the same record)",
        )
    return info
