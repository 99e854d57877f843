"""The graph file contract (DESIGN.md §3): ``GRAPH.npz`` holds the arrays, ``GRAPH.json`` the parameters.

No pickle: arrays of strings are stored as fixed-width unicode and the file is read with
``allow_pickle=False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlcdf.errors import MissingArtifactError, SchemaError
from mlcdf.io import atomic_path, read_json_object, write_json

ARRAYS = ("labels", "label_counts", "cooccurrence", "A", "A_hat", "embeddings")


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


def save_graph(path: str | Path, graph: LabelGraph) -> None:
    """Write ``path`` (``.npz``) and its ``.json`` sidecar atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                labels=np.array(graph.labels, dtype=str),
                label_counts=np.asarray(graph.label_counts, dtype=np.int64),
                cooccurrence=np.asarray(graph.cooccurrence, dtype=np.int64),
                A=np.asarray(graph.A, dtype=np.float32),
                A_hat=np.asarray(graph.A_hat, dtype=np.float32),
                embeddings=np.asarray(graph.embeddings, dtype=np.float32),
            )
    write_json(json_path_for(path), graph.info)


def load_graph(path: str | Path) -> LabelGraph:
    """Read a graph written by :func:`save_graph` (or ``mlcdf build-graph``) and check its shapes."""
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(path, "build it with 'mlcdf build-graph'")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in ARRAYS if name not in npz.files]
            if missing:
                raise SchemaError(path, f"missing arrays {missing}")
            arrays = {name: npz[name] for name in ARRAYS}
    except (ValueError, OSError) as error:
        raise SchemaError(path, f"not a readable graph .npz ({error})") from None
    c = len(arrays["labels"])
    expected = {"label_counts": (c,), "cooccurrence": (c, c), "A": (c, c), "A_hat": (c, c)}
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise SchemaError(path, f"array {name!r} has shape {arrays[name].shape}, expected {shape}")
    if arrays["embeddings"].ndim != 2 or arrays["embeddings"].shape[0] != c:
        raise SchemaError(path, f"array 'embeddings' has shape {arrays['embeddings'].shape}, expected ({c}, D)")
    sidecar = json_path_for(path)
    info = read_json_object(sidecar) if sidecar.is_file() else {}
    return LabelGraph(
        labels=tuple(str(name) for name in arrays["labels"]),
        label_counts=arrays["label_counts"],
        cooccurrence=arrays["cooccurrence"],
        A=arrays["A"],
        A_hat=arrays["A_hat"],
        embeddings=arrays["embeddings"].astype(np.float32),
        info=info,
    )
