"""Checkpoint files: written atomically, read with ``torch.load(weights_only=True)`` only.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so the safe loader reads
it and nothing in the project unpickles arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError, first_line
from mlcdf.io import atomic_path


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (nested dicts, lists, tuples) moved to the CPU.

    A checkpoint of CUDA tensors does not load on a machine without CUDA under
    ``torch.load(weights_only=True)`` unless the reader remaps it; saved on the CPU, it loads anywhere.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(item) for item in value)
    return value


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically.

    Raises:
        MlcdfError: the file could not be written (torch's writer reports a full disk or a file size
            limit as a RuntimeError without the reason); the previous file at ``path`` is kept.
    """
    with atomic_path(path) as tmp:
        try:
            torch.save(on_cpu(state), tmp)
        except RuntimeError as error:
            raise MlcdfError(f"{path}: could not write the checkpoint, is the disk full? ({first_line(error)})") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU.

    Raises:
        MissingArtifactError: no file at ``path``.
        SchemaError: the file is not a checkpoint the safe loader can read.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(path, "train a model with 'mlcdf train' first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch raises several types for corrupt or unsafe files)
        raise SchemaError(path, f"not a readable mlcdf checkpoint ({type(error).__name__}: {first_line(error)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise SchemaError(path, "not an mlcdf checkpoint (no 'model' entry)")
    return state


def load_error_summary(error: BaseException, limit: int = 200) -> str:
    """One line for a failed ``load_state_dict``: torch's first line only names the class, so the line
    after it (a size mismatch, missing or unexpected keys) is kept, cut to ``limit`` characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
