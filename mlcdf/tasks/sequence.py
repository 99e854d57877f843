"""Seq-DeepFake's own task: predict the manipulations in the order they were applied (image-to-sequence).

Shao, Wu, Liu, "Detecting and Recovering Sequential DeepFake Manipulation", ECCV 2022 (reference code:
github.com/rshaojimmy/SeqDeepFake, ``datasets/dataset.py``, ``train.py``, ``test.py``). For C labels the
tokens are SOS 0, the label ids 1..C, EOS C+1 and PAD C+2 (:func:`~mlcdf.models.seqfakeformer.sequence_tokens`);
a sequence has at most L = C steps (each manipulation at most once, as in the release's label lists).

- Target of a row: ``[SOS, ids..., EOS, PAD...]``, L + 2 tokens (``[0, 1, 2, 4, 6, 7, 7]`` for
  ``nose-eye-lip`` with C = 5; ``[0, 6, 7, 7, 7, 7, 7]`` for a real image).
- Training (teacher forcing): the decoder reads the target without its last token, EOS replaced by PAD
  and PAD keys hidden, and predicts the target without its first token; cross-entropy over the positions
  whose target is not PAD, averaged (the authors' ``CrossEntropyLoss(ignore_index=PAD)``).
- Decoding: the model's greedy step logits (B, L, C+3) become (B, L) ids with the authors' rule: the
  first EOS ends the sequence and it and every later slot become 0; in a row that ended with an EOS a
  PAD emitted before it also becomes 0 (their ``caption[caption == PAD] = 0`` on that path only), and an
  emitted SOS is 0 like "none". These arrays go to :func:`mlcdf.metrics.fixed_accuracy` and
  :func:`~mlcdf.metrics.adaptive_accuracy`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlcdf.errors import MlcdfError
from mlcdf.labels import sequence_steps
from mlcdf.metrics import NoPositivesWarning, average_precision
from mlcdf.models.seqfakeformer import sequence_tokens

if TYPE_CHECKING:
    from mlcdf.data.prepared import SplitTable

__all__ = ["SequenceLoss", "SequenceTask"]


class SequenceLoss(nn.Module):
    """Teacher-forced cross-entropy: logits (B, T, V) against ``targets[:, 1:T+1]``, PAD positions ignored, averaged.

    ``targets`` are the task's (B, L+2) token rows (any numeric dtype); T is at most L + 1.
    """

    reduction = "mean"

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        wanted = targets[:, 1 : logits.shape[1] + 1].long()
        return F.cross_entropy(logits.float().transpose(1, 2), wanted, ignore_index=self.pad)


class SequenceTask:
    """The image-to-sequence task over ``labels`` (C of them): token targets, teacher forcing, greedy decoding.

    Per-label score (:meth:`scores`): for label c, the largest probability the decoder gives to token c at
    any step of the greedy path up to and including the step where that path emits EOS (all L steps when
    it never does). The exact probability that c is emitted before EOS would sum over every path of the
    decoder (C! orders); the greedy path is the one the task predicts, so this approximation ranks images
    by how close the decoder came to emitting c on the sequence it actually outputs. It is 1 where the
    decoder is sure c comes at some step, a label the greedy path emits gets at least its step's winning
    probability, and a label the path never makes likely stays low. It feeds mAP, CP, CR, CF1, OP, OR and
    OF1 as the multi-label models' sigmoid scores do; at a 0.5 threshold a label is predicted only when
    some step gives it more than half the mass, so the thresholded set can miss a label the greedy path
    emitted with a narrow winning margin.

    Validation score (:meth:`validation_score`): the mAP of these scores against the labels present in each
    target. The trainer hands the task only per-label scores, not sequences, and mAP needs no threshold
    and varies smoothly with the model, where Fixed/Adaptive-Acc on a small validation split move in
    coarse steps. The authors keep two checkpoints, best by Fixed-Acc and best by Adaptive-Acc; this is a
    documented difference.

    Args:
        labels: the label names, in id order (id 1 is the first).
        ordered: whether the dataset records the order of the steps; without it the task refuses.

    Raises:
        MlcdfError: no labels, or ``ordered`` is False.
    """

    name = "sequence"

    def __init__(self, labels: Sequence[str], *, ordered: bool = True) -> None:
        if not labels:
            raise MlcdfError("a sequence task needs the dataset's label names")
        if not ordered:
            raise MlcdfError(
                "this dataset records no order of the manipulations (no 'sequence' column); a sequence model needs one: "
                "prepare it with a sequence column or train a multi-label model"
            )
        self.labels = tuple(labels)
        tokens = sequence_tokens(len(self.labels))
        self.sos, self.eos, self.pad = tokens["sos"], tokens["eos"], tokens["pad"]
        self.max_steps = len(self.labels)

    def targets(self, table: SplitTable) -> np.ndarray:
        """(N, L+2) int64 tokens: ``[SOS, ids..., EOS, PAD...]`` per row."""
        rows = np.full((len(table.sequences), self.max_steps + 2), self.pad, dtype=np.int64)
        rows[:, 0] = self.sos
        for row, sequence in zip(rows, table.sequences):
            ids = sequence_steps(sequence, self.labels)
            row[1 : len(ids) + 1] = ids
            row[len(ids) + 1] = self.eos
        return rows

    def teacher_tokens(self, targets: torch.Tensor) -> torch.Tensor:
        """The decoder's input for a batch of targets: all but the last token, EOS replaced by PAD."""
        tokens = targets[:, :-1].long()
        return torch.where(tokens == self.eos, torch.full_like(tokens, self.pad), tokens)

    def train_outputs(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, L+1, C+3) of a training batch."""
        return model(images, self.teacher_tokens(targets))

    def loss(self) -> nn.Module:
        return SequenceLoss(self.pad)

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Greedy step logits (B, L, C+3) -> (B, L) ids, 0 for none, with the authors' end-of-sequence rule."""
        ids = outputs.argmax(dim=-1)
        is_eos = ids == self.eos
        ended = is_eos.any(dim=1, keepdim=True)
        after = is_eos.long().cumsum(dim=1) > 0
        return ids.masked_fill(after | (ended & (ids == self.pad)), 0)

    def step_probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, L): the decoder's probability of the token it emitted at each step of the greedy path, 0 at
        the slots :meth:`decode` leaves empty (the EOS and what follows it)."""
        probabilities = outputs.float().softmax(dim=-1).amax(dim=-1)
        return probabilities.masked_fill(self.decode(outputs) == 0, 0.0)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per-label scores (B, C): see the class docstring."""
        probabilities = outputs.float().softmax(dim=-1)
        ids = outputs.argmax(dim=-1)
        # Steps up to and including the first EOS of the greedy path.
        before = (ids == self.eos).long().cumsum(dim=1) - (ids == self.eos).long() == 0
        label_probabilities = probabilities[:, :, 1 : self.eos] * before[:, :, None]
        return label_probabilities.amax(dim=1)

    def multihot(self, targets: np.ndarray) -> np.ndarray:
        """(N, C) 0/1: the labels present in each row of token targets."""
        tokens = np.asarray(targets).astype(np.int64)
        hot = np.zeros((len(tokens), self.max_steps), dtype=np.int64)
        rows, cols = np.nonzero((tokens >= 1) & (tokens <= self.max_steps))
        hot[rows, tokens[rows, cols] - 1] = 1
        return hot

    def validation_score(self, targets: np.ndarray, scores: np.ndarray) -> float:
        """The mAP of the per-label scores over the labels with positives (0 when none has any)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoPositivesWarning)
            value = average_precision(self.multihot(targets), scores)
        return float(value) if np.isfinite(value) else 0.0
