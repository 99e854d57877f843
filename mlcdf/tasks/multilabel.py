"""The paper's task: multi-label classification over C labels, with C logits and a sigmoid each."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

from mlcdf.metrics import NoPositivesWarning, average_precision
from mlcdf.models import model_info
from mlcdf.tasks.losses import create_loss
from mlcdf.tasks.sequence import SequenceTask

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mlcdf.config import TrainConfig
    from mlcdf.data.prepared import SplitTable
    from mlcdf.tasks.base import Task


class MultiLabelTask:
    """Multi-hot targets, BCE or the Asymmetric Loss on logits, sigmoid scores, validation mAP.

    Args:
        loss: ``bce`` or ``asl`` (:func:`mlcdf.tasks.losses.create_loss`).
        loss_options: the loss's settings (ASL's ``gamma_neg``, ``gamma_pos``, ``clip``).
    """

    name = "multilabel"

    def __init__(self, loss: str = "bce", loss_options: dict[str, float] | None = None) -> None:
        self.loss_name = loss
        self.loss_options = dict(loss_options or {})

    def targets(self, table: SplitTable) -> np.ndarray:
        return np.asarray(table.targets, dtype=np.float32)

    def train_outputs(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return model(images)

    def loss(self) -> torch.nn.Module:
        return create_loss(self.loss_name, **self.loss_options)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs.float())

    def decode(self, outputs: torch.Tensor) -> torch.Tensor | None:
        """None: a multi-label model predicts a set, not an order."""
        return None

    def step_probabilities(self, outputs: torch.Tensor) -> torch.Tensor | None:
        """None: no steps (see :meth:`decode`)."""
        return None

    def validation_score(self, targets: np.ndarray, scores: np.ndarray) -> float:
        """The mAP over the labels with positives (0 when none has any): it ranks checkpoints."""
        with warnings.catch_warnings():
            # A small validation split may lack a label; the mAP over the others still ranks checkpoints.
            warnings.simplefilter("ignore", NoPositivesWarning)
            value = average_precision(targets, scores)
        return float(value) if np.isfinite(value) else 0.0


def create_task(config: TrainConfig, labels: Sequence[str] = (), *, ordered: bool = True) -> Task:
    """The task a run trains for, as its model's registry entry says (:attr:`~mlcdf.models.ModelInfo.task`).

    Args:
        config: the run's options (the model, and the loss of a multi-label model).
        labels: the dataset's label names, in id order; a sequence task needs them.
        ordered: whether the dataset records the order of the steps (a prepared ``meta.json`` without
            ``"ordered": false``); a sequence model refuses a dataset without one.

    Raises:
        MlcdfError: a sequence model without labels or on a dataset without an order.
    """
    if model_info(config.model).task == "sequence":
        return SequenceTask(labels, ordered=ordered)
    return MultiLabelTask(config.loss, config.loss_options())
