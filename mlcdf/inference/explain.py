"""Grad-CAM explanations: where in the image the model sees each manipulation.

Grad-CAM (Selvaraju et al., ICCV 2017): for label ``c`` with logit ``y_c`` and the last feature map
``A`` (K channels, H x W), the channel weights are the spatially averaged gradients
``a_k = mean_ij dy_c / dA_kij`` and the map is ``ReLU(sum_k a_k A_k)``, upsampled to the image. It needs
only ``forward_features`` and ``forward_head``, which every mlcdf model has, so direct and graph models
are explained the same way (for a graph model ``y_c`` is the image feature times label c's GCN
classifier).

A sequence model (SeqFakeFormer) is explained per predicted step instead: ``y`` is the logit of the
token the greedy decoder emitted at step t, a function of the feature map through the encoder and the
decoder's cross-attention (the tokens before step t are the greedy path's, fixed). Its ``forward_head``
scales the decoder's reference points by the feature map's side, which is the input's side over the
stride for every input size the stride divides (256 px at stride 32 or 16): then the path explained is
the one ``mlcdf predict`` prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw

from mlcdf.data.dataset import no_augmentation, to_model_input
from mlcdf.data.images import load_rgb, load_rgb_within
from mlcdf.devices import resolve_device
from mlcdf.errors import MlcdfError
from mlcdf.inference.runs import load_run_model, read_run
from mlcdf.io import check_file_replaceable, check_output_folder, png_written_by, save_png
from mlcdf.models import BackboneClassifier
from mlcdf.tasks import Task

_EXPLAIN_COMMAND = "mlcdf explain"

#: Overlays of larger images are drawn at this longest side, so a huge photo costs no huge canvases.
OVERLAY_MAX_SIDE = 1024
#: Up to this many labels ``<stem>_all.png`` is one row of overlays; beyond, a near-square grid.
MAX_STRIP_PANELS = 6


def _features_and_outputs(model: BackboneClassifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature map (with gradients) and the head's outputs for ``x``, the graph kept for :func:`_cam`."""
    with torch.enable_grad():
        features = model.forward_features(x)
        if not features.requires_grad:
            features.requires_grad_(True)
        return features, model.forward_head(features)


