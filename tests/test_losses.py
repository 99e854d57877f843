"""Losses: ASL against a float64 evaluation of its formula, gradients, autocast, the factory."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F

import mlcdf.tasks.losses
from mlcdf.errors import MlcdfError
from mlcdf.tasks.losses import AsymmetricLoss, create_loss

CONFIGS = [  # (gamma_neg, gamma_pos, clip)
    (4.0, 0.0, 0.05),  # the paper's default
    (4.0, 1.0, 0.0),
    (2.0, 2.0, 0.0),
    (0.0, 0.0, 0.0),
    (4.0, 0.0, 0.0),
    (1.0, 3.0, 0.2),
]


def reference_asl(logits, targets, gamma_neg, gamma_pos, clip, eps=1e-8, dtype=torch.float64, detach=True):
    """A direct port of the reference implementation (Alibaba-MIIL/ASL), elementwise, in ``dtype``."""
    x, y = logits.to(dtype), targets.to(dtype)
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    pt = xs_pos * y + xs_neg * (1 - y)
    weight = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return -loss * (weight.detach() if detach else weight)


def random_batch(scale: float, seed: int, shape=(64, 5)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * scale
    targets = (torch.rand(shape, generator=generator) < 0.4).float()
    return logits, targets


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference).abs() / reference.abs())


@pytest.mark.parametrize("scale", [3.0, 20.0, 60.0])
@pytest.mark.parametrize(("gamma_neg", "gamma_pos", "clip"), CONFIGS)
def test_asl_float32_agrees_with_float64_formula(scale, gamma_neg, gamma_pos, clip):
    logits, targets = random_batch(scale, seed=int(scale))
    reference = reference_asl(logits, targets, gamma_neg, gamma_pos, clip)
    loss_sum = AsymmetricLoss(gamma_neg, gamma_pos, clip)(logits, targets)
    loss_mean = AsymmetricLoss(gamma_neg, gamma_pos, clip, reduction="mean")(logits, targets)
    assert loss_sum.dtype == torch.float32
    assert relative_error(loss_sum, reference.sum()) < 1e-4
    assert relative_error(loss_mean, reference.mean()) < 1e-4


@pytest.mark.parametrize(("gamma_neg", "gamma_pos", "clip"), [(0.0, 0.0, 0.0), (4.0, 0.0, 0.0), (4.0, 2.0, 0.0)])
def test_asl_keeps_small_probabilities_where_a_direct_float32_port_does_not(gamma_neg, gamma_pos, clip):
    # Confidently wrong negatives just inside the eps floor: 1 - sigmoid(x) rounds badly in float32.
    logits = torch.linspace(15.0, 18.4, 40).reshape(8, 5)
    targets = torch.zeros_like(logits)
    reference = reference_asl(logits, targets, gamma_neg, gamma_pos, clip).sum()
    naive = reference_asl(logits, targets, gamma_neg, gamma_pos, clip, dtype=torch.float32).sum()
    assert relative_error(naive, reference) > 1e-3  # the check has teeth
    assert relative_error(AsymmetricLoss(gamma_neg, gamma_pos, clip)(logits, targets), reference) < 1e-5


@pytest.mark.parametrize(("gamma_neg", "gamma_pos", "clip"), CONFIGS)
def test_asl_elementwise_and_gradient_match_float64(gamma_neg, gamma_pos, clip):
    logits, targets = random_batch(4.0, seed=7, shape=(16, 5))
    logits64 = logits.double().requires_grad_()
    reference = reference_asl(logits64, targets, gamma_neg, gamma_pos, clip)
    reference.sum().backward()

    ours_logits = logits.clone().requires_grad_()
    ours = AsymmetricLoss(gamma_neg, gamma_pos, clip, reduction="none")(ours_logits, targets)
    ours.sum().backward()

    assert ours.shape == logits.shape
    torch.testing.assert_close(ours.double(), reference.detach(), rtol=1e-5, atol=1e-7)
    # The focusing weights are constants for back-propagation, as in the reference.
    torch.testing.assert_close(ours_logits.grad.double(), logits64.grad, rtol=1e-4, atol=1e-6)


def test_asl_without_focusing_clip_or_eps_is_summed_bce():
    logits, targets = random_batch(5.0, seed=3)
    asl = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0, eps=0)(logits, targets)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    torch.testing.assert_close(asl, bce, rtol=1e-5, atol=1e-4)


def test_asl_leaves_grad_mode_alone():
    logits, targets = random_batch(2.0, seed=1, shape=(4, 5))
    logits.requires_grad_()
    AsymmetricLoss(gamma_pos=1.0)(logits, targets).backward()
    assert torch.is_grad_enabled()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_asl_is_finite_under_autocast():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 5)
    features = torch.randn(4, 8) * 40  # logits in the tens, beyond what bfloat16 resolves near 0 and 1
    targets = (torch.rand(4, 5) < 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(features)
        assert logits.dtype == torch.bfloat16
        loss = AsymmetricLoss(gamma_pos=1.0, clip=0.0)(logits, targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_asl_validates_its_arguments():
    with pytest.raises(ValueError, match="gamma"):
        AsymmetricLoss(gamma_neg=-1)
    with pytest.raises(ValueError, match="clip"):
        AsymmetricLoss(clip=1.0)
    with pytest.raises(ValueError, match="reduction"):
        AsymmetricLoss(reduction="avg")
    with pytest.raises(ValueError, match="shape"):
        AsymmetricLoss()(torch.zeros(2, 5), torch.zeros(2, 4))


def test_create_loss():
    logits, targets = random_batch(2.0, seed=5)
    bce = create_loss("bce")
    torch.testing.assert_close(bce(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))
    asl = create_loss("asl", gamma_neg=2, clip=None, reduction="mean")
    assert isinstance(asl, AsymmetricLoss)
    assert (asl.gamma_neg, asl.clip, asl.reduction) == (2, 0.05, "mean")  # None keeps the default
    with pytest.raises(MlcdfError, match="bce, asl"):
        create_loss("focal")


def test_docstring_examples():
    result = doctest.testmod(mlcdf.tasks.losses)
    assert result.attempted and not result.failed
