"""ONNX export of a run's classifier for deployment, checked against PyTorch.

The exported graph takes float32 RGB images in [0, 1], shape (batch, 3, S, S) with a dynamic batch,
and returns per-label probabilities: the backbone's normalisation and the sigmoid are inside, so a
deployment needs no knowledge of the training recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlcdf.errors import MlcdfError, first_line
from mlcdf.inference.runs import load_run_model, read_run
from mlcdf.io import atomic_path, check_file_replaceable, json_object_with, write_json


class Deployable(torch.nn.Module):
    """A model with its input normalisation and its task's decoding into scores (a sigmoid) built in."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, model: torch.nn.Module, mean, std, to_scores: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.to_scores = to_scores
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.to_scores(self.model((images - self.mean) / self.std))


@dataclass(frozen=True)
class ExportReport:
    path: Path
    image_size: int
    labels: tuple[str, ...]
    max_abs_diff: float
    opset: int


def supported_opsets() -> range:
    """The ONNX opsets the installed torch exports to.

    Its exporter has operator implementations from ``TORCHLIB_OPSET`` (18) up to ``ONNX_MAX_OPSET``;
    a lower request goes through a version conversion that fails on ordinary CNNs (it then logs a
    traceback and keeps opset 18), so lower opsets are refused instead of written wrongly.
    """
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
        from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET
    except ImportError:
        # Private names: should a later torch move them, allow only the exporter's default opset (the
        # written opset is checked after export anyway).
        return range(18, 19)
    return range(TORCHLIB_OPSET, ONNX_MAX_OPSET + 1)


def model_opset(path: str | Path) -> int:
    """The default-domain (``ai.onnx``) opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


#: The ``.json`` that export writes beside the ``.onnx`` (its keys): how an earlier export is known.
_is_export_record = json_object_with({"labels", "image_size", "opset", "input", "output", "max_abs_diff_vs_pytorch"})


def check_export_replaceable(path: Path) -> None:
    """Raise unless ``path`` and its ``.json`` are absent or an earlier export (an ``.onnx`` is known as
    ours by the record beside it, since ONNX files of other tools look the same)."""
    check_file_replaceable(path, command="mlcdf export", is_own=lambda onnx: _is_export_record(onnx.with_suffix(".json")))
    check_file_replaceable(path.with_suffix(".json"), command="mlcdf export", is_own=_is_export_record)


def export_onnx(
    run_dir: str | Path, out_path: str | Path, *, checkpoint: str = "best", opset: int = 18, check_batch: int = 2, tolerance: float = 1e-4
) -> ExportReport:
    """Export a run's model to ONNX and compare onnxruntime with PyTorch on one random batch.

    The ``.onnx`` and the ``.json`` beside it appear together, and only when every check passes.

    Raises:
        MlcdfError: the ONNX tools are missing, ``opset`` is outside :func:`supported_opsets`, torch
            cannot export the model, or the exported model has another opset or disagrees with
            PyTorch by more than ``tolerance`` (nothing is then written), or an output name is taken by
            a file that is not an earlier export.
    """
    out_path = Path(out_path)
    check_export_replaceable(out_path)
    try:
        import onnxruntime
    except ImportError:
        raise MlcdfError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'mlcdf[export]'") from None
    opsets = supported_opsets()
    if opset not in opsets:
        raise MlcdfError(f"--opset {opset}: torch {torch.__version__} exports ONNX opsets {opsets.start} to {opsets.stop - 1}")
    info = read_run(run_dir)
    model = Deployable(load_run_model(info, checkpoint, "cpu"), info.input_mean, info.input_std, info.task.scores).eval()
    size = info.config.image_size
    example = torch.rand(check_batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    # Nested: the .json is renamed into place first, then the .onnx; an error in either writes neither.
    with atomic_path(out_path) as tmp, atomic_path(out_path.with_suffix(".json")) as json_tmp:
        try:
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
        except torch.onnx.errors.OnnxExporterError as error:
            raise MlcdfError(f"torch.onnx cannot export this model at opset {opset}: {first_line(error)}") from None
        assert program is not None, "torch.onnx.export returns the program with dynamo=True (None is the legacy exporter's)"
        program.save(str(tmp))
        written = model_opset(tmp)
        if written != opset:
            raise MlcdfError(f"torch.onnx wrote opset {written} instead of the requested {opset}; not written")
        with torch.no_grad():
            expected = model(example).numpy()
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(["probabilities"], {"images": example.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        if not diff <= tolerance:
            raise MlcdfError(f"the ONNX model differs from PyTorch by {diff:.2e} (> {tolerance:.0e}); not written")
        write_json(
            json_tmp,
            {
                "labels": list(info.labels),
                "image_size": size,
                "opset": opset,
                "input": "images: float32 RGB in [0, 1], shape (batch, 3, S, S)",
                "output": "probabilities: float32, shape (batch, labels)",
                "max_abs_diff_vs_pytorch": diff,
            },
        )
    return ExportReport(out_path, size, info.labels, diff, opset)