def _cam(features: torch.Tensor, target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The Grad-CAM map (size) of the scalar ``target`` over ``features`` (1, K, H, W), scaled to [0, 1]
    (all zeros where no location raises it)."""
    (gradients,) = torch.autograd.grad(target, features, retain_graph=True)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0, 0]
    peak = cam.max()
    return (cam / peak if peak > 0 else cam).detach()


def grad_cam(model: BackboneClassifier, x: torch.Tensor, label_indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps of one image for the given labels, of a multi-label model.

    Args:
        model: an mlcdf model in eval mode, with one logit per label.
        x: the model input, shape (1, 3, S, S).
        label_indices: which labels to explain.

    Returns:
        ``(maps, probabilities)``: float32 (L, S, S) maps scaled to [0, 1] per label (all zeros where
        no location raises the logit), and the (n_labels,) sigmoid scores.

    Raises:
        MlcdfError: the model's outputs are not one logit per label (a sequence model's are per step:
            :func:`explain_image` explains those).
    """
    features, logits = _features_and_outputs(model, x)
    if logits.dim() != 2:
        raise MlcdfError("Grad-CAM per label needs one logit per label; a sequence model is explained per predicted step (mlcdf explain)")
    size = (x.shape[-2], x.shape[-1])
    maps = [_cam(features, logits[0, index], size) for index in label_indices]
    probabilities = torch.sigmoid(logits.detach().float())[0]
    return torch.stack(maps).cpu().float().numpy(), probabilities.cpu().numpy()


@dataclass(frozen=True)
class _Target:
    """One map to draw: its name (a label, or ``real``), probability, step (1-based; None for a label of
    a multi-label model) and the scalar whose Grad-CAM it is."""

    name: str
    probability: float
    step: int | None
    output: torch.Tensor

    @property
    def suffix(self) -> str:
        return self.name if self.step is None else f"step{self.step}_{self.name}"

    @property
    def caption(self) -> str:
        return f"{self.name}: p={self.probability:.2f}" if self.step is None else f"step {self.step} {self.name}: p={self.probability:.2f}"


#: The name of the one step explained when the decoder predicts no manipulation: its end token at step 1.
REAL_STEP = "real"


def _targets(task: Task, outputs: torch.Tensor, labels: tuple[str, ...], chosen: list[str] | None) -> list[_Target]:
    """What to explain in one image's outputs: each chosen label of a multi-label model, or each predicted
    step of a sequence model whose label is chosen (``chosen`` None: all; a real prediction: its end token).

    Raises:
        MlcdfError: a sequence model predicted none of the chosen labels.
    """
    detached = outputs.detach()
    steps = task.decode(detached)
    if steps is None:
        scores = task.scores(detached)[0]
        names = chosen or list(labels)
        return [_Target(name, float(scores[labels.index(name)]), None, outputs[0, labels.index(name)]) for name in names]
    step_probabilities = task.step_probabilities(detached)
    assert step_probabilities is not None, "a task that decodes steps gives their probabilities"
    # The steps that name a manipulation; a PAD token the decoder emitted before any EOS names none.
    predicted = [(index, token) for index, token in enumerate(steps[0].tolist()) if 1 <= token <= len(labels)]
    if not predicted:
        end = int(detached[0, 0].argmax())
        probability = float(detached[0, 0].float().softmax(dim=-1)[end])
        targets = [_Target(REAL_STEP, probability, 1, outputs[0, 0, end])]
    else:
        targets = [
            _Target(labels[token - 1], float(step_probabilities[0, index]), index + 1, outputs[0, index, token])
            for index, token in predicted
        ]
    if chosen is None:
        return targets
    kept = [target for target in targets if target.name in chosen]
    if not kept:
        sequence = " > ".join(target.name for target in targets)
        raise MlcdfError(f"the predicted sequence is {sequence!r}: it has no step {', '.join(chosen)} to explain (try --label all)")
    return kept


def overlay(image: np.ndarray, heat: np.ndarray, caption: str, alpha: float = 0.45) -> Image.Image:
    """Blend a [0, 1] heat map (any size) over an RGB image with the 'jet' colour map, captioned below."""
    height, width = image.shape[:2]
    heat_image = Image.fromarray((heat * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR)
    colours = colormaps["jet"](np.asarray(heat_image, dtype=np.float32) / 255.0)[..., :3]
    blended = (1 - alpha) * image.astype(np.float32) / 255.0 + alpha * colours
    canvas = Image.new("RGB", (width, height + 22), "white")
    canvas.paste(Image.fromarray((blended * 255).clip(0, 255).astype(np.uint8)), (0, 0))
    ImageDraw.Draw(canvas).text((4, height + 5), caption, fill="black")
    return canvas


@dataclass(frozen=True)
class Explanation:
    """One overlay written: its label (``real`` for a sequence model's end token), probability, path, and
    for a sequence model the step (1-based) it explains."""

    label: str
    probability: float
    path: Path
    step: int | None = None


def explain_image(
    run_dir: str | Path,
    image_path: str | Path,
    out_dir: str | Path,
    *,
    labels: list[str] | None = None,
    checkpoint: str = "best",
    device: str = "auto",
) -> list[Explanation]:
    """Write ``OUT/<stem>_<label>.png`` Grad-CAM overlays (and ``<stem>_all.png``, all of them side by side).

    A sequence run (SeqFakeFormer) gets one overlay per predicted step, ``OUT/<stem>_step<t>_<label>.png``
    (``labels`` keeps the steps of those labels), or ``<stem>_step1_real.png`` (its end token) when it
    predicts no manipulation. An existing file of those names is replaced only when it is an earlier
    overlay (a PNG stamped by ``mlcdf explain``).

    Raises:
        MlcdfError: an unknown label name, an unreadable image, an output name taken by another file, or
            a sequence run that predicted none of ``labels``.
    """
    info = read_run(run_dir)
    unknown = [name for name in labels or [] if name not in info.labels]
    if unknown:
        raise MlcdfError(f"unknown label(s) {unknown}; this run's labels are {', '.join(info.labels)}")
    image_path, out_dir = Path(image_path), Path(out_dir)
    check_output_folder(out_dir)
    try:
        original = load_rgb_within(image_path, OVERLAY_MAX_SIDE)
        resized = load_rgb(image_path, info.config.input_size)
    except OSError as error:
        raise MlcdfError(f"{image_path}: cannot read the image ({error})") from None
    torch_device = resolve_device(device)
    model = load_run_model(info, checkpoint, torch_device)
    batch = {"images": torch.from_numpy(resized[None].copy()), **no_augmentation(1)}
    x = to_model_input(batch, torch_device, info.input_mean, info.input_std)
    features, model_outputs = _features_and_outputs(model, x)
    targets = _targets(info.task, model_outputs, info.labels, labels or None)
    # Checked before anything is written; a sequence model's names are known once its steps are.
    outputs = [out_dir / f"{image_path.stem}_{target.suffix}.png" for target in targets]
    strip_path = out_dir / f"{image_path.stem}_all.png" if len(targets) > 1 else None
    for path in [*outputs, *([strip_path] if strip_path else [])]:
        check_file_replaceable(path, command=_EXPLAIN_COMMAND, is_own=png_written_by(_EXPLAIN_COMMAND))
    size = (x.shape[-2], x.shape[-1])
    results, panels = [], []
    for target, path in zip(targets, outputs):
        heat = _cam(features, target.output, size).cpu().float().numpy()
        panel = overlay(original, heat, target.caption)
        save_png(panel, path, command=_EXPLAIN_COMMAND)
        panels.append(panel)
        results.append(Explanation(target.name, target.probability, path, target.step))
    if strip_path is not None:
        # One row up to MAX_STRIP_PANELS labels; beyond, a near-square grid, so that 40 labels do not make
        # an image 40 overlays wide.
        columns = len(panels) if len(panels) <= MAX_STRIP_PANELS else math.ceil(math.sqrt(len(panels)))
        rows = math.ceil(len(panels) / columns)
        width, height = panels[0].size
        strip = Image.new("RGB", (columns * width, rows * height), "white")
        for offset, panel in enumerate(panels):
            strip.paste(panel, (offset % columns * width, offset // columns * height))
        save_png(strip, strip_path, command=_EXPLAIN_COMMAND)
    return results
