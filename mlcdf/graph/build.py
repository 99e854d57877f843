"""The build-graph stage: a prepared subset in, ``GRAPH.npz`` + ``GRAPH.json`` out (DESIGN.md §3).

The adjacency comes from label co-occurrence on the train split (:mod:`mlcdf.graph.cooccurrence`); the
node features are word embeddings of the label names (:mod:`mlcdf.graph.embeddings`) or image embeddings
(:mod:`mlcdf.graph.image_embeddings`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mlcdf import __version__
from mlcdf.data.prepared import PreparedSubset, SplitTable, load_prepared
from mlcdf.errors import MlcdfError
from mlcdf.graph.cooccurrence import Adjacency, build_adjacency
from mlcdf.graph.embeddings import LabelEmbeddings, parse_embedding_source, word_embeddings
from mlcdf.label_graph import LabelGraph, check_graph_replaceable, json_path_for, save_graph
from mlcdf.labels import count_cooccurrence
from mlcdf.progress import ProgressFn, silent

#: IML-GCN's backbone (DESIGN.md §4), for image embeddings.
DEFAULT_BACKBONE = "tresnet_m"

#: The split the graph is counted on; the paper (like ML-GCN) never looks at the test labels.
GRAPH_SPLIT = "train"


@dataclass(frozen=True)
class GraphConfig:
    """Everything ``mlcdf build-graph`` needs; recorded under ``config`` in the ``.json``.

    Attributes:
        prepared: prepared subset folder (``PREPARED/<subset>``).
        out: the ``.npz`` to write; the ``.json`` goes beside it.
        embedding: ``glove`` (embedded GloVe 6B 50-d subset), ``glove:PATH``, ``gensim:NAME`` or ``image``.
        t: keep the edge i -> j where P(j | i) >= t (default 0.4, ML-GCN's).
        p: weight shared by a node's neighbours against 1 for itself (default 0.25, ML-GCN's code).
        label_phrases: JSON file ``{"label": "phrase"}`` overriding the default phrases (word embeddings).
        backbone: timm model for image embeddings (default ``tresnet_m``, IML-GCN's).
        weights: local weights file for ``backbone``.
        pretrained: load timm's default pretrained weights for ``backbone`` (cache first).
        from_run: use the trained model of this run folder instead of ``backbone``.
        dim: PCA dimension of image embeddings.
        image_size: input size for image embeddings (default: the backbone's or the run's).
        batch_size: images per forward pass.
        workers: DataLoader worker processes.
        cache: read images through the prepared subset's packed image cache.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        seed: random initialisation of a backbone without weights, and the PCA solver.
    """

    prepared: Path
    out: Path
    embedding: str = "glove"
    t: float = 0.4
    p: float = 0.25
    label_phrases: Path | None = None
    backbone: str = DEFAULT_BACKBONE
    weights: Path | None = None
    pretrained: bool = False
    from_run: Path | None = None
    dim: int = 128
    image_size: int | None = None
    batch_size: int = 64
    workers: int = 0
    cache: bool = False
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            source = parse_embedding_source(self.embedding)
        except ValueError as error:
            raise MlcdfError(str(error)) from None
        if Path(self.out).suffix != ".npz":
            raise MlcdfError(f"--out {self.out}: the graph file must end in .npz (its .json goes beside it)")
        if not 0.0 < self.t <= 1.0:
            raise MlcdfError(f"--t {self.t}: must be in (0, 1]")
        if not 0.0 <= self.p <= 1.0:
            raise MlcdfError(f"--p {self.p}: must be in [0, 1]")
        if source.is_word and self.from_run is not None:
            raise MlcdfError("--from-run only applies to --embedding image")
        if not source.is_word and self.label_phrases is not None:
            raise MlcdfError("--label-phrases only applies to word embeddings (glove, glove:PATH, gensim:NAME)")
        if self.from_run is not None and (self.weights is not None or self.pretrained):
            raise MlcdfError("--from-run uses the run's own weights; drop --weights/--pretrained")
        if self.weights is not None and self.pretrained:
            raise MlcdfError("give either --weights PATH or --pretrained, not both")
        if self.dim < 1 or self.batch_size < 1 or self.workers < 0:
            raise MlcdfError("--dim and --batch-size must be at least 1, --workers at least 0")

    def to_dict(self) -> dict:
        """JSON-ready values (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class GraphResult:
    """What :func:`build_graph` wrote, with the intermediate matrices for the summary.

    Attributes:
        graph: the graph as saved.
        adjacency: P(j | i), the kept edges, ``A`` and ``A_hat``.
        path: the ``.npz`` written (the ``.json`` is beside it).
        warnings: things to tell the user (missing words, random backbone, labels without images).
    """

    graph: LabelGraph
    adjacency: Adjacency
    path: Path
    warnings: tuple[str, ...]

    @property
    def json_path(self) -> Path:
        return json_path_for(self.path)

    @property
    def zero_count_labels(self) -> list[str]:
        """Labels no training image carries (isolated nodes)."""
        return list(self.graph.info["zero_count_labels"])


def build_graph(config: GraphConfig, *, progress: ProgressFn = silent) -> GraphResult:
    """Count co-occurrences on the train split, build ``A``/``A_hat`` and the node embeddings, and save.

    The graph files appear only when every step succeeds (``cache`` may leave an image cache behind).

    Raises:
        MlcdfError: a missing or malformed input, an unusable embedding source, a label without any
            known word, or an output name taken by a file that is not an earlier graph.
    """
    check_graph_replaceable(config.out)
    prepared = load_prepared(config.prepared)
    table = prepared.read_split(GRAPH_SPLIT)
    if len(table) == 0:
        raise MlcdfError(f"{prepared.split_path(GRAPH_SPLIT)}: no images to count labels on")
    label_counts, cooccurrence = count_cooccurrence(table.targets)
    adjacency = build_adjacency(cooccurrence, label_counts, t=config.t, p=config.p)
    embeddings = _node_embeddings(config, prepared, table, progress)
    zero_count = [label for label, count in zip(prepared.labels, label_counts) if count == 0]
    warnings = list(embeddings.warnings)
    if zero_count:
        warnings.append(f"no training image carries {', '.join(zero_count)}: isolated node(s), P(j | i) set to 0 instead of 0/0")
    info = {
        "mlcdf_version": __version__,
        "subset": prepared.subset,
        "prepared": str(prepared.path),
        "split": GRAPH_SPLIT,
        "num_images": len(table),
        "labels": list(prepared.labels),
        "t": config.t,
        "p": config.p,
        "num_edges": adjacency.num_edges,
        "zero_count_labels": zero_count,
        "embedding": embeddings.info,
        "config": config.to_dict(),
    }
    graph = LabelGraph(
        labels=prepared.labels,
        label_counts=label_counts,
        cooccurrence=cooccurrence,
        A=adjacency.A,
        A_hat=adjacency.A_hat,
        embeddings=embeddings.vectors,
        info=info,
    )
    save_graph(config.out, graph)
    return GraphResult(graph=graph, adjacency=adjacency, path=Path(config.out), warnings=tuple(warnings))


def _node_embeddings(config: GraphConfig, prepared: PreparedSubset, table: SplitTable, progress: ProgressFn) -> LabelEmbeddings:
    source = parse_embedding_source(config.embedding)
    if source.is_word:
        return word_embeddings(prepared.labels, source, config.label_phrases)
    # Imported here: torch, timm and scikit-learn are only needed for image embeddings.
    from mlcdf.devices import resolve_device
    from mlcdf.graph import image_embeddings as images

    device = resolve_device(config.device)
    if config.from_run is not None:
        encoder = images.run_encoder(config.from_run, device=device, image_size=config.image_size)
    else:
        encoder = images.timm_encoder(
            config.backbone,
            weights=config.weights,
            pretrained=config.pretrained,
            image_size=config.image_size,
            seed=config.seed,
        )
    return images.image_embeddings(
        prepared,
        table,
        encoder,
        dim=config.dim,
        device=device,
        batch_size=config.batch_size,
        workers=config.workers,
        cache=config.cache,
        seed=config.seed,
        progress=progress,
    )
