"""Label co-occurrence and the adjacency matrices of ML-GCN.

Follows the reference code of ML-GCN (Chen et al., CVPR 2019, github.com/Megvii-Nanjing/ML-GCN,
``util.py``: ``gen_A`` and ``gen_adj``) step for step, because the published ML-GCN, IML-GCN and ML-AGCN
models were trained with exactly these matrices:

1. ``P[i, j] = cooccurrence[i, j] / label_counts[i]``, the conditional probability P(j | i);
2. keep the edge i -> j where ``P[i, j] >= t`` (binary matrix ``B``);
3. ``A = B * p / (B.sum(axis=0) + 1e-6) + I``: every kept edge gets ``p`` divided by the number of edges
   into its target (a column sum), then each node keeps itself with weight 1;
4. ``A_hat = D^-1/2 Aᵀ D^-1/2`` with ``D = diag(A.sum(axis=1))``.

Step 4 transposes ``A``: ``gen_adj`` computes ``(A D^-1/2)ᵀ D^-1/2``. The symmetric ``D^-1/2 A D^-1/2``
of the paper's text is a different matrix whenever ``A`` is asymmetric, which it nearly always is.

The one departure: a label with no training image has ``0 / 0`` in step 1, which the reference code turns
into NaN rows. Here such a row is all zeros, so the label is an isolated node (it cannot co-occur with
anything either, so its column is zero too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlcdf._moved import forwarder
from mlcdf.labels import conditional_probabilities

#: Moved to :mod:`mlcdf.labels` in 0.2 (label statistics, which the synthetic data needs too).
__getattr__ = forwarder(__name__, ("mlcdf.labels",), frozenset({"count_cooccurrence"}))

#: Added to the column sums in step 3 by the reference code; kept so that the numbers match it.
REWEIGHT_EPS = 1e-6


@dataclass(frozen=True)
class Adjacency:
    """The matrices of the ML-GCN label graph over C labels.

    Attributes:
        conditional: (C, C) P(j | i) = cooccurrence[i, j] / label_counts[i]; zero rows for labels
            without images.
        edges: (C, C) bool, the edges i -> j with P(j | i) >= t.
        A: (C, C) re-weighted binary adjacency plus identity (``gen_A``).
        A_hat: (C, C) normalised adjacency fed to the GCN (``gen_adj``).
    """

    conditional: np.ndarray
    edges: np.ndarray
    A: np.ndarray
    A_hat: np.ndarray

    @property
    def num_edges(self) -> int:
        """Directed edges that survived the threshold (self-loops are not counted: they never survive)."""
        return int(np.count_nonzero(self.edges))


def reweighted_adjacency(edges: np.ndarray, p: float) -> np.ndarray:
    """ML-GCN's re-weighting (``gen_A``): ``B * p / (column sums of B + 1e-6) + I``.

    Args:
        edges: (C, C) binary matrix B.
        p: total weight shared by the edges into a node; the node itself keeps weight 1.
    """
    binary = np.asarray(edges, dtype=np.float64)
    return binary * p / (binary.sum(axis=0, keepdims=True) + REWEIGHT_EPS) + np.identity(len(binary))


def normalized_adjacency(A: np.ndarray) -> np.ndarray:
    """ML-GCN's normalisation (``gen_adj``): ``D^-1/2 Aᵀ D^-1/2`` with ``D = diag(row sums of A)``.

    Raises:
        ValueError: a row of ``A`` does not sum to a positive number (impossible for a matrix from
            :func:`reweighted_adjacency`, whose rows hold the identity).
    """
    A = np.asarray(A, dtype=np.float64)
    degrees = A.sum(axis=1)
    if np.any(degrees <= 0):
        raise ValueError(f"every row of A must have a positive sum, got row sums {degrees.tolist()}")
    d_inv_sqrt = degrees**-0.5
    return d_inv_sqrt[:, None] * A.T * d_inv_sqrt[None, :]


def build_adjacency(cooccurrence: np.ndarray, label_counts: np.ndarray, *, t: float, p: float) -> Adjacency:
    """Threshold, re-weight and normalise a co-occurrence matrix as ML-GCN does.

    Args:
        cooccurrence: (C, C) pair counts with a zero diagonal (see :func:`count_cooccurrence`).
        label_counts: (C,) label counts.
        t: keep the edge i -> j where P(j | i) >= t; in (0, 1].
        p: weight given to the neighbours of a node, against 1 for the node itself; in [0, 1].

    Raises:
        ValueError: shapes do not match, or ``t`` / ``p`` is out of range.
    """
    cooccurrence = np.asarray(cooccurrence)
    label_counts = np.asarray(label_counts)
    c = len(label_counts)
    if label_counts.shape != (c,) or cooccurrence.shape != (c, c):
        raise ValueError(f"cooccurrence {cooccurrence.shape} does not match label_counts {label_counts.shape}")
    # t = 0 would keep every pair, the zero diagonal included, so that the identity counts twice.
    if not 0.0 < t <= 1.0:
        raise ValueError(f"t must be in (0, 1], got {t}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    conditional = conditional_probabilities(cooccurrence, label_counts)
    edges = conditional >= t
    A = reweighted_adjacency(edges, p)
    return Adjacency(conditional=conditional, edges=edges, A=A, A_hat=normalized_adjacency(A))
