"""Options shared by several commands, so that each has the same flag and help everywhere."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

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
DeviceOpt = Annotated[
    Device, typer.Option("--device", help="Where to compute: 'auto' takes CUDA when present, else the CPU.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
PreparedOpt = Annotated[
    Path,
    typer.Option(
        "--prepared",
        help="A prepared subset folder (PREPARED/SUBSET, written by 'mlcdf prepare').",
        file_okay=False,
    ),
]
CheckpointOpt = Annotated[
    Checkpoint, typer.Option("--checkpoint", help="Weights to use: best (chosen on validation), last, or ema.")
]
RunArg = Annotated[Path, typer.Argument(help="A run folder written by 'mlcdf train'.", file_okay=False)]
