"""Graph-based classifiers: a GCN over the label graph turns node features into one classifier per label.

ML-GCN: Chen, Wei, Wang, Guo, "Multi-Label Image Recognition with Graph Convolutional Networks", CVPR 2019,
https://arxiv.org/abs/1904.03582 (reference code: github.com/megvii-research/ML-GCN).
IML-GCN: Singh et al., 2022: the same head on TResNet-M, with word or image node embeddings.

With ``F`` the backbone's feature map, ``E`` (C x D) the node features and ``Â`` (C x C) the normalised
co-occurrence adjacency from ``mlcdf build-graph``::

    f = globalmaxpool(F)                           # B x 2048, any input size
    Z = Â · LeakyReLU_0.2(Â · E · W1) · W2         # C x 2048; W1: D x 1024, W2: 1024 x 2048, no bias
    logits = f · Zᵀ                                # B x C

The reference pools with a fixed 14 x 14 max pool, which only fits 448-pixel inputs; an adaptive global max
pool gives the same result there and works at any size. ``Â`` and ``E`` are registered buffers, so a
checkpoint's state dict carries the graph and :func:`graph_from_state_dict` rebuilds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple, TypedDict

import torch
from timm.layers.adaptive_avgmax_pool import adaptive_pool_feat_mult
from torch import nn

from mlcdf.errors import MlcdfError
from mlcdf.models._backbone import BackboneClassifier, create_backbone, timm_api
from mlcdf.models._registry import register_model

__all__ = [  # the registry appends the entry functions
    "GraphClassifier",
    "GraphConvolution",
    "GraphHead",
    "GraphTensors",
    "create_graph_classifier",
    "graph_from_state_dict",
]


class GraphTensors(NamedTuple):
    """The two arrays a graph model needs; a :class:`~mlcdf.label_graph.LabelGraph` has both as well.

    Attributes:
        A_hat: C x C normalised adjacency.
        embeddings: C x D node features.
    """

    A_hat: Any
    embeddings: Any


def graph_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> GraphTensors:
    """The graph buffers of a :class:`GraphClassifier` state dict (``head.A_hat``, ``head.embeddings``)."""
    try:
        return GraphTensors(state_dict["head.A_hat"], state_dict["head.embeddings"])
    except KeyError as error:
        raise MlcdfError(f"the state dict has no label-graph buffer {error}; is it from a graph model?") from None


class GraphConvolution(nn.Module):
    """One graph convolution without bias, ``H' = Â · H · W`` (Kipf & Welling; ML-GCN's layer).

    Args:
        in_features: width of the input node features.
        out_features: width of the output node features.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # ML-GCN's initialisation: uniform in +-1/sqrt(out_features).
        bound = 1.0 / math.sqrt(self.out_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, h: torch.Tensor, a_hat: torch.Tensor) -> torch.Tensor:
        """C x in_features node features and the C x C adjacency -> C x out_features."""
        return a_hat @ (h @ self.weight)


class _HeadOptions(TypedDict):
    """:class:`GraphHead`'s keyword arguments, kept to rebuild the head (:meth:`GraphClassifier.reset_classifier`)."""

    hidden_dim: int
    negative_slope: float
    layer: type[GraphConvolution]


class GraphHead(nn.Module):
    """Two graph layers map the node features to one classifier vector per label; logits are dot products.

    Args:
        a_hat: C x C normalised adjacency (kept as the buffer ``A_hat``).
        embeddings: C x D node features (kept as the buffer ``embeddings``).
        num_features: width of the pooled image features, i.e. of each label's classifier.
        hidden_dim: width of the hidden node features (1024).
        negative_slope: slope of the LeakyReLU between the layers (0.2).
        layer: the graph layer class, called as ``layer(in_features, out_features)`` (GraphConvolution).
    """

    A_hat: torch.Tensor  # buffers, registered in __init__
    embeddings: torch.Tensor

    def __init__(
        self,
        a_hat: Any,
        embeddings: Any,
        num_features: int,
        *,
        hidden_dim: int = 1024,
        negative_slope: float = 0.2,
        layer: type[GraphConvolution] = GraphConvolution,
    ) -> None:
        super().__init__()
        self.register_buffer("A_hat", torch.as_tensor(a_hat, dtype=torch.float32).clone())
        self.register_buffer("embeddings", torch.as_tensor(embeddings, dtype=torch.float32).clone())
        self.gc1 = layer(self.embeddings.shape[1], hidden_dim)
        self.act = nn.LeakyReLU(negative_slope)
        self.gc2 = layer(hidden_dim, num_features)

    def label_classifiers(self) -> torch.Tensor:
        """C x num_features: one classifier vector per label, computed from the graph."""
        return self.gc2(self.act(self.gc1(self.embeddings, self.A_hat)), self.A_hat)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """B x num_features pooled image features -> B x C logits."""
        return pooled @ self.label_classifiers().transpose(0, 1)


