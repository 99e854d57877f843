"""Which device a process computes on: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

Part of the core, below every stage (the graph builder needs a device as much as the trainer does), so
torch is imported only when a device is resolved: importing this module stays cheap.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mlcdf.errors import MlcdfError

if TYPE_CHECKING:
    import torch

#: The device names a run may ask for, as :func:`resolve_device` takes them.
DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:[0-9]{1,4})?")


def is_device_name(requested: str) -> bool:
    """Whether ``requested`` is a device name :func:`resolve_device` knows (:data:`DEVICE_NAMES`), checked
    without torch, so that plans and options are checked before anything loads it."""
    return _DEVICE_NAME.fullmatch(requested) is not None


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when present, else the CPU; ``cpu``, ``cuda`` or ``cuda:N`` as given.

    A bare ``cuda`` means this process's GPU: ``local_rank`` under torchrun, else GPU 0. A CUDA device
    also becomes the current one (``torch.cuda.set_device``).

    Raises:
        MlcdfError: CUDA was asked for but is not available, or the name is not a CPU or CUDA device.
    """
    import torch

    if not is_device_name(requested):
        raise MlcdfError(f"unknown device {requested!r}; expected {DEVICE_NAMES}")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise MlcdfError(f"unknown device {requested!r}; expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MlcdfError(f"--device {requested} was asked for, but CUDA is not available here (use cpu or auto)")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        # Code that allocates on plain "cuda" (GradScaler, cuDNN autotuning, pinned-memory threads)
        # uses the current device; it must be this one, not GPU 0.
        torch.cuda.set_device(device)
    return device
