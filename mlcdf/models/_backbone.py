"""What every mlcdf model shares: a timm backbone without its classifier, and the timm-style model API."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Protocol, cast

import timm
import torch
from timm.data import resolve_model_data_config
from torch import nn

from mlcdf.errors import MlcdfError
from mlcdf.weights import LoadReport, load_backbone_weights, load_pretrained_backbone

__all__ = ["BackboneClassifier", "TimmModel", "create_backbone", "timm_api"]


class TimmModel(Protocol):
    """The part of timm's model API that mlcdf uses. Every timm architecture has it, by convention: timm
    declares it in no base class (``timm.create_model`` returns a plain ``nn.Module``)."""

    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None: ...


def timm_api(model: nn.Module) -> TimmModel:
    """``model``, a timm model (:func:`create_backbone`), typed with the API of :class:`TimmModel`."""
    # A cast, not a check: timm has no base class to check against; every timm model has this API.
    return cast(TimmModel, model)


def create_backbone(arch: str, **kwargs) -> nn.Module:
    """A timm model with random weights and no classifier (``num_classes=0``).

    Weights are never fetched here: :meth:`BackboneClassifier.load_backbone` loads them after the model
    is built, so that downloads, cache use and offline errors are handled in one place.

    Args:
        arch: a timm architecture, optionally with a pretrained tag (``resnet50.a1_in1k``); the tag picks
            the pretrained config (weights and input normalisation).
        **kwargs: passed to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ...).
    """
    return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)


class BackboneClassifier(nn.Module, abc.ABC):
    """Base of every mlcdf model: ``forward = forward_head(forward_features(x))`` over a timm backbone.

    Abstract: subclasses add the multi-label head and implement ``forward_head``, ``get_classifier`` and
    ``reset_classifier``.

    Attributes:
        backbone: the timm model, built with ``num_classes=0``.
        num_labels: number of outputs (labels).
        num_features: channels of the backbone's feature map (2048 for ResNet-50/101 and TResNet-M).
        input_mean: per-channel mean the images must be normalised with, from the backbone's pretrained
            config: ImageNet's for ResNets, ``(0, 0, 0)`` for TResNet, which expects raw [0, 1] pixels.
        input_std: per-channel standard deviation, likewise (``(1, 1, 1)`` for TResNet).
        model_name: the name :func:`~mlcdf.models.create_model` built it from.
        model_kwargs: the keyword arguments it was built with (JSON values); with ``model_name`` and
            ``num_labels`` they rebuild the model (:func:`~mlcdf.models.model_config`).
        weights_report: what :meth:`load_backbone` loaded, or None for random initialisation.
    """

    def __init__(self, backbone: nn.Module, num_labels: int) -> None:
        super().__init__()
        if num_labels < 1:
            raise MlcdfError(f"a model needs at least one label, got num_labels={num_labels}")
        data_config = resolve_model_data_config(backbone)
        self.backbone = backbone
        self.num_labels = num_labels
        self.num_features = int(timm_api(backbone).num_features)
        self.input_mean: tuple[float, ...] = tuple(float(value) for value in data_config["mean"])
        self.input_std: tuple[float, ...] = tuple(float(value) for value in data_config["std"])
        self.model_name = type(self).__name__
        self.model_kwargs: dict = {}
        self.weights_report: LoadReport | None = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's unpooled output, B x C x H x W for CNNs (the layer Grad-CAM hooks)."""
        return timm_api(self.backbone).forward_features(x)

    @abc.abstractmethod
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool ``forward_features``' output; return the pooled features (``pre_logits``) or B x C logits."""

    @abc.abstractmethod
    def get_classifier(self) -> nn.Module:
        """The module producing the logits (timm's API)."""

    @abc.abstractmethod
    def reset_classifier(self, num_labels: int) -> None:
        """Replace the head with a freshly initialised one for ``num_labels`` labels (timm's API)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W images, normalised with ``input_mean``/``input_std`` -> B x num_labels logits.

        Under autocast only the backbone runs in reduced precision: the head (pooling, classifier, graph
        layers) runs in float32, so the logits, and the scores ranked by mAP, are not rounded to bf16's
        three significant digits (ties, and CPU and GPU evaluations that disagree). It is a small share
        of the compute.
        """
        features = self.forward_features(x)
        if torch.is_autocast_enabled(features.device.type):
            with torch.autocast(features.device.type, enabled=False):
                return self.forward_head(features.float())
        return self.forward_head(features)

    def load_backbone(self, *, pretrained: bool = False, weights: str | Path | None = None, strict: bool = True) -> LoadReport | None:
        """Load backbone weights: timm's default pretrained tag, or a local file; the head stays as it is.

        Args:
            pretrained: load timm's default pretrained weights (Hub cache, else download) (False).
            weights: a local ``.pth``/``.safetensors`` file instead (None).
            strict: fail on missing or unexpected non-head tensors instead of only logging them (True).

        Returns:
            The :class:`~mlcdf.models.LoadReport` (also kept as ``weights_report``), or None when neither
            was asked for.
        """
        if pretrained and weights is not None:
            raise MlcdfError("pass either pretrained weights (--pretrained) or a weights file (--weights), not both")
        if weights is not None:
            self.weights_report = load_backbone_weights(self.backbone, weights, strict=strict)
        elif pretrained:
            self.weights_report = load_pretrained_backbone(self.backbone, strict=strict)
        return self.weights_report
