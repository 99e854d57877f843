"""Options shared by several commands, so that each has the same flag and help everywhere."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mlcdf.config import check_workers, parse_threshold
from mlcdf.data.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV
from mlcdf.labels import SUBSETS


class Subset(str, Enum):
    facial_components = "facial_components"
    facial_attributes = "facial_attributes"
    all = "all"

    def names(self) -> list[str]:
        """The concrete subsets this choice stands for."""
        return list(SUBSETS) if self is Subset.all else [self.value]


class Device(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


class Checkpoint(str, Enum):
    best = "best"
    last = "last"
    ema = "ema"


SubsetOpt = Annotated[Subset, typer.Option("--subset", help="Which Seq-DeepFake subset; 'all' means both.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to compute: 'auto' takes CUDA when present, else the CPU.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
PreparedOpt = Annotated[
    Path,
    typer.Option(
        "--prepared",
        help="A prepared subset folder (PREPARED/SUBSET, written by 'mlcdf prepare').",
        file_okay=False,
    ),
]
CheckpointOpt = Annotated[Checkpoint, typer.Option("--checkpoint", help="Weights to use: best (chosen on validation), last, or ema.")]
#: What every command that uses a trained model takes; :func:`mlcdf.inference.runs.read_run` tells them apart.
RUN_HELP = "A run folder written by 'mlcdf train', a bundle FILE.mlcdf written by 'mlcdf export --bundle', or hf-hub:ORG/NAME (a bundle on the Hugging Face Hub)."
RunArg = Annotated[Path, typer.Argument(help=RUN_HELP, show_default=False)]


def check_workers_option(value: int | None) -> int | None:
    """The callback of every command's ``--workers``: one bound for all (:func:`mlcdf.config.check_workers`),
    a one-line error (exit code 2) above it."""
    return check_workers(value, "--workers")


def given_on_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether the option with parameter ``name`` was typed by the user (not a default or an env var)."""
    # Compared by name: recent Typer vendors its own copy of click, whose ParameterSource is not click's.
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _put_max_pixels_in_force(ctx: typer.Context, value: int | None) -> int | None:
    """Set the pixel limit for this command, its threads and its worker processes (which inherit the
    environment), until the command ends: the decoders read it there, so no command passes it along."""
    if value is not None:
        previous = os.environ.get(MAX_PIXELS_ENV)
        os.environ[MAX_PIXELS_ENV] = str(value)

        def restore() -> None:
            if previous is None:
                os.environ.pop(MAX_PIXELS_ENV, None)
            else:
                os.environ[MAX_PIXELS_ENV] = previous

        ctx.call_on_close(restore)
    return value


MaxPixelsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-pixels",
        min=1,
        envvar=MAX_PIXELS_ENV,
        callback=_put_max_pixels_in_force,
        help=f"Images declaring more pixels than this count as unreadable (decompression bombs): skipped where "
        f"unreadable files are, an error elsewhere. Default {DEFAULT_MAX_PIXELS:,}, Pillow's limit; raise it for "
        "genuinely huge images.",
    ),
]


def _check_threshold(value: str) -> str:
    """``--threshold``'s callback: a one-line error (exit code 2) unless :func:`mlcdf.config.parse_threshold` takes it."""
    parse_threshold(value)
    return value


#: ``--threshold`` of the commands that predict on new images (predict, serve): text, for its words.
ThresholdOpt = Annotated[
    str,
    typer.Option(
        "--threshold",
        callback=_check_threshold,
        metavar="NUMBER|tuned|auto",
        help="A manipulation is predicted when its probability reaches this: a number in [0, 1]; 'tuned': the "
        "per-label thresholds tuned on validation that the bundle carries, or the run's 'mlcdf evaluate "
        "--tune-thresholds'; 'auto': tuned where the run has them, else 0.5.",
    ),
]


# Videos (predict, serve). The bounds are checked by mlcdf.inference.video.check_sampling (not imported
# here: the inference package loads torch, which --help must not).
FramesOpt = Annotated[
    int | None,
    typer.Option("--frames", help="Frames per video, evenly spaced in time (default: 32, as DeepfakeBench); not with --every."),
]
EveryOpt = Annotated[int | None, typer.Option("--every", help="Instead of --frames: every k-th frame of each video.")]
