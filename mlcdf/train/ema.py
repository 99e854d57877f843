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

    Buffers (BatchNorm statistics) are copied, not averaged, as in timm's ``ModelEmaV2``. Each EMA
    tensor is paired once with the trained model's own tensor, so :meth:`update` works whatever wraps
    the model during training (DistributedDataParallel, ``torch.compile``: they share its tensors but
    rename them in ``state_dict``). Loading weights into the model in place keeps the pairing valid.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9997) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        pairs = list(zip(self.module.parameters(), model.parameters()))
        # Floating-point weights are averaged, anything else (and every buffer) is copied; grouping them
        # once lets each update be a few multi-tensor kernels instead of one kernel per tensor.
        averaged = [(e, v) for e, v in pairs if e.dtype.is_floating_point and e.dtype == v.dtype]
        copied: list[tuple[torch.Tensor, torch.Tensor]] = [
            (e, v) for e, v in pairs if not (e.dtype.is_floating_point and e.dtype == v.dtype)
        ]
        copied += list(zip(self.module.buffers(), model.buffers()))
        self._averaged = tuple(list(side) for side in zip(*averaged)) or ([], [])
        self._copied = tuple(list(side) for side in zip(*copied)) or ([], [])

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the EMA one step towards the trained model's current weights."""
        self.updates += 1
        weight = 1.0 - self.current_decay()
        if self._averaged[0]:
            torch._foreach_lerp_(self._averaged[0], self._averaged[1], weight)
        if self._copied[0]:
            torch._foreach_copy_(self._copied[0], self._copied[1])

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
