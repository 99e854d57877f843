"""Inference written out in the test, independent of mlcdf's inference code, to check its outputs by value.

A run folder is read as a user would read it: ``config.json`` for the model name, labels, image size and
input normalisation, the checkpoint files with ``torch.load(weights_only=True)``; the model comes from the
library factory. Images are decoded and resized with Pillow here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mlcdf.config import TrainConfig
from mlcdf.models import create_model
from mlcdf.train.stage import train

TINY = "timm:test_resnet"
IMAGE_SIZE = 32


def train_tiny_run(prepared: Path, out: Path, *, epochs: int = 2) -> Path:
    train(
        TrainConfig(
            prepared=str(prepared),
            model=TINY,
            out=str(out),
            epochs=epochs,
            batch_size=8,
            image_size=IMAGE_SIZE,
            lr=3e-3,
            workers=0,
            device="cpu",
            patience=0,
        )
    )
    return out


def run_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def checkpoint_weights(run: Path, checkpoint: str) -> dict[str, torch.Tensor]:
    """What ``--checkpoint`` names: best.pt's weights, last.pt's plain weights, or last.pt's EMA weights."""
    file = "best.pt" if checkpoint == "best" else "last.pt"
    state = torch.load(run / "checkpoints" / file, map_location="cpu", weights_only=True)
    return state["ema"]["module"] if checkpoint == "ema" else state["model"]


def model_with(run: Path, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    config = run_config(run)
    model = create_model(config["train"]["model"], len(config["labels"]))
    model.load_state_dict(weights)
    return model.eval()


def image_pixels(paths: list[Path], size: int) -> np.ndarray:
    """uint8 RGB (N, S, S, 3), resized bicubically (as mlcdf.data.images.load_rgb documents)."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BICUBIC)
            images.append(np.asarray(image, dtype=np.uint8))
    return np.stack(images)


def unit_range(pixels: np.ndarray) -> torch.Tensor:
    """float32 (N, 3, S, S) in [0, 1]: the input of an exported model."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def scores_by_hand(run: Path, weights: dict[str, torch.Tensor], paths: list[Path]) -> np.ndarray:
    """``sigmoid(model((x - mean) / std))`` with the run's own mean and std, as float64 (N, labels)."""
    config = run_config(run)
    x = unit_range(image_pixels(paths, config["train"]["image_size"]))
    mean = torch.tensor(config["input_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["input_std"]).view(1, 3, 1, 1)
    return torch.sigmoid(model_with(run, weights)((x - mean) / std)).double().numpy()
