"""Cached loader vs decoding the original files, on the same synthetic images; writes JSON.

    python benchmarks/data_pipeline.py --images 64 --image-size 224

Two formats, as the release ships them: 1024x1024 PNG (attributes) and 256x256 JPG (components).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mlcdf.data.dataset import CachedSource, FileSource, build_image_cache
from mlcdf.data.prepared import META_FILE, SplitTable, load_prepared, write_split_csv
from mlcdf.io import write_json
from mlcdf.labels import SUBSETS


def write_images(folder: Path, count: int, size: int, ext: str) -> Path:
    labels = SUBSETS["facial_components"]
    rng = np.random.default_rng(0)
    root, prepared = folder / "root", folder / "prepared"
    paths = []
    for index in range(count):
        path = f"images/{index:06d}.{ext}"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
        Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC).save(root / path)
        paths.append(path)
    write_split_csv(prepared / "train.csv", SplitTable(paths, [""] * count, np.zeros((count, 5), np.uint8)), labels)
    write_json(prepared / META_FILE, {"subset": "facial_components", "labels": list(labels), "root": str(root), "splits": {"train": count}})
    return prepared


def images_per_s(source, count: int, batch: int, epochs: int) -> float:
    start = time.perf_counter()
    for _ in range(epochs):
        for first in range(0, count, batch):
            source.read(list(range(first, min(count, first + batch))))
    return epochs * count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data_pipeline.json"))
    args = parser.parse_args()
    results = []
    for size, ext in ((1024, "png"), (256, "jpg")):
        with tempfile.TemporaryDirectory() as tmp:
            prepared = load_prepared(write_images(Path(tmp), args.images, size, ext))
            table = prepared.read_split("train")
            start = time.perf_counter()
            cache = CachedSource(build_image_cache(prepared, "train", args.image_size, table=table))
            build_seconds = time.perf_counter() - start
            files = FileSource([prepared.image_path(p) for p in table.file_paths], args.image_size)
            results.append(
                {
                    "source": f"{size}x{size} {ext}",
                    "decode_files_images_per_s": images_per_s(files, args.images, 32, args.epochs),
                    "cached_images_per_s": images_per_s(cache, args.images, 32, args.epochs),
                    "cache_build_seconds": build_seconds,
                }
            )
    result = {"benchmark": "data_pipeline", "images": args.images, "image_size": args.image_size, "epochs": args.epochs, "results": results}
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
