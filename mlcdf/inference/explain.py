"""Grad-CAM explanations: where in the image the model sees each manipulation.

Grad-CAM (Selvaraju et al., ICCV 2017): for label ``c`` with logit ``y_c`` and the last feature map
``A`` (K channels, H x W), the channel weights are the spatially averaged gradients
``a_k = mean_ij dy_c / dA_kij`` and the map is ``ReLU(sum_k a_k A_k)``, upsampled to the image. It needs
only ``forward_features`` and ``forward_head``, which every mlcdf model has, so direct and graph models
are explained the same way (for a graph model ``y_c`` is the image feature times label c's GCN
classifier).
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

_EXPLAIN_COMMAND = "mlcdf explain"

#: Overlays of larger images are drawn at this longest side, so a huge photo costs no huge canvases.
OVERLAY_MAX_SIDE = 1024
#: Up to this many labels ``<stem>_all.png`` is one row of overlays; beyond, a near-square grid.
MAX_STRIP_PANELS = 6


def grad_cam(model: BackboneClassifier, x: torch.Tensor, label_indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps of one image for the given labels.

    Args:
        model: an mlcdf model in eval mode.
        x: the model input, shape (1, 3, S, S).
        label_indices: which labels to explain.

    Returns:
        ``(maps, probabilities)``: float32 (L, S, S) maps scaled to [0, 1] per label (all zeros where
        no location raises the logit), and the (n_labels,) sigmoid scores.
    """
    with torch.enable_grad():
        features = model.forward_features(x)
        if not features.requires_grad:
            features.requires_grad_(True)
        logits = model.forward_head(features)
        maps = []
        for index in label_indices:
            (gradients,) = torch.autograd.grad(logits[0, index], features, retain_graph=True)
            weights = gradients.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((weights * features).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            peak = cam.max()
            maps.append((cam / peak if peak > 0 else cam).detach())
    probabilities = torch.sigmoid(logits.detach().float())[0]
    return torch.stack(maps).cpu().float().numpy(), probabilities.cpu().numpy()


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
    label: str
    probability: float
    path: Path


def explain_image(
    run_dir: str | Path,
    image_path: str | Path,
    out_dir: str | Path,
    *,
    labels: list[str] | None = None,
    checkpoint: str = "best",
    device: str = "auto",
) -> list[Explanation]:
    """Write ``OUT/<stem>_<label>.png`` Grad-CAM overlays (and ``<stem>_all.png``, all labels side by side).

    An existing file of those names is replaced only when it is an earlier overlay (a PNG stamped by
    ``mlcdf explain``).

    Raises:
        MlcdfError: an unknown label name, an unreadable image, or an output name taken by another file.
    """
    info = read_run(run_dir)
    chosen = list(info.labels) if not labels else labels
    unknown = [name for name in chosen if name not in info.labels]
    if unknown:
        raise MlcdfError(f"unknown label(s) {unknown}; this run's labels are {', '.join(info.labels)}")
    image_path, out_dir = Path(image_path), Path(out_dir)
    check_output_folder(out_dir)
    outputs = [out_dir / f"{image_path.stem}_{name}.png" for name in chosen]
    strip_path = out_dir / f"{image_path.stem}_all.png" if len(chosen) > 1 else None
    for path in [*outputs, *([strip_path] if strip_path else [])]:
        check_file_replaceable(path, command=_EXPLAIN_COMMAND, is_own=png_written_by(_EXPLAIN_COMMAND))
    try:
        original = load_rgb_within(image_path, OVERLAY_MAX_SIDE)
        resized = load_rgb(image_path, info.config.image_size)
    except OSError as error:
        raise MlcdfError(f"{image_path}: cannot read the image ({error})") from None
    torch_device = resolve_device(device)
    model = load_run_model(info, checkpoint, torch_device)
    batch = {"images": torch.from_numpy(resized[None].copy()), **no_augmentation(1)}
    x = to_model_input(batch, torch_device, info.input_mean, info.input_std)
    indices = [info.labels.index(name) for name in chosen]
    maps, probabilities = grad_cam(model, x, indices)
    results, panels = [], []
    for name, index, heat, path in zip(chosen, indices, maps, outputs):
        panel = overlay(original, heat, f"{name}: p={probabilities[index]:.2f}")
        save_png(panel, path, command=_EXPLAIN_COMMAND)
        panels.append(panel)
        results.append(Explanation(name, float(probabilities[index]), path))
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
