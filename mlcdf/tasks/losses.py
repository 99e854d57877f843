"""Multi-label losses over logits: binary cross-entropy and the Asymmetric Loss (ASL).

ASL: Ben-Baruch, Ridnik, Zamir, Noy, Friedman, Protter, Zelnik-Manor, "Asymmetric Loss For Multi-Label
Classification", ICCV 2021, https://arxiv.org/abs/2009.14119 (reference code: github.com/Alibaba-MIIL/ASL).

``create_loss("bce" | "asl", **kwargs)`` builds either by name.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlcdf.errors import MlcdfError

__all__ = ["LOSSES", "AsymmetricLoss", "create_loss"]

_REDUCTIONS = ("sum", "mean", "none")


class AsymmetricLoss(nn.Module):
    r"""The Asymmetric Loss for multi-label classification, computed in log space.

    For a logit :math:`x`, :math:`p = \sigma(x)` and a target :math:`y \in \{0, 1\}`, with the shifted
    probability :math:`p_m = \max(p - m, 0)` of a negative (``m`` = ``clip``)::

        L = - y       · (1 - p)^γ+ · log(max(p, eps))
            - (1 - y) · p_m^γ-    · log(max(1 - p_m, eps))

    summed over labels and batch (``reduction="sum"``, as the reference code does) or averaged over
    all B x C entries (``"mean"``, which keeps the scale independent of the batch size), or returned
    per entry (``"none"``). Targets between 0 and 1 weight the two terms linearly.

    Numerics: ``log p = logsigmoid(x)``, ``1 - p_m = min(σ(-x) + m, 1)`` with
    ``log(σ(-x) + m) = logaddexp(logsigmoid(-x), log m)``, and the focusing bases are ``σ(-x)`` and
    ``max(σ(x) - m, 0)``: 1 - σ(x) is never formed, so float32 agrees with a float64 evaluation even for
    logits of magnitude 60 and ``clip=0``, where a direct port loses the small probabilities. The
    ``eps`` floor of the reference becomes ``max(log(·), log eps)``. The loss is computed in float32 (or
    float64 for float64 input) whatever autocast produced, so it stays finite under autocast. The
    focusing weights are constants for back-propagation (computed under ``torch.no_grad``), as in the
    reference.

    Args:
        gamma_neg: focusing exponent of negatives, γ- (4).
        gamma_pos: focusing exponent of positives, γ+ (0).
        clip: probability margin ``m`` subtracted from negatives' probability; 0 disables it (0.05).
        eps: floor of the probabilities inside the logarithms; 0 disables it (1e-8).
        reduction: ``"sum"``, ``"mean"`` or ``"none"`` ("sum").

    Examples:
        >>> loss = AsymmetricLoss()
        >>> logits = torch.tensor([[2.0, -1.0]])
        >>> round(float(loss(logits, torch.tensor([[1.0, 0.0]]))), 4)
        0.1275
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        reduction: str = "sum",
    ) -> None:
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0:
            raise ValueError(f"gamma_neg and gamma_pos must be >= 0, got {gamma_neg} and {gamma_pos}")
        if not 0 <= clip < 1:
            raise ValueError(f"clip must be in [0, 1), got {clip}")
        if not 0 <= eps < 1:
            raise ValueError(f"eps must be in [0, 1), got {eps}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, eps={self.eps}, reduction={self.reduction!r}"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """B x C logits and B x C targets in [0, 1] -> the loss (a scalar, or B x C with ``"none"``)."""
        if logits.shape != targets.shape:
            raise ValueError(f"logits and targets must have the same shape, got {logits.shape} and {targets.shape}")
        # At least float32 whatever autocast produced: half precision underflows the small probabilities.
        x = logits.to(torch.promote_types(logits.dtype, torch.float32))
        y = targets.to(x.dtype)
        log_p = F.logsigmoid(x)
        log_q = F.logsigmoid(-x)  # log(1 - p)
        # Negatives: log(1 - p_m) = log(min(1 - p + m, 1)).
        if self.clip > 0:
            log_q = torch.logaddexp(log_q, torch.full_like(log_q, math.log(self.clip))).clamp_max(0.0)
        if self.eps > 0:
            log_floor = math.log(self.eps)
            log_p = log_p.clamp_min(log_floor)
            log_q = log_q.clamp_min(log_floor)
        loss_pos = y * log_p
        loss_neg = (1 - y) * log_q
        if self.gamma_pos > 0 or self.gamma_neg > 0:
            with torch.no_grad():
                weight_pos = torch.sigmoid(-x).pow(self.gamma_pos)  # (1 - p)^γ+
                weight_neg = (torch.sigmoid(x) - self.clip).clamp_min(0.0).pow(self.gamma_neg)  # p_m^γ-
            loss_pos = loss_pos * weight_pos
            loss_neg = loss_neg * weight_neg
        loss = -(loss_pos + loss_neg)
        if self.reduction == "sum":
            return loss.sum()
        if self.reduction == "mean":
            return loss.mean()
        return loss


LOSSES: dict[str, type[nn.Module]] = {"bce": nn.BCEWithLogitsLoss, "asl": AsymmetricLoss}
"""Loss names for :func:`create_loss`; ``bce`` is PyTorch's BCE-with-logits, averaged over all B x C entries."""


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """A multi-label loss by name; called as ``loss(logits, targets)`` with B x C float tensors.

    Args:
        name: ``"bce"`` (mean binary cross-entropy with logits; kwargs ``reduction``, ``pos_weight``) or
            ``"asl"`` (:class:`AsymmetricLoss`; kwargs ``gamma_neg``, ``gamma_pos``, ``clip``, ``eps``,
            ``reduction``).
        **kwargs: the loss's hyperparameters; ``None`` values are dropped so the loss's defaults apply.

    Raises:
        MlcdfError: unknown name.

    Examples:
        >>> create_loss("asl", gamma_neg=2, clip=None)
        AsymmetricLoss(gamma_neg=2, gamma_pos=0.0, clip=0.05, eps=1e-08, reduction='sum')
    """
    try:
        loss_class = LOSSES[name]
    except KeyError:
        raise MlcdfError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None
    return loss_class(**{key: value for key, value in kwargs.items() if value is not None})
