"""Time ``mlcdf prepare`` on a release-format CSV of many rows (empty image files) and write JSON.

python benchmarks/prepare_speed.py --rows 50000 --out benchmarks/results/prepare_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from mlcdf.data.seqdeepfake import PrepareConfig, prepare
from mlcdf.io import write_json
from mlcdf.labels import SUBSETS, format_label_ids


def write_fake_release(root: Path, rows: int, seed: int = 0) -> None:
    subset = "facial_components"
    vocab = SUBSETS[subset]
    rng = np.random.default_rng(seed)
    csv_path = root / subset / "annotations" / "train.csv"
    csv_path.parent.mkdir(parents=True)
    lines = [",file_path,label"]
    for index in range(rows):
        ids = list(rng.permutation(5)[: rng.integers(0, 6)] + 1)
        folder = "-".join(vocab[i - 1] for i in ids) or "original"
        file_path = f"{subset}/images/train/{folder}/{index:06d}.jpg"
        image = root / file_path
        image.parent.mkdir(parents=True, exist_ok=True)
        image.touch()
        lines.append(f'{index},{file_path},"{format_label_ids(ids)}"')
    csv_path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prepare_speed.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "release"
        write_fake_release(root, args.rows)
        timings = {}
        for check in ("none", "exists"):
            start = time.perf_counter()
            prepare(PrepareConfig(root=root, out=Path(tmp) / f"prepared-{check}", subsets=("facial_components",), check_images=check))
            timings[check] = time.perf_counter() - start
    result = {
        "benchmark": "prepare_speed",
        "rows": args.rows,
        "seconds": timings,
        "rows_per_second": {k: args.rows / v for k, v in timings.items()},
        "machine": platform.platform(),
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
