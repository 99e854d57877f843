"""TensorBoard curves of a training run (``mlcdf train --tensorboard DIR``), from the optional extra.

``log.jsonl`` stays the record: the event files in DIR mirror it, one point per epoch and scalar at
step = the epoch (0-based, as in ``log.jsonl``), written after the epoch's commit point (``last.pt``)
and flushed at once, so they never show an epoch the run does not have. Only rank 0 writes them.

A resumed run first adds the committed epochs that DIR lacks (all of them when DIR is new to the run,
none when it has them already) and then goes on, so every epoch shows once. It opens its writer with
``purge_step`` at its first epoch, so TensorBoard hides any point an earlier use of DIR left at or after
that epoch (an earlier run in the same folder, for a fresh start). Give each run its own DIR (under one
parent for ``tensorboard --logdir PARENT``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mlcdf.errors import MlcdfError

if TYPE_CHECKING:
    from mlcdf.train.callbacks import TrainCallbacks
    from mlcdf.train.engine import StepInfo

INSTALL = "pip install 'mlcdf[tensorboard]'"

#: TensorBoard tag -> the ``log.jsonl`` key it plots.
SCALARS = {
    "train/loss": "train_loss",
    "train/lr": "lr",
    "val/mAP": "val_mAP",
    "val/mAP_ema": "val_mAP_ema",
    "throughput/images_per_s": "images_per_s",
}


def require_tensorboard() -> None:
    """Check, before any work, that the extra is installed.

    Raises:
        MlcdfError: it is not, with the command that installs it.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (imports the tensorboard package)
    except ImportError:
        raise MlcdfError(f"--tensorboard needs the TensorBoard extra: {INSTALL}") from None


def _epochs_written(log_dir: Path, before: int) -> set[int]:
    """The epochs before ``before`` that the event files in ``log_dir`` already show."""
    if not log_dir.is_dir():
        return set()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every point
    accumulator.Reload()
    tag = next(iter(SCALARS))
    if tag not in accumulator.Tags()["scalars"]:
        return set()
    return {event.step for event in accumulator.Scalars(tag) if event.step < before}


class TensorBoardCallbacks:
    """Training callbacks that write each finished epoch to TensorBoard, then pass every call on to ``inner``."""

    def __init__(self, log_dir: str | Path, inner: TrainCallbacks, history: list[dict]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(log_dir)
        start = history[-1]["epoch"] + 1 if history else 0
        written = _epochs_written(log_dir, start) if history else set()
        self.inner = inner
        self.writer = SummaryWriter(str(log_dir), purge_step=start)
        for record in history:
            if record["epoch"] not in written:
                self._write(record)
        self.writer.flush()

    def _write(self, record: dict) -> None:
        for tag, key in SCALARS.items():
            if record.get(key) is not None:  # val_mAP_ema is None without EMA
                self.writer.add_scalar(tag, record[key], global_step=record["epoch"])

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.inner.epoch_start(epoch, epochs, steps)

    def step(self, info: StepInfo) -> None:
        self.inner.step(info)

    def epoch_end(self, record: dict) -> None:
        self._write(record)
        self.writer.flush()  # a killed run keeps every committed epoch (the writer buffers up to 2 minutes)
        self.inner.epoch_end(record)

    def message(self, text: str) -> None:
        self.inner.message(text)

    def close(self) -> None:
        self.writer.close()
