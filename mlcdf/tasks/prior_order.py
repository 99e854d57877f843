"""The "set + prior order" decoder: a multi-label model's predicted set, put in the order the training data
applies that set most often, so that its predictions get Seq-DeepFake's Fixed-Acc and Adaptive-Acc too.

:func:`estimate_prior_orders` counts, on a training split, every order in which each set of labels was
applied, and keeps the most frequent (ties: the smallest id sequence). A set never seen in training is
ordered by each label's mean position (1-based) among the training sequences that hold it, ties and labels
never seen by id. :func:`order_sets` applies that to (N, C) 0/1 sets and gives (N, C) ids, 0-padded, as
:func:`mlcdf.metrics.fixed_accuracy` takes them. Applied to the *true* sets it gives the oracle row: how much
of the sequence metrics the order alone is worth on the data.

Pure functions over plain values; the prior is a JSON-ready dict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlcdf.errors import MlcdfError
from mlcdf.labels import sequence_steps

__all__ = ["estimate_prior_orders", "order_sets"]


def estimate_prior_orders(sequences: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """The most frequent order of each label set in ``sequences`` (step names joined by ``-``).

    Returns:
        ``{"labels": [...], "orders": {"<ids of the set, ascending, joined by ->": [ids in order]},
        "mean_position": [one per label, NaN-free: a label never seen gets C + 1]}``.
    """
    counts: Counter[tuple[int, ...]] = Counter(sequence_steps(sequence, labels) for sequence in sequences)
    best: dict[tuple[int, ...], tuple[int, ...]] = {}
    for order, count in counts.items():
        key = tuple(sorted(order))
        current = best.get(key)
        if current is None or count > counts[current] or (count == counts[current] and order < current):
            best[key] = order
    position_sum = np.zeros(len(labels))
    seen = np.zeros(len(labels))
    for order, count in counts.items():
        for position, label_id in enumerate(order, start=1):
            position_sum[label_id - 1] += position * count
            seen[label_id - 1] += count
    mean_position = np.where(seen > 0, position_sum / np.maximum(seen, 1), len(labels) + 1)
    return {
        "labels": list(labels),
        "orders": {"-".join(map(str, key)): list(order) for key, order in sorted(best.items()) if key},
        "mean_position": [float(value) for value in mean_position],
    }


def order_sets(sets: np.ndarray, prior: dict[str, Any]) -> np.ndarray:
    """(N, C) 0/1 label sets -> (N, C) ids in the prior's order, 0-padded.

    Raises:
        MlcdfError: ``sets`` does not have one column per label of the prior.
    """
    present = np.asarray(sets).astype(bool)
    num_labels = len(prior["labels"])
    if present.ndim != 2 or present.shape[1] != num_labels:
        raise MlcdfError(f"label sets of shape {present.shape} do not fit the prior's {num_labels} labels")
    mean_position = prior["mean_position"]
    out = np.zeros(present.shape, dtype=np.int64)
    for row, hits in zip(out, present):
        ids = [int(j) + 1 for j in np.flatnonzero(hits)]
        order = prior["orders"].get("-".join(map(str, ids)))
        if order is None:
            order = sorted(ids, key=lambda label_id: (mean_position[label_id - 1], label_id))
        row[: len(order)] = order
    return out
