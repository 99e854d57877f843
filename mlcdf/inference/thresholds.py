"""The decision rule of predictions on new images: a label is predicted when its probability reaches its threshold.

One number for every label (``--threshold 0.5``), or the per-label thresholds tuned on validation that
travel with a run: a bundle's ``thresholds.json`` (:mod:`mlcdf.inference.bundle`), or a run folder's
evaluation made with ``mlcdf evaluate --run RUN --tune-thresholds`` (``RUN/eval/<split>/metrics.json``).
``auto``, the default of ``predict`` and ``serve``, takes the tuned ones where the run has them, so a
bundle handed to an analyst decides as its evaluation did; every output says which rule it applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlcdf.config import DEFAULT_THRESHOLD, THRESHOLD_WORDS, parse_threshold
from mlcdf.errors import MlcdfError, SchemaError
from mlcdf.inference.bundle import Bundle
from mlcdf.io import read_json_object

AUTO, TUNED = THRESHOLD_WORDS
#: Where ``mlcdf evaluate --run`` writes a split's metrics (``RUN/eval/<split>/metrics.json``), ``test`` first.
EVAL_METRICS = ("eval/test/metrics.json", "eval/val/metrics.json")


class RunSource(Protocol):
    """What the thresholds need of a run (:class:`mlcdf.inference.runs.RunInfo` has it; named here, not
    imported, because that module builds its predictions with :class:`Thresholds`)."""

    @property
    def labels(self) -> tuple[str, ...]: ...
    @property
    def run_dir(self) -> Path: ...
    @property
    def bundle(self) -> Bundle | None: ...
    @property
    def source(self) -> str: ...


@dataclass(frozen=True)
class Thresholds:
    """One threshold per label (``values``, in label order) and ``origin``, what they are, for people."""

    labels: tuple[str, ...]
    values: np.ndarray
    origin: str

    @classmethod
    def uniform(cls, labels: tuple[str, ...], value: float) -> Thresholds:
        return cls(labels, np.full(len(labels), float(value)), f"{float(value):g}")

    @property
    def is_uniform(self) -> bool:
        return bool(np.all(self.values == self.values[0])) if len(self.values) else True

    def hits(self, scores: np.ndarray) -> np.ndarray:
        """Which labels are predicted: ``scores`` (..., C) at or above their thresholds."""
        return np.asarray(scores) >= self.values

    def predicted(self, scores: np.ndarray) -> list[str]:
        """The labels one row of ``scores`` (C,) predicts, in label order."""
        return [label for label, hit in zip(self.labels, self.hits(scores)) if hit]

    def to_json(self) -> float | dict[str, float]:
        """What outputs record: the one number, or each label's."""
        if self.is_uniform and len(self.values):
            return float(self.values[0])
        return {label: float(value) for label, value in zip(self.labels, self.values)}

    def __str__(self) -> str:
        return self.origin


def run_evaluations(run_dir: Path) -> dict[str, dict[str, Any]]:
    """A run folder's evaluations that exist, by split (``test`` first): model cards, thresholds and priors read them.

    Raises:
        SchemaError: an evaluation file that is not a JSON object.
    """
    found = {}
    for relative in EVAL_METRICS:
        path = run_dir / relative
        if path.is_file():
            found[path.parent.name] = read_json_object(path)
    return found


def tuned_thresholds_in(evaluations: dict[str, dict[str, Any]], labels: tuple[str, ...]) -> dict[str, Any] | None:
    """The per-label thresholds an evaluation tuned on validation (``--tune-thresholds``), as a bundle's
    ``thresholds.json`` holds them (``thresholds``, ``objective``, ``tuned_on``, ``from``), or None."""
    for split, metrics in evaluations.items():
        tuning, thresholds = metrics.get("threshold_tuning"), metrics.get("threshold")
        if isinstance(tuning, dict) and isinstance(thresholds, dict) and list(thresholds) == list(labels):
            return {"thresholds": thresholds, "objective": tuning.get("objective"), "tuned_on": tuning.get("tuned_on"), "from": split}
    return None


def _tuned(info: RunSource) -> Thresholds | None:
    """The run's tuned thresholds, or None when it has none.

    Raises:
        SchemaError: the bundle's or the evaluation's thresholds do not give every label a number in [0, 1].
    """
    if info.bundle is not None:
        document, where = info.bundle.thresholds, f"{info.bundle.source}: thresholds.json"
    else:
        document = tuned_thresholds_in(run_evaluations(info.run_dir), info.labels)
        where = "" if document is None else str(info.run_dir / "eval" / document["from"] / "metrics.json")
    if document is None:
        return None
    values = document.get("thresholds")
    if not isinstance(values, dict) or sorted(values) != sorted(info.labels):
        raise SchemaError(where, f"the tuned thresholds must name each of the run's {len(info.labels)} labels once")
    numbers = [values[label] for label in info.labels]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1 for v in numbers):
        raise SchemaError(where, "a tuned threshold is not a number in [0, 1]")
    objective, tuned_on = document.get("objective") or "F1", document.get("tuned_on") or "val"
    return Thresholds(info.labels, np.asarray(numbers, dtype=np.float64), f"tuned for {objective} on {tuned_on}")


def decision_thresholds(info: RunSource, choice: str | float = AUTO) -> Thresholds:
    """The thresholds predictions with ``info``'s run apply, for ``choice`` (:func:`mlcdf.config.parse_threshold`'s forms).

    Raises:
        MlcdfError: ``tuned`` for a run that has none (naming how to get them), or a bad ``choice``.
        SchemaError: tuned thresholds that do not fit the run's labels.
    """
    parsed = parse_threshold(choice)
    if isinstance(parsed, str):
        tuned = _tuned(info)
        if tuned is not None:
            return tuned
        if parsed == TUNED:
            raise MlcdfError(
                f"{info.source}: has no tuned thresholds; run 'mlcdf evaluate --run RUN --tune-thresholds' first "
                "(a bundle exported after it carries them), or give --threshold a number"
            )
        return Thresholds.uniform(info.labels, DEFAULT_THRESHOLD)
    return Thresholds.uniform(info.labels, parsed)
