"""Which device a process computes on: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

Part of the core, below every stage (the graph builder needs a device as much as the trainer does), so
torch is imported only when a device is resolved: importing this module stays cheap.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mlcdf.errors import MlcdfError

if TYPE_CHECKING:
    import torch

#: The device names a run may ask for, as :func:`resolve_device` takes them.
DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:[0-9]{1,4})?")
#: The environment of a process started on GPUs, besides its ``CUDA_VISIBLE_DEVICES``: CUDA numbers GPUs
#: fastest first by default, ``nvidia-smi`` and Slurm by PCI bus; this makes GPU N the ``nvidia-smi`` one.
#: A ``CUDA_DEVICE_ORDER`` the user set is kept.
CUDA_ORDER = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


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


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (numbers, or UUIDs), in the
    order CUDA numbers them: this process's GPU i is entry i. Without ``CUDA_VISIBLE_DEVICES`` (nothing
    inherited, e.g. a whole machine), ``0 .. N-1``; a job given GPUs 4-7 gets ``["4", "5", "6", "7"]``."""
    import torch

    count = torch.cuda.device_count()
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is None:
        return [str(index) for index in range(count)]
    # CUDA stops at the first entry it cannot use, so the usable ones are the first `count`.
    return [name.strip() for name in inherited.split(",") if name.strip()][:count]


def _visible_text(visible: Sequence[str]) -> str:
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={inherited})" if inherited is not None else ""
    return f"this process sees {len(visible)} GPU(s){where}" if visible else f"no GPU is visible here{where}"


def device_slots(devices: Sequence[str], per_run: int) -> list[str]:
    """Where each run of ``--devices`` goes, ``per_run`` devices at a time: ``cpu``, or the
    ``CUDA_VISIBLE_DEVICES`` of the run's process, the GPUs it gets (comma-separated).

    A GPU number counts this process's visible GPUs (:func:`visible_gpus`), so that ``--devices 0,1``
    in a job given GPUs 4-7 means GPUs 4 and 5, and never a GPU of another job. ``cpu`` entries make a
    run of ``per_run`` CPU processes (gloo).

    Raises:
        MlcdfError: a count that does not split into runs, a GPU number this process does not see, a
            run given a GPU twice or GPUs and ``cpu`` together.
    """
    given = ",".join(devices)
    if not devices or len(devices) % per_run:
        raise MlcdfError(
            f"--devices {given or '(none)'}: {len(devices)} device(s) do not make runs of --gpus-per-run {per_run}; "
            f"list {per_run} devices per run (e.g. --devices {','.join(str(i) for i in range(per_run))})"
        )
    numbers = [device for device in devices if device != "cpu"]
    visible = visible_gpus() if numbers else []
    beyond = next((number for number in numbers if int(number) >= len(visible)), None)
    if beyond is not None:
        raise MlcdfError(f"--devices {given}: no GPU {beyond}; {_visible_text(visible)}, numbered from 0")
    slots = []
    for start in range(0, len(devices), per_run):
        group = devices[start : start + per_run]
        if "cpu" in group and set(group) != {"cpu"}:
            raise MlcdfError(f"--devices {given}: the devices of one run ({','.join(group)}) are all GPUs or all cpu")
        if "cpu" not in group and len(set(int(number) for number in group)) < len(group):
            raise MlcdfError(f"--devices {given}: one run is given a GPU twice ({','.join(group)})")
        slots.append("cpu" if "cpu" in group else ",".join(visible[int(number)] for number in group))
    return slots


def default_slots(jobs: int) -> list[str] | None:
    """``--jobs N`` without ``--devices``: one visible GPU each (the first N), as :func:`device_slots`
    gives them; ``None`` where no GPU is visible (each run takes its own device, the CPU).

    Raises:
        MlcdfError: fewer visible GPUs than ``jobs`` (runs sharing a GPU are asked for with ``--devices``).
    """
    visible = visible_gpus()
    if not visible:
        return None
    if jobs > len(visible):
        example = ",".join(str(index % len(visible)) for index in range(jobs))
        raise MlcdfError(
            f"--jobs {jobs} without --devices runs one run per GPU, and {_visible_text(visible)}; "
            f"give --devices to share them (e.g. --devices {example}) or fewer --jobs"
        )
    return visible[:jobs]
