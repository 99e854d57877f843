"""``mlcdf synth``: write a synthetic Seq-DeepFake stand-in in the official layout."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mlcdf.cli._console import note, out, rich_progress
from mlcdf.cli._options import QuietOpt, SeedOpt, Subset, SubsetOpt, check_workers_option
from mlcdf.data.synth import SPLITS, SynthConfig, SynthResult, default_workers, generate
from mlcdf.data.synth_cooccurrence import UNIFORM


class ImageFormat(str, Enum):
    png = "png"
    jpg = "jpg"


def synth_command(
    out_dir: Annotated[Path, typer.Option("--out", help="Dataset root to write; each subset goes to OUT/SUBSET.", file_okay=False)],
    subset: SubsetOpt = Subset.all,
    train: Annotated[int, typer.Option("--train", min=0, help="Training images per subset.")] = 1000,
    val: Annotated[int, typer.Option("--val", min=0, help="Validation images per subset.")] = 200,
    test: Annotated[int, typer.Option("--test", min=0, help="Test images per subset.")] = 200,
    size: Annotated[int, typer.Option("--size", min=32, max=2048, help="Image side in pixels.")] = 256,
    image_format: Annotated[ImageFormat, typer.Option("--format", help="Image file format.")] = ImageFormat.png,
    seed: SeedOpt = 0,
    strength: Annotated[
        float,
        typer.Option(
            "--strength",
            min=0.0,
            max=4.0,
            help="How visible the manipulation traces are: 1 is the default difficulty, 2 easier, 0.5 harder, 0 none.",
        ),
    ] = 1.0,
    real_fraction: Annotated[
        float | None,
        typer.Option(
            "--real-fraction",
            min=0.0,
            max=1.0,
            help="Share of real (unmanipulated) images; default: the release's (1/28 components, 1/26 attributes).",
        ),
    ] = None,
    cooccurrence: Annotated[
        str,
        typer.Option(
            "--cooccurrence",
            metavar="uniform|editing-habits|FILE.json",
            help="Which manipulations come together: 'uniform' (the release: none preferred), 'editing-habits' "
            "(a built-in profile of habitual combinations and unequal label frequencies) or a profile JSON file "
            '{"recipes": [{"labels": [...], "weight": w}, ...], "real_fraction": f}.',
        ),
    ] = UNIFORM,
    cooccurrence_strength: Annotated[
        float | None,
        typer.Option(
            "--cooccurrence-strength",
            min=0.0,
            max=1.0,
            help="RHO: the probability that a fake image takes its label set from a recipe of the profile "
            "(else the uniform process). Default 1 with a profile.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, callback=check_workers_option, help="Processes drawing images; default: one per CPU core."),
    ] = None,
    preview: Annotated[
        Path | None,
        typer.Option(
            "--preview",
            dir_okay=False,
            help="Also write a PNG grid of examples: each face before, after, and the difference, with its sequence.",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Write a synthetic Seq-DeepFake stand-in: procedural faces with real, stacked manipulations.

    The folders, file names and annotation CSVs follow the official release, so 'mlcdf prepare' reads
    the result like the real data. Components are transplanted from donor faces (with the colour
    mismatch, seam and blur a face swap leaves); attributes are switched by an editor that leaves
    resampling, colour and noise traces, while unedited faces show the same attributes natively. Same
    seed and options, same bytes, whatever --workers. ROOT/README.txt says how the data was made.

    Example:

        mlcdf synth --out data/synth --subset all --train 2000 --val 200 --test 400 --size 128 --preview synth.png

        mlcdf synth --out data/habits --cooccurrence editing-habits --cooccurrence-strength 0.9
    """
    config = SynthConfig(
        out=out_dir,
        subsets=tuple(subset.names()),
        train=train,
        val=val,
        test=test,
        size=size,
        image_format=image_format.value,
        seed=seed,
        strength=strength,
        real_fraction=real_fraction,
        workers=workers or default_workers(),
        preview=preview,
        cooccurrence=cooccurrence,
        cooccurrence_strength=cooccurrence_strength,
    )
    _print_summary(generate(config, progress=rich_progress(quiet=quiet)))


def _print_summary(result: SynthResult) -> None:
    table = Table(title=f"synthetic Seq-DeepFake -> {result.root}", title_justify="left")
    table.add_column("subset")
    for split in SPLITS:
        table.add_column(split, justify="right")
    table.add_column("of which real", justify="right")
    for subset, images in result.images.items():
        table.add_row(subset, *(f"{images[split]:,}" for split in SPLITS), f"{sum(result.reals[subset].values()):,}")
    out.print(table)
    rate = result.total / result.seconds if result.seconds > 0 else float("inf")
    note(f"{result.total:,} images in {result.seconds:.1f} s ({rate:.0f} images/s)")
    if result.preview is not None:
        note(f"preview: {result.preview}")


def register(app: typer.Typer) -> None:
    app.command("synth")(synth_command)
