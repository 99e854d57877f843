"""``mlcdf perturb``: write a perturbed copy of a dataset (Seq-DeepFake layout) that any stage reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlcdf.cli._console import note, rich_progress
from mlcdf.cli._options import MaxPixelsOpt, QuietOpt, Subset, SubsetOpt, check_workers_option
from mlcdf.errors import MlcdfError


def perturb_command(
    root: Annotated[
        Path, typer.Option("--root", help="Dataset root holding SUBSET/annotations and SUBSET/images.", exists=True, file_okay=False)
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Root of the copy; each subset goes to OUT/SUBSET.", file_okay=False)],
    spec: Annotated[
        str,
        typer.Option(
            "--spec",
            help="One condition for every image, TYPE:LEVEL (e.g. jpeg:3, blur:5; levels 1-5), or 'random': a type and "
            "level drawn per image from --seed and its path. Types: saturation, contrast, block, noise, blur, resize, jpeg, webp.",
        ),
    ],
    subset: SubsetOpt = Subset.all,
    splits: Annotated[str, typer.Option("--splits", help="Comma-separated splits to copy.")] = "test",
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seed of the random draws (noise, blocks, and the conditions of 'random').")
    ] = 0,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, callback=check_workers_option, help="Threads decoding, perturbing and encoding (default: min(8, CPUs))."
        ),
    ] = None,
    max_pixels: MaxPixelsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Write OUT/SUBSET with the same annotations and layout, every listed image perturbed (like Seq-DeepFake-P).

    Beside each annotations/SPLIT.csv, annotations/SPLIT.perturbations.csv records each image's condition.
    'mlcdf prepare --root OUT' reads the copy. Nothing is written if an image cannot be read.

    Examples:

        mlcdf perturb --root /data/Seq-DeepFake --out /data/Seq-DeepFake-jpeg3 --spec jpeg:3 --subset facial_components

        mlcdf perturb --root /data/Seq-DeepFake --out /data/Seq-DeepFake-P --spec random --splits train,val,test
    """
    from mlcdf.data.perturbed import perturb_dataset

    split_names = tuple(name.strip() for name in splits.split(",") if name.strip())
    if not split_names:
        raise MlcdfError("--splits is empty; give e.g. test or train,val,test")
    for result in perturb_dataset(
        root,
        out_dir,
        spec,
        subsets=subset.names(),
        splits=split_names,
        seed=seed,
        workers=workers,
        progress=rich_progress(quiet=quiet),
    ):
        counts = ", ".join(f"{split} {count:,}" for split, count in result.images.items())
        note(f"wrote {result.out} ({counts} images)")


def register(app: typer.Typer) -> None:
    app.command("perturb")(perturb_command)
