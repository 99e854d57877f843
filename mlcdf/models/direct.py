"""Direct multi-label classifiers: a timm backbone, its own global pooling, and one linear layer (a logit per label).

The paper's direct models (ResNet-50, ResNet-101: He et al., CVPR 2016, https://arxiv.org/abs/1512.03385;
TResNet-M: Ridnik et al., WACV 2021, https://arxiv.org/abs/2003.13630) trained with BCE or ASL. Any other
timm architecture is a direct model under the name ``timm:<architecture>``.

Parameter counts for 5 labels: 23.52 M, 42.51 M and 29.35 M; the paper reports 23.8, 42.8 and 29.4 (its
ResNet figures are about 0.3 M above a plain 5-label head).
"""

from __future__ import annotations

import torch
from torch import nn

from mlcdf.models._backbone import BackboneClassifier, create_backbone, timm_api
from mlcdf.models._registry import register_model

__all__ = ["DirectClassifier", "create_direct"]  # the registry appends the entry functions


class DirectClassifier(BackboneClassifier):
    """A timm backbone with its own global pooling (average for ResNet and TResNet) and a linear head."""

    def __init__(self, backbone: nn.Module, num_labels: int) -> None:
        super().__init__(backbone, num_labels)
        self.fc = nn.Linear(self.num_features, num_labels)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # The backbone's own head (built with num_classes=0) pools and applies its dropout; that keeps
        # every timm architecture's pooling right, including token-based ones.
        x = timm_api(self.backbone).forward_head(x, pre_logits=True)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_labels: int) -> None:
        """Replace the linear head with a freshly initialised one for ``num_labels`` labels."""
        self.num_labels = num_labels
        self.fc = nn.Linear(self.num_features, num_labels)


def create_direct(arch: str, num_labels: int, **kwargs) -> DirectClassifier:
    """A direct classifier over the timm architecture ``arch``; ``kwargs`` go to ``timm.create_model``."""
    return DirectClassifier(create_backbone(arch, **kwargs), num_labels)


@register_model(paper_params_m=23.8)
def resnet50(num_labels: int, **kwargs) -> DirectClassifier:
    """ResNet-50 (timm) with a linear head; ImageNet input normalisation."""
    return create_direct("resnet50", num_labels, **kwargs)


@register_model(paper_params_m=42.8)
def resnet101(num_labels: int, **kwargs) -> DirectClassifier:
    """ResNet-101 (timm) with a linear head; ImageNet input normalisation."""
    return create_direct("resnet101", num_labels, **kwargs)


@register_model(paper_params_m=29.4)
def tresnet_m(num_labels: int, **kwargs) -> DirectClassifier:
    """TResNet-M (timm) with a linear head; raw [0, 1] pixels, no normalisation."""
    return create_direct("tresnet_m", num_labels, **kwargs)
