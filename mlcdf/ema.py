"""Exponential moving average of model weights.

The decay warms up as ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates (the schedule of
TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``): with a fixed 0.9997 the average of a
short run would still be mostly the random initialisation.
"""

from __future__ import annotations

import copy

import torch


class ModelEma:
    """A frozen copy of a model whose weights track an EMA of the trained model's weights.

    Buffers (BatchNorm statistics) are copied, not averaged, as in timm's ``ModelEmaV2``.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9997) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = self.current_decay()
        model_state = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = model_state[name].detach()
            if ema_value.dtype.is_floating_point and name in self._parameter_names:
                ema_value.lerp_(value.to(ema_value.dtype), 1.0 - decay)
            else:
                ema_value.copy_(value)

    @property
    def _parameter_names(self) -> set[str]:
        if not hasattr(self, "_names"):
            self._names = {name for name, _ in self.module.named_parameters()}
        return self._names

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
