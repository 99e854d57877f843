"""The training loop: one epoch of training, and batched inference.

Each optional feature is one visible branch, as in torchvision's classification reference: AMP
(``autocast_dtype`` and a ``None``-able ``scaler``), EMA, gradient clipping, a per-step scheduler.
The device is passed in; nothing here calls ``.cuda()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from mlcdf.errors import MlcdfError
from mlcdf.train.distributed import gather_rows, mean_over_ranks

#: Steps between loss reads: reading the loss synchronises the GPU, so it is not done every step.
LOG_EVERY = 10


class NonFiniteLossError(MlcdfError):
    """The loss became NaN or infinite; training stops and the last good checkpoint stays."""


@dataclass
class StepInfo:
    epoch: int
    step: int
    steps: int
    loss: float
    lr: float
    images_per_s: float


@dataclass
class EpochStats:
    loss: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op when mixed precision is off."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def train_one_epoch(
    model: torch.nn.Module,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loader,
    device: torch.device,
    epoch: int,
    *,
    prepare_input: Callable[[dict], torch.Tensor],
    scheduler=None,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
    ema=None,
    clip_grad_norm: float | None = None,
    loss_scale: float = 1.0,
    on_step: Callable[[StepInfo], None] | None = None,
    forward: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> EpochStats:
    """Train for one pass over ``loader`` and return the mean loss and throughput.

    Args:
        prepare_input: turns a loader batch into the model's input on ``device`` (augmentation and
            normalisation happen there).
        loss_scale: multiplies the loss before backward; a distributed run with a sum-reduced loss
            passes its world size, because DDP averages gradients over ranks.
        forward: ``forward(model, x, targets)`` gives the outputs the loss reads: the task's
            :meth:`~mlcdf.tasks.Task.train_outputs` (a sequence model reads the targets); ``model(x)`` when None.

    The loss reported (and checked) is the mean over all distributed ranks, so every rank logs the same
    value and stops at the same step when it is not finite.

    Raises:
        NonFiniteLossError: the loss is NaN or infinite (checked every ``LOG_EVERY`` steps and at the end).
    """
    model.train()
    steps = len(loader)
    running = torch.zeros((), device=device)
    images = 0
    start = time.perf_counter()
    for step, batch in enumerate(loader, start=1):
        x = prepare_input(batch)
        y = batch["targets"].to(device, non_blocking=device.type == "cuda")
        with autocast(device, autocast_dtype):
            logits = model(x) if forward is None else forward(model, x, y)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        stepped = True
        if scaler is not None:
            scaler.scale(loss * loss_scale).backward()
            if clip_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            # The schedule must not advance for a step the scaler skipped (inf/NaN gradients).
            stepped = scaler_step(scaler, optimizer)
        else:
            (loss * loss_scale).backward()
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
        if scheduler is not None and stepped:
            scheduler.step()
        if ema is not None:
            ema.update()
        running += loss.detach()
        images += x.shape[0]
        if step % LOG_EVERY == 0 or step == steps:
            mean_loss = mean_over_ranks(running).item() / step
            if not np.isfinite(mean_loss):
                raise NonFiniteLossError(
                    f"the training loss became {mean_loss} at epoch {epoch + 1}, step {step}; "
                    "the last good checkpoint is kept (try a lower --lr)"
                )
            if on_step is not None:
                elapsed = time.perf_counter() - start
                on_step(StepInfo(epoch, step, steps, mean_loss, optimizer.param_groups[0]["lr"], images / elapsed))
    seconds = time.perf_counter() - start
    return EpochStats(loss=mean_over_ranks(running).item() / max(steps, 1), images=images, seconds=seconds)


def scaler_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """``scaler.step(optimizer)`` then ``scaler.update()``; whether the optimizer step ran.

    The scaler skips the step on inf/NaN gradients, a decision it takes on the host (the one GPU sync it
    needs anyway); a post-step hook of the optimizer learns the outcome without another, where comparing
    ``get_scale()`` before and after would cost two more syncs per step. (A fused or capturable optimizer
    takes the step always and skips inside its kernel; mlcdf builds neither.)
    """
    ran = []
    hook = optimizer.register_step_post_hook(lambda *_: ran.append(True))
    try:
        scaler.step(optimizer)
    finally:
        hook.remove()
    scaler.update()
    return bool(ran)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    loader,
    device: torch.device,
    *,
    to_scores: Callable[[torch.Tensor], torch.Tensor],
    prepare_input: Callable[[dict], torch.Tensor],
    autocast_dtype: torch.dtype | None = None,
    progress: Callable | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label scores for every image of ``loader``, gathered over distributed ranks.

    ``to_scores`` decodes a batch of model outputs into (B, C) probabilities: the task's
    :meth:`~mlcdf.tasks.Task.scores`.

    Returns:
        ``(scores, targets, indices)``: float64 (N, C) probabilities, float32 (N, C) targets and the
        dataset row of each, sorted by row so that a sharded run returns rows in dataset order.
    """
    model.eval()
    scores, targets, indices = [], [], []
    batches = progress(loader, "Predicting", total=len(loader)) if progress is not None else loader
    for batch in batches:
        x = prepare_input(batch)
        with autocast(device, autocast_dtype):
            logits = model(x)
        scores.append(to_scores(logits))
        # Targets and indices stay on the host until the end: a per-batch copy to the device would wait.
        targets.append(batch["targets"])
        indices.append(batch["indices"])
    # A rank without rows does not know the label count; gather_rows takes it from the other ranks.
    num_labels = scores[0].shape[1] if scores else 0
    score = gather_rows(torch.cat(scores) if scores else torch.zeros((0, num_labels), device=device))
    target = gather_rows((torch.cat(targets) if targets else torch.zeros((0, num_labels))).to(device))
    index = gather_rows((torch.cat(indices) if indices else torch.zeros((0,), dtype=torch.int64)).to(device))
    order = torch.argsort(index)
    return (
        score[order].cpu().double().numpy(),
        target[order].cpu().numpy(),
        index[order].cpu().numpy(),
    )
