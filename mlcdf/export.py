"""ONNX export of a run's classifier for deployment, checked against PyTorch.

The exported graph takes float32 RGB images in [0, 1], shape (batch, 3, S, S) with a dynamic batch,
and returns per-label probabilities: the backbone's normalisation and the sigmoid are inside, so a
deployment needs no knowledge of the training recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlcdf.errors import MlcdfError
from mlcdf.inference import load_run_model, read_run
from mlcdf.io import atomic_path, write_json


class Deployable(torch.nn.Module):
    """A model with its input normalisation and output sigmoid built in."""

    def __init__(self, model: torch.nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model((images - self.mean) / self.std))


@dataclass(frozen=True)
class ExportReport:
    path: Path
    image_size: int
    labels: tuple[str, ...]
    max_abs_diff: float
    opset: int


def export_onnx(run_dir: str | Path, out_path: str | Path, *, checkpoint: str = "best", opset: int = 18, check_batch: int = 2, tolerance: float = 1e-4) -> ExportReport:
    """Export a run's model to ONNX and compare onnxruntime with PyTorch on one random batch.

    Raises:
        MlcdfError: the ONNX tools are missing, or the exported model disagrees with PyTorch by more
            than ``tolerance`` (the file is then not written).
    """
    try:
        import onnxruntime
    except ImportError:
        raise MlcdfError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'mlcdf[export]'") from None
    info = read_run(run_dir)
    model = Deployable(load_run_model(info, checkpoint, "cpu"), info.input_mean, info.input_std).eval()
    size = info.config.image_size
    example = torch.rand(check_batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
            verbose=False,
        )
        program.save(str(tmp))
        with torch.no_grad():
            expected = model(example).numpy()
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(["probabilities"], {"images": example.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        if not diff <= tolerance:
            raise MlcdfError(f"the ONNX model differs from PyTorch by {diff:.2e} (> {tolerance:.0e}); not written")
    write_json(
        out_path.with_suffix(".json"),
        {
            "labels": list(info.labels),
            "image_size": size,
            "input": "images: float32 RGB in [0, 1], shape (batch, 3, S, S)",
            "output": "probabilities: float32, shape (batch, labels)",
            "max_abs_diff_vs_pytorch": diff,
        },
    )
    return ExportReport(out_path, size, info.labels, diff, opset)