def _check_graph(graph: Any, num_labels: int) -> None:
    a_hat, embeddings = graph.A_hat, graph.embeddings
    size = a_hat.shape[0]
    names = f" ({', '.join(graph.labels)})" if getattr(graph, "labels", None) else ""
    if tuple(a_hat.shape) != (size, size) or len(embeddings.shape) != 2 or embeddings.shape[0] != size:
        raise MlcdfError(
            f"a label graph needs a C x C adjacency and C x D embeddings, got {tuple(a_hat.shape)} and {tuple(embeddings.shape)}"
        )
    if size != num_labels:
        raise MlcdfError(
            f"the label graph has {size} labels{names} but the model has {num_labels}; "
            "build the graph on the same subset ('mlcdf build-graph')"
        )


class GraphClassifier(BackboneClassifier):
    """A timm backbone, global pooling of its feature map, and a :class:`GraphHead` as the classifier.

    The pooling is the backbone's own head set to ``global_pool`` (timm's ``reset_classifier(0, pool)``),
    so whatever that head holds besides the classifier is used, not left without gradients: ConvNeXt's
    norm after pooling, for instance (DDP fails on parameters that get no gradient). For ResNet and
    TResNet it is plain pooling.

    Args:
        backbone: a timm backbone producing a B x C x H x W feature map.
        num_labels: number of labels; must equal the graph's.
        graph: anything with ``A_hat`` (C x C) and ``embeddings`` (C x D): a
            :class:`~mlcdf.label_graph.LabelGraph` or :class:`GraphTensors`.
        global_pool: timm pooling type, ``"max"``, ``"avg"``, ``"avgmax"`` or ``"catavgmax"`` ("max").
        hidden_dim: width of the hidden graph layer (1024).
        negative_slope: LeakyReLU slope between the graph layers (0.2).
        layer: the graph layer class (GraphConvolution).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_labels: int,
        graph: Any,
        *,
        global_pool: str = "max",
        hidden_dim: int = 1024,
        negative_slope: float = 0.2,
        layer: type[GraphConvolution] = GraphConvolution,
    ) -> None:
        super().__init__(backbone, num_labels)
        _check_graph(graph, num_labels)
        timm_api(backbone).reset_classifier(0, global_pool)
        # "catavgmax" concatenates two poolings, so the label classifiers must be twice as wide.
        width = int(getattr(backbone, "head_hidden_size", None) or self.num_features)
        self.pooled_features = width * adaptive_pool_feat_mult(global_pool)
        self._head_args: _HeadOptions = {"hidden_dim": hidden_dim, "negative_slope": negative_slope, "layer": layer}
        self.head = GraphHead(graph.A_hat, graph.embeddings, self.pooled_features, **self._head_args)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = timm_api(self.backbone).forward_head(x, pre_logits=True)
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_labels: int, graph: Any = None) -> None:
        """A freshly initialised graph head, over ``graph`` or else the current graph buffers.

        Raises:
            MlcdfError: ``num_labels`` differs from the graph's label count (a graph model's labels are
                its graph's nodes).
        """
        graph = graph if graph is not None else GraphTensors(self.head.A_hat, self.head.embeddings)
        _check_graph(graph, num_labels)
        self.num_labels = num_labels
        self.head = GraphHead(graph.A_hat, graph.embeddings, self.pooled_features, **self._head_args).to(self.head.A_hat.device)


def create_graph_classifier(
    arch: str,
    num_labels: int,
    graph: Any,
    *,
    global_pool: str = "max",
    hidden_dim: int = 1024,
    negative_slope: float = 0.2,
    layer: type[GraphConvolution] = GraphConvolution,
    **kwargs,
) -> GraphClassifier:
    """A :class:`GraphClassifier` over the timm architecture ``arch``; ``kwargs`` go to ``timm.create_model``."""
    return GraphClassifier(
        create_backbone(arch, **kwargs),
        num_labels,
        graph,
        global_pool=global_pool,
        hidden_dim=hidden_dim,
        negative_slope=negative_slope,
        layer=layer,
    )


@register_model(requires_graph=True, paper_params_m=44.9)
def ml_gcn(num_labels: int, *, graph: Any, backbone: str = "resnet101", **kwargs) -> GraphClassifier:
    """ML-GCN: ResNet-101, global max pooling, a 2-layer GCN over the label graph (Chen et al., CVPR 2019)."""
    return create_graph_classifier(backbone, num_labels, graph, **kwargs)


@register_model(requires_graph=True, paper_params_m=31.7)
def iml_gcn(num_labels: int, *, graph: Any, backbone: str = "tresnet_m", **kwargs) -> GraphClassifier:
    """IML-GCN: TResNet-M, global max pooling, the ML-GCN head; word or image node embeddings."""
    return create_graph_classifier(backbone, num_labels, graph, **kwargs)
