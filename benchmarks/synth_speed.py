"""Time ``mlcdf synth`` (images written per second) for several worker counts and write JSON.

    python benchmarks/synth_speed.py --images 400 --size 256 --workers 1 2 --out benchmarks/results/synth_speed.json

The issue's target: at least 100 images/s at 256x256 with 2 workers on 2 CPU cores. Both subsets are
timed (``--images`` per subset, all in the train split); process start-up is included.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from mlcdf import __version__
from mlcdf.data.synth import SYNTH_VERSION, SynthConfig, generate
from mlcdf.io import write_json


def _cpu_baseline_ms() -> float:
    """Time of a fixed numpy workload, to compare runs on machines of different speed or load."""
    pixels = np.random.default_rng(0).random((3, 256, 256), dtype=np.float32)
    start = time.perf_counter()
    for _ in range(200):
        pixels * np.float32(0.5) + pixels
    return (time.perf_counter() - start) / 200 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="images per subset (default: 400)")
    parser.add_argument("--size", type=int, default=256, help="image side (default: 256)")
    parser.add_argument("--format", default="png", choices=("png", "jpg"), help="image format (default: png)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default: 1 2)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/synth_speed.json"))
    args = parser.parse_args()
    runs = []
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            config = SynthConfig(
                out=Path(tmp) / "root",
                train=args.images,
                val=0,
                test=0,
                size=args.size,
                image_format=args.format,
                workers=workers,
            )
            start = time.perf_counter()
            result = generate(config)
            seconds = time.perf_counter() - start
        rate = result.total / seconds
        runs.append({"workers": workers, "images": result.total, "seconds": round(seconds, 3), "images_per_s": round(rate, 1)})
        print(f"workers {workers}: {result.total} images in {seconds:.1f} s = {rate:.1f} images/s")
    write_json(
        args.out,
        {
            "benchmark": "mlcdf synth",
            "mlcdf_version": __version__,
            "synth_version": SYNTH_VERSION,
            "size": args.size,
            "format": args.format,
            "subsets": list(config.subsets),
            "images_per_subset": args.images,
            "runs": runs,
            "cpu_count": os.cpu_count(),
            "cpu_baseline_ms": round(_cpu_baseline_ms(), 4),
            "machine": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
