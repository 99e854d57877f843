"""Exports of a trained run: ONNX for deployment (checked against PyTorch), and a bundle, the whole detector
as one file (:func:`export_bundle`; the format is :mod:`mlcdf.inference.bundle`).

The ONNX graph takes float32 RGB images in [0, 1], shape (batch, 3, S, S) with a dynamic batch,
and returns per-label probabilities: the run's normalisation and its task's decoding (a sigmoid) are
inside, so a deployment needs no knowledge of the training recipe. A sequence run's graph has its greedy
decoder unrolled (L = C steps, each fed the previous step's argmax) and returns a second output,
``sequence``: (batch, L) int64 step ids in order, 0 = none, as :meth:`mlcdf.tasks.SequenceTask.decode`
gives them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from mlcdf import __version__
from mlcdf.errors import MlcdfError, first_line
from mlcdf.inference.bundle import BUNDLE_SUFFIX, MODEL_CARD, PRIOR_ORDERS, THRESHOLDS, WEIGHTS, is_bundle_file, write_bundle
from mlcdf.inference.runs import RunInfo, load_run_model, read_run
from mlcdf.inference.thresholds import run_evaluations, tuned_thresholds_in
from mlcdf.io import atomic_path, check_file_replaceable, json_object_with, write_json
from mlcdf.tasks import Task
from mlcdf.train.stage import CONFIG_FILE, GRAPH_FILE


class Deployable(torch.nn.Module):
    """A model with its input normalisation and its task's decoding built in: per-label scores, and for a
    task with an order the (B, L) step ids too (a tuple of both then)."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, model: torch.nn.Module, mean, std, task: Task) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model((images - self.mean) / self.std)
        steps = self.task.decode(outputs)
        scores = self.task.scores(outputs)
        return scores if steps is None else (scores, steps)


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
    model = Deployable(load_run_model(info, checkpoint, "cpu"), info.input_mean, info.input_std, info.task).eval()
    size = info.config.input_size
    example = torch.rand(check_batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        result = model(example)
    expected = [t.numpy() for t in (result if isinstance(result, tuple) else (result,))]
    output_names = ["probabilities", "sequence"][: len(expected)]
    # Nested: the .json is renamed into place first, then the .onnx; an error in either writes neither.
    with atomic_path(out_path) as tmp, atomic_path(out_path.with_suffix(".json")) as json_tmp:
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=["images"],
                output_names=output_names,
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
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(output_names, {"images": example.numpy()})
        diff = float(np.abs(got[0] - expected[0]).max())
        if not diff <= tolerance:
            raise MlcdfError(f"the ONNX model differs from PyTorch by {diff:.2e} (> {tolerance:.0e}); not written")
        if len(got) > 1 and not np.array_equal(got[1], expected[1]):
            raise MlcdfError("the ONNX model decodes other sequences than PyTorch on the check batch; not written")
        outputs = "probabilities: float32, shape (batch, labels)"
        if len(got) > 1:
            outputs += "; sequence: int64, shape (batch, steps), the step ids in order (id i is labels[i-1]; 0 = none)"
        write_json(
            json_tmp,
            {
                "labels": list(info.labels),
                "image_size": size,
                "opset": opset,
                "input": "images: float32 RGB in [0, 1], shape (batch, 3, S, S)",
                "output": outputs,
                "max_abs_diff_vs_pytorch": diff,
            },
        )
    return ExportReport(out_path, size, info.labels, diff, opset)


_CARD_METRICS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")


@dataclass(frozen=True)
class BundleReport:
    path: Path
    sha256: str
    size: int
    members: tuple[str, ...]
    model_card: str


def _prior_orders(evaluations: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The "set + prior order" decoder's orders an evaluation recorded, or None (a sequence model has none)."""
    for metrics in evaluations.values():
        decoder = metrics.get("sequence_decoder") or {}
        if isinstance(decoder, dict) and isinstance(decoder.get("prior"), dict):
            return {**decoder["prior"], "estimated_on": decoder.get("estimated_on")}
    return None


def model_card(info: RunInfo, checkpoint: str, evaluations: dict[str, dict[str, Any]], tuned: dict | None) -> str:
    """``MODEL_CARD.md``: what the detector was trained on, how well it did, what it is for and is not."""
    config, alignment = info.config, info.alignment
    lines = [
        f"# mlcdf detector: {config.model} on {info.subset}",
        "",
        f"A multi-label deepfake classifier written by mlcdf {__version__} (`mlcdf export --bundle`). For a face image it",
        f"gives, for each of {len(info.labels)} manipulations, the probability that it was applied.",
        "",
        "## Model",
        "",
        f"- architecture: `{config.model}`, {info.num_params / 1e6:.1f} M parameters; weights: the `{checkpoint}` checkpoint",
        f"- input: RGB {config.image_size}x{config.image_size}, normalised with mean {list(info.input_mean)} and std {list(info.input_std)}",
        f"- face alignment expected: `{alignment}`",
        f"- labels, in order: {', '.join(info.labels)}",
        "",
        "## Data",
        "",
        f"- subset `{info.subset}` (prepared folder `{Path(config.prepared).name}`); every training option is in `config.json`",
        f"- trained for up to {config.epochs} epochs, batch {config.batch_size}, loss `{config.loss}`, seed {config.seed}",
        "",
        "## Metrics",
        "",
    ]
    if not evaluations:
        lines.append("The run had not been evaluated when it was exported (`mlcdf evaluate --run RUN`).")
    for split, metrics in evaluations.items():
        lines += [f"On the `{split}` split ({metrics.get('num_images', '?')} images), in percent:", ""]
        lines += ["| " + " | ".join(_CARD_METRICS) + " |", "|" + " --- |" * len(_CARD_METRICS)]
        lines += ["| " + " | ".join(_percent(metrics.get(name)) for name in _CARD_METRICS) + " |", ""]
        per_label = metrics.get("per_label") or {}
        if per_label:
            lines += ["| label | support | AP | F1 | threshold |", "| --- | ---: | ---: | ---: | ---: |"]
            for label, row in per_label.items():
                lines.append(
                    f"| {label} | {row.get('support', '-')} | {_percent(row.get('AP'))} | {_percent(row.get('F1'))} | {_threshold(row.get('threshold'))} |"
                )
            lines.append("")
    if tuned is not None:
        lines += [
            f"Per-label thresholds tuned for {tuned['objective']} on {tuned['tuned_on']} are in `thresholds.json`; `mlcdf predict` and `mlcdf serve` apply them by default (`--threshold auto`).",
            "",
        ]
    lines += [
        "",
        "## Intended use",
        "",
        "Screening face images for the listed manipulations, by an analyst who checks the evidence (the Grad-CAM",
        "maps of `mlcdf explain`). Scores are probabilities from one model, not proof.",
        "",
        "## Limits",
        "",
        "- It knows only the manipulations listed, made as its training data made them; other generators, edits",
        "  and real-world degradations (compression, resizing, screenshots) can go undetected or be misnamed.",
        f"- It expects faces cropped and aligned as its training images were (`{alignment}`); a whole photo is out of",
        "  its distribution and its scores mean little.",
        "- Metrics above are on held-out images of the same dataset; performance on other data is unknown.",
        "",
    ]
    return "\n".join(lines)


def _percent(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def _threshold(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def export_bundle(run_dir: str | Path, out_path: str | Path, *, checkpoint: str = "best") -> BundleReport:
    """Write a run as one bundle file (:mod:`mlcdf.inference.bundle`): weights, config, normalisation,
    alignment, tuned thresholds and prior orders where the run has them, and a model card.

    Raises:
        MlcdfError: the output is not a ``.mlcdf`` name, is taken by a file that is not a bundle, or the
            run is itself a bundle; the run's errors (:func:`read_run`, :func:`load_run_model`).
    """
    out_path = Path(out_path)
    if out_path.suffix != BUNDLE_SUFFIX:
        raise MlcdfError(f"--bundle {out_path}: a bundle's name ends in {BUNDLE_SUFFIX}")
    check_file_replaceable(out_path, command="mlcdf export", is_own=is_bundle_file)
    info = read_run(run_dir)
    if info.bundle is not None:
        raise MlcdfError(f"{run_dir}: is already a bundle; export a run folder")
    model = load_run_model(info, checkpoint, "cpu")
    # Cloned: safetensors refuses tensors that share memory, which tied weights would.
    weights = safetensors.torch.save({name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()})
    evaluations = run_evaluations(info.run_dir)
    tuned = tuned_thresholds_in(evaluations, info.labels)
    prior = _prior_orders(evaluations)
    card = model_card(info, checkpoint, evaluations, tuned)
    members = {CONFIG_FILE: (info.run_dir / CONFIG_FILE).read_bytes(), WEIGHTS: weights, MODEL_CARD: card.encode("utf-8")}
    if (info.run_dir / GRAPH_FILE).is_file():
        members[GRAPH_FILE] = (info.run_dir / GRAPH_FILE).read_bytes()
    if tuned is not None:
        members[THRESHOLDS] = json.dumps(tuned, indent=2).encode("utf-8")
    if prior is not None:
        members[PRIOR_ORDERS] = json.dumps(prior, indent=2).encode("utf-8")
    manifest = {
        "checkpoint": checkpoint,
        "alignment": info.alignment,
        "labels": list(info.labels),
        "normalisation": {"image_size": info.config.image_size, "mean": list(info.input_mean), "std": list(info.input_std)},
    }
    digest = write_bundle(out_path, members, manifest)
    return BundleReport(out_path, digest, out_path.stat().st_size, tuple(sorted(members)), card)
