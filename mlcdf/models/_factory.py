"""``create_model``: one factory over the registry, plus the helpers to count, describe and rebuild models."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlcdf.errors import MlcdfError, first_line
from mlcdf.label_graph import LabelGraph, load_graph
from mlcdf.models._backbone import BackboneClassifier
from mlcdf.models._registry import model_entrypoint, model_info, split_model_name
from mlcdf.models.direct import create_direct
from mlcdf.models.gcn import GraphTensors, graph_from_state_dict

__all__ = ["PAPER_EMBEDDING_DIM", "count_parameters", "create_model", "meta_model", "model_config", "rebuild_model"]

PAPER_EMBEDDING_DIM = 300
"""Node-feature width the paper counts graph models with (300-d GloVe word vectors)."""


def _resolve_graph(graph: LabelGraph | GraphTensors | str | os.PathLike[str]) -> LabelGraph | GraphTensors:
    if isinstance(graph, (str, os.PathLike)):
        return load_graph(graph)
    if not (hasattr(graph, "A_hat") and hasattr(graph, "embeddings")):
        raise TypeError(f"graph must be a LabelGraph, GraphTensors or a path to a .npz, got {type(graph).__name__}")
    return graph


def create_model(
    name: str,
    num_labels: int,
    *,
    graph: LabelGraph | GraphTensors | str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> BackboneClassifier:
    """Build a registered model (or ``timm:<architecture>``) for ``num_labels`` labels.

    Steps: drop ``None`` keyword arguments; look the name up; load the label graph when the model needs
    one; call the entry function (random weights, nothing read or downloaded); then load backbone weights
    if asked, from a local file or timm's default pretrained tag. The head is always freshly initialised.

    Tip:
        ``mlcdf models`` lists the names with their parameter counts. A model's ``input_mean`` and
        ``input_std`` say how to normalise its input images.

    Args:
        name: a name from :func:`list_models` (``resnet50``, ``ml_gcn``, ...) or ``timm:<architecture>``
            (with an optional pretrained tag: ``timm:convnext_tiny.fb_in22k``).
        num_labels: number of labels (outputs).
        graph: the label graph, for graph models only: a :class:`~mlcdf.label_graph.LabelGraph`, the path of a
            ``.npz`` from ``mlcdf build-graph``, or :class:`GraphTensors` (``A_hat``, ``embeddings``).
        pretrained: load timm's default pretrained backbone weights; offline without a cached copy this
            fails at once (False).
        weights: a local ``.pth``/``.safetensors`` file of backbone weights, loaded strictly except for
            classifier tensors (None).

    Keyword Args:
        backbone (str): graph models only: the timm architecture under the graph head.
        global_pool (str): graph models: ``"max"`` (default), ``"avg"``, ``"avgmax"``, ``"catavgmax"``;
            direct models: passed to timm.
        hidden_dim (int): graph models: width of the hidden graph layer (1024).
        **kwargs: anything else goes to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ...).

    Returns:
        The model, with ``model_name``, ``model_kwargs`` (keep them JSON values so that checkpoints can
        store them), ``input_mean``, ``input_std``, ``num_labels`` and ``weights_report`` set.

    Raises:
        UnknownModelError: the name is neither registered nor a timm architecture.
        MlcdfError: a graph model without a graph (or a direct model with one), a graph whose label count
            differs from ``num_labels``, both ``pretrained`` and ``weights``, or weights that cannot be
            loaded.

    Examples:
        >>> model = create_model("resnet50", 5)
        >>> model.input_mean
        (0.485, 0.456, 0.406)
        >>> model = create_model("ml_gcn", 5, graph="graphs/facial_components.npz")  # doctest: +SKIP
        >>> model = create_model("timm:efficientnet_b0", 5, pretrained=True)  # doctest: +SKIP
    """
    # None means "not given" (CLI options default to None); it must not override a model's own default.
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    info = model_info(name)
    entry_kwargs = dict(kwargs)
    if info.requires_graph:
        if graph is None:
            raise MlcdfError(f"model {name!r} needs a label graph: build one with 'mlcdf build-graph' and pass its .npz (--graph)")
        entry_kwargs["graph"] = _resolve_graph(graph)
    elif graph is not None:
        raise MlcdfError(f"model {name!r} does not use a label graph; leave out the graph")
    source, arch = split_model_name(name)
    entry = partial(create_direct, arch) if source == "timm" else model_entrypoint(name)
    try:
        model = entry(num_labels, **entry_kwargs)
    except TypeError as error:
        # An option the model (or its timm backbone) does not take is the caller's mistake, not a bug.
        if "unexpected keyword argument" not in str(error):
            raise
        hint = "; --backbone is for graph models, use --model timm:ARCH instead" if "backbone" in kwargs else ""
        raise MlcdfError(f"model {name!r} does not take that option ({error}){hint}") from error
    model.model_name = name
    model.model_kwargs = kwargs
    model.load_backbone(pretrained=pretrained, weights=weights)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (graph buffers and BatchNorm statistics are not parameters)."""
    return sum(parameter.numel() for parameter in model.parameters())


def meta_model(name: str, num_labels: int = 5, *, embedding_dim: int = PAPER_EMBEDDING_DIM, **kwargs: Any) -> BackboneClassifier:
    """Build a model on the ``meta`` device: shapes only, no memory, no weights; for counting and listing.

    Graph models get a placeholder graph of ``num_labels`` nodes with ``embedding_dim``-d features (300
    by default, the paper's GloVe vectors).
    """
    with torch.device("meta"):
        graph = None
        if model_info(name).requires_graph:
            graph = GraphTensors(torch.zeros(num_labels, num_labels), torch.zeros(num_labels, embedding_dim))
        return create_model(name, num_labels, graph=graph, **kwargs)


def model_config(model: BackboneClassifier) -> dict[str, Any]:
    """What a checkpoint must store, besides the state dict, to rebuild ``model`` with :func:`rebuild_model`.

    Returns:
        ``{"name": ..., "num_labels": ..., "kwargs": {...}}``, JSON-serialisable.
    """
    return {"name": model.model_name, "num_labels": model.num_labels, "kwargs": dict(model.model_kwargs)}


def rebuild_model(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> BackboneClassifier:
    """Rebuild a model from :func:`model_config`'s dict and its state dict, with no graph file and no download.

    A graph model's state dict carries the graph (the buffers ``head.A_hat`` and ``head.embeddings``), so
    the checkpoint alone is enough. The state dict is loaded strictly.

    Raises:
        MlcdfError: the state dict does not fit the model the config describes.
    """
    name = config["name"]
    graph = graph_from_state_dict(state_dict) if model_info(name).requires_graph else None
    model = create_model(name, config["num_labels"], graph=graph, **config.get("kwargs", {}))
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise MlcdfError(f"the checkpoint's weights do not fit model {name!r}: {first_line(error)}") from None
    return model
