"""Training throughput (images/s) of one model, measured as ``mlcdf train`` runs; writes JSON.

    python benchmarks/train_throughput.py --model resnet50 --batch-size 128 --image-size 224 --steps 20

It trains through the library's ``train()`` on synthetic images: the image cache, the DataLoader,
augmentation on the device, AMP and channels_last as chosen for the device, cuDNN autotuning, EMA and the
learning-rate schedule. Two epochs of ``--steps`` steps run; the second (warm: autotuning and
``--compile`` done) is reported, as the run's own log records it.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch
from data_pipeline import write_images  # benchmarks/ is this script's folder

from mlcdf.config import TrainConfig
from mlcdf.data.dataset import holdout_rows
from mlcdf.io import write_json
from mlcdf.train.stage import train

VAL_FRACTION = 0.05


def synthetic_prepared(folder: Path, train_images: int, image_size: int) -> Path:
    """A prepared subset (JPEGs of ``image_size`` px, no val split) with at least ``train_images`` kept for training."""
    count = train_images
    while len(holdout_rows(count, VAL_FRACTION, 0)[0]) < train_images:
        count += 1
    return write_images(folder, count, image_size, "jpg")


def measure_training(
    prepared: Path,
    out: Path,
    *,
    model: str = "resnet50",
    batch_size: int = 128,
    image_size: int = 224,
    device: str = "auto",
    compile: bool = False,
    workers: int | None = None,
) -> dict:
    """Train two epochs with ``mlcdf train``'s defaults for ``device``; the second epoch's figures."""
    config = TrainConfig(
        prepared=str(prepared),
        model=model,
        out=str(out),
        epochs=2,
        batch_size=batch_size,
        image_size=image_size,
        device=device,
        compile=compile,
        workers=workers,
        patience=0,
        val_fraction=VAL_FRACTION,
        ema_decay=0.9997,
    )
    result = train(config)
    run_config = json.loads((out / "config.json").read_text())
    warm = result.history[-1]
    return {
        "model": model,
        "batch_size": batch_size,
        "image_size": image_size,
        "device": run_config["device"],
        "autocast": run_config["autocast"],
        "compile": compile,
        "images_per_s": warm["images_per_s"],
        "epoch_seconds": warm["epoch_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20, help="training steps per epoch")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepared = synthetic_prepared(Path(tmp), args.steps * args.batch_size, args.image_size)
        result = measure_training(
            prepared,
            Path(tmp) / "run",
            model=args.model,
            batch_size=args.batch_size,
            image_size=args.image_size,
            device=args.device,
            compile=args.compile,
            workers=args.workers,
        )
    result = {
        "benchmark": "train_throughput",
        **result,
        "steps": args.steps,
        "device_name": torch.cuda.get_device_name() if result["device"].startswith("cuda") else platform.processor() or "cpu",
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
