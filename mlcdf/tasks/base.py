"""The task interface: targets, loss, decoding and the validation figure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mlcdf.data.prepared import SplitTable


class Task(Protocol):
    """What a model learns and how its outputs are read.

    Attributes:
        name: the task's name, as written in a run's files.
    """

    name: str

    def targets(self, table: SplitTable) -> np.ndarray:
        """The training target of each row of ``table``, one row each (N, ...)."""
        ...

    def train_outputs(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The model's outputs for a training batch, which the loss compares with ``targets``.

        ``model(images)`` for a multi-label model; a sequence model also reads the targets (teacher forcing).
        """
        ...

    def loss(self) -> torch.nn.Module:
        """The training loss, called as ``loss(outputs, targets)`` on a batch; sum- or mean-reduced."""
        ...

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per-label probabilities (B, C) in [0, 1] from the model's outputs for a batch."""
        ...

    def decode(self, outputs: torch.Tensor) -> torch.Tensor | None:
        """The predicted steps in order, (B, L) ids (0 = none, 1..C), or None for a task without an order."""
        ...

    def step_probabilities(self, outputs: torch.Tensor) -> torch.Tensor | None:
        """The probability of each predicted step (B, L), 0 where :meth:`decode` gives none; None for a
        task without an order."""
        ...

    def validation_score(self, targets: np.ndarray, scores: np.ndarray) -> float:
        """The figure (higher is better) that picks the best checkpoint and drives early stopping."""
        ...
