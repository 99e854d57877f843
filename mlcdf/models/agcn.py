"""ML-AGCN: a graph classifier whose adjacency is learned end to end on top of the co-occurrence prior.

Singh et al., "Multi-label image classification using adaptive graph convolutional networks", ICIP 2022.
The publication describes an attention-based and a similarity-based adjacency combined with the static
one but gives no equations; this module fixes them as follows.

Each of the two graph layers ``l`` (input node features ``H``, C x d; output width d') computes::

    Q = H · Wq,  K = H · Wk                       # Wq, Wk: d x d', no bias
    A_att = softmax_rows(Q · Kᵀ / sqrt(d'))        # attention adjacency, rows sum to 1
    S = ReLU(cos(h_i, h_j))                        # cosine similarity of the layer's input node features
    A_sim = S / rowsum(S)                          # similarity adjacency, rows sum to 1 (S_ii = 1)
    A_l = Â + α_l · A_att + β_l · A_sim            # Â: static co-occurrence prior from build-graph
    H' = A_l · H · W_l                             # W_l: d x d', no bias

with learnable scalars ``α_l``, ``β_l`` initialised to 0: training starts from IML-GCN (prior only) and
learns how much of each adaptive adjacency to mix in; a start at 1 would roughly triple ``Â``'s scale. As in
ML-GCN, ``Z = layer_2(LeakyReLU_0.2(layer_1(E)))`` (C x 2048) and ``logits = globalmaxpool(F) · Zᵀ``.

Parameters: each layer holds three d x d' matrices and two scalars, so the head has
``3 · (D·1024 + 1024·2048) + 4``; with D = 300 word embeddings that is 7.21 M, and with TResNet-M 36.55 M
in all (the paper: 36.6 M). Keep the scalar gates out of weight decay, which would pull them back to 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlcdf.models._registry import register_model
from mlcdf.models.gcn import GraphClassifier, GraphConvolution, create_graph_classifier

__all__ = ["AdaptiveGraphConvolution"]  # the registry appends the entry functions

# Guards the row normalisation of the similarity adjacency when a node's features are all zero.
_EPS = 1e-6


class AdaptiveGraphConvolution(GraphConvolution):
    """A graph convolution over ``Â + α·A_att + β·A_sim`` (see the module docstring for the formulas).

    Args:
        in_features: width of the input node features.
        out_features: width of the output node features, also the query/key width.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.query = nn.Linear(in_features, out_features, bias=False)
        self.key = nn.Linear(in_features, out_features, bias=False)
        self.attention_gate = nn.Parameter(torch.zeros(()))
        self.similarity_gate = nn.Parameter(torch.zeros(()))

    def attention_adjacency(self, h: torch.Tensor) -> torch.Tensor:
        """C x C softmax of scaled query-key products of the node features."""
        scores = self.query(h) @ self.key(h).transpose(0, 1)
        return torch.softmax(scores / math.sqrt(self.out_features), dim=-1)

    @staticmethod
    def similarity_adjacency(h: torch.Tensor) -> torch.Tensor:
        """C x C row-normalised non-negative cosine similarity of the node features."""
        unit = F.normalize(h, dim=-1)
        similarity = torch.relu(unit @ unit.transpose(0, 1))
        return similarity / similarity.sum(dim=-1, keepdim=True).clamp_min(_EPS)

    def adjacency(self, h: torch.Tensor, a_hat: torch.Tensor) -> torch.Tensor:
        """The layer's C x C adjacency ``Â + α·A_att + β·A_sim`` for node features ``h``."""
        return a_hat + self.attention_gate * self.attention_adjacency(h) + self.similarity_gate * self.similarity_adjacency(h)

    def forward(self, h: torch.Tensor, a_hat: torch.Tensor) -> torch.Tensor:
        return super().forward(h, self.adjacency(h, a_hat))


@register_model(requires_graph=True, paper_params_m=36.6)
def ml_agcn(num_labels: int, *, graph: Any, backbone: str = "tresnet_m", **kwargs) -> GraphClassifier:
    """ML-AGCN: TResNet-M, global max pooling, a 2-layer GCN with learned attention + similarity adjacency."""
    return create_graph_classifier(backbone, num_labels, graph, layer=AdaptiveGraphConvolution, **kwargs)
