"""ModelEma: the warm-up schedule, buffers copied, and updates through a wrapper (DDP, torch.compile)."""

import copy

import torch
from torch import nn

from mlcdf.train.ema import ModelEma


class Wrapper(nn.Module):
    """Shares the model's tensors under other state_dict names, as DDP (``module.``) does."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


def test_ema_follows_the_model_trained_through_a_wrapper():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    wrapped = Wrapper(model)
    ema = ModelEma(model, decay=0.5)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 4):
        wrapped(torch.randn(16, 4)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update()
        decay = min(0.5, (1 + step) / (10 + step))
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
    for ema_value, value in zip(ema.module.parameters(), expected):
        torch.testing.assert_close(ema_value, value)
    # BatchNorm statistics are copied, not averaged.
    torch.testing.assert_close(ema.module[1].running_mean, model[1].running_mean)
    assert int(ema.module[1].num_batches_tracked) == 3


def test_loading_weights_in_place_keeps_the_pairing():
    model = nn.Linear(3, 3)
    ema = ModelEma(model, decay=0.0)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.weight.fill_(2.0)
    model.load_state_dict(other.state_dict())  # as resuming from a checkpoint does
    ema.update()
    assert torch.all(ema.module.weight == 2.0)


def test_multi_tensor_update_equals_the_per_tensor_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    ema = ModelEma(model, decay=0.9)
    reference = copy.deepcopy(ema.module)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 6):
        model(torch.randn(8, 3, 6, 6)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update()
        weight = 1.0 - min(0.9, (1 + step) / (10 + step))
        with torch.no_grad():
            for ref, value in zip(reference.parameters(), model.parameters()):
                ref.lerp_(value, weight)
            for ref, value in zip(reference.buffers(), model.buffers()):
                ref.copy_(value)
    for (name, ref), value in zip(reference.state_dict().items(), ema.module.state_dict().values()):
        assert torch.equal(ref, value), name
