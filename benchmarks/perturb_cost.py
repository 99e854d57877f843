"""CPU cost of each perturbation condition per image (perturb, then resize to the model's input); writes JSON.

    python benchmarks/perturb_cost.py --images 8 --sizes 256,1024 --input-size 224

Measured as process CPU time on one thread, so that a busy machine slows the figures less than wall time
would. The images are smooth procedural faces-like gradients with noise (JPEG and WebP costs depend on
content); ``--from-folder`` takes real images instead (the first N files, resized to each size).
The estimate for a suite is the sum over conditions times the images, divided by the worker processes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mlcdf.data.images import IMAGE_EXTENSIONS, resize
from mlcdf.data.perturb import CLEAN_CONDITION, all_conditions, apply, describe


def sample_images(count: int, size: int, folder: Path | None) -> list[Image.Image]:
    if folder is not None:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:count]
        return [Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BICUBIC) for p in files]
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        channels = [128 + 90 * np.sin(2 * np.pi * (a * x + b * y)) for a, b in rng.uniform(0.5, 3, (3, 2))]
        noisy = np.stack(channels, axis=-1) + rng.normal(0, 8, (size, size, 3))
        images.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--sizes", default="256,1024", help="stored image sides to measure")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--from-folder", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/perturb_cost.json"))
    args = parser.parse_args()
    results = {"input_size": args.input_size, "images": args.images, "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",")):
        images = sample_images(args.images, size, args.from_folder)
        per_condition = {}
        for condition in [CLEAN_CONDITION, *all_conditions()]:
            start = time.process_time()
            for row, image in enumerate(images):
                resize(apply(image, condition, (0, row)), (args.input_size, args.input_size))
            per_condition[describe(condition)] = 1000 * (time.process_time() - start) / len(images)
        total = sum(per_condition.values())
        results["sizes"][str(size)] = {"ms_per_image": per_condition, "ms_per_image_all_conditions": total}
        print(f"{size} px: {total:.0f} ms CPU per image for clean + {len(per_condition) - 1} conditions")
        for name, ms in per_condition.items():
            print(f"  {name:40s} {ms:8.2f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
