"""Training throughput (images/s) of one model at one batch and image size on the current device.

    python benchmarks/train_throughput.py --model resnet50 --batch-size 128 --image-size 224 --steps 20

Random inputs, the same optimizer step, AMP and channels_last choices as ``mlcdf train``; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mlcdf.engine import autocast
from mlcdf.io import write_json
from mlcdf.losses import create_loss
from mlcdf.models import create_model
from mlcdf.training import mixed_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_model(args.model, 5).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = torch.compile(model) if args.compile else model
    dtype, needs_scaler = mixed_precision(device, None)
    scaler = torch.amp.GradScaler(device.type) if needs_scaler else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = create_loss("asl")
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(args.batch_size, 5, device=device) < 0.5).float()

    def step() -> None:
        with autocast(device, dtype):
            loss = criterion(train_model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {
        "benchmark": "train_throughput",
        "model": args.model,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "autocast": str(dtype),
        "compile": args.compile,
        "images_per_s": args.steps * args.batch_size / seconds,
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
