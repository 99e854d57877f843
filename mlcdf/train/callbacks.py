"""What a training run tells its caller: the callback protocol and a silent implementation."""

from __future__ import annotations

from typing import Protocol

from mlcdf.train.engine import StepInfo


class TrainCallbacks(Protocol):
    """What the CLI (or a notebook) wants to hear about; every method may be a no-op."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...

    def step(self, info: StepInfo) -> None: ...

    def epoch_end(self, record: dict) -> None: ...

    def message(self, text: str) -> None: ...


class SilentCallbacks:
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, info: StepInfo) -> None:
        pass

    def epoch_end(self, record: dict) -> None:
        pass

    def message(self, text: str) -> None:
        pass
