"""``mlcdf study cooccurrence``: direct vs graph models as label co-occurrence grows (:mod:`mlcdf.experiments.study`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from mlcdf.cli._console import note, rich_progress
from mlcdf.cli._options import Device, QuietOpt, Subset
from mlcdf.errors import MlcdfError

_SLURM = "Slurm (--launcher slurm)"

study_app = typer.Typer(help="Studies that go past the paper: each one a plan of runs plus its analysis.", no_args_is_help=True)


class Preset(str, Enum):
    cpu = "cpu"
    gpu = "gpu"


def _numbers(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise MlcdfError(f"{option} {text}: expected numbers separated by commas, e.g. 0,0.5,0.9") from None


@study_app.command("cooccurrence")
def cooccurrence_command(
    out_dir: Annotated[Path, typer.Option("--out", help="The study folder: data, graphs, runs, study.{csv,md,png}.", file_okay=False)],
    strengths: Annotated[str, typer.Option("--strengths", help="Co-occurrence strengths RHO, 0 to 1, comma-separated.")] = "0,0.5,0.9",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Training seeds per model and strength.")] = 3,
    preset: Annotated[
        Preset,
        typer.Option(
            "--preset",
            help="cpu: ResNet-18 from scratch at 48 px, 6 epochs, 800 training images (about 1 min per run on 2 cores with --jobs 2 --devices cpu,cpu). gpu: the paper's sizes "
            "(ResNet-101 ImageNet-pretrained, 224 px, up to 40 epochs, GloVe 300-d, 4000 training images).",
        ),
    ] = Preset.cpu,
    profile: Annotated[
        str, typer.Option("--profile", help="Co-occurrence profile: editing-habits or a profile JSON file.")
    ] = "editing-habits",
    subset: Annotated[Subset, typer.Option("--subset", help="The synthetic subset (its labels).")] = Subset.facial_components,
    backbone: Annotated[str | None, typer.Option("--backbone", help="timm backbone of every model (default: the preset's).")] = None,
    models: Annotated[str, typer.Option("--models", help="direct and graph models, comma-separated.")] = "direct,ml_gcn,ml_agcn",
    train: Annotated[int | None, typer.Option("--train", min=1, help="Training images per dataset.")] = None,
    val: Annotated[int | None, typer.Option("--val", min=1, help="Validation images per dataset.")] = None,
    test: Annotated[int | None, typer.Option("--test", min=1, help="Test images per dataset.")] = None,
    data_size: Annotated[int | None, typer.Option("--data-size", min=32, max=2048, help="Side of the synthetic images.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Batch size.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Maximum epochs.")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", min=8, help="Training input size.")] = None,
    device: Annotated[Device, typer.Option("--device", help="'auto' takes CUDA when present.")] = Device.auto,
    jobs: Annotated[int | None, typer.Option("--jobs", min=1, help="Runs at once, each in its own process.")] = None,
    devices: Annotated[str | None, typer.Option("--devices", help="Devices the runs take turns on, e.g. 0,1,2,3 or cpu,cpu.")] = None,
    launcher: Annotated[str, typer.Option("--launcher", help="local, or slurm (each run a Slurm job through submitit).")] = "local",
    partition: Annotated[str | None, typer.Option("--partition", help="Slurm partition.", rich_help_panel=_SLURM)] = None,
    time_min: Annotated[
        int | None, typer.Option("--time", min=1, help="Slurm time limit of each run, in minutes.", rich_help_panel=_SLURM)
    ] = None,
    gpus: Annotated[
        int | None, typer.Option("--gpus", min=0, help="GPUs per Slurm job (default: 0 for --device cpu, else 1).", rich_help_panel=_SLURM)
    ] = None,
    account: Annotated[str | None, typer.Option("--account", help="Slurm account.", rich_help_panel=_SLURM)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print each run's status and stop.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Do graph models gain over a direct model when manipulations co-occur? The paper's explanation, tested.

    For each strength RHO: a synthetic dataset whose fakes take a profile's label sets with probability
    RHO (same images seed for all), its word graph, and a direct model and graph models with the same
    backbone, loss and recipe, trained with several seeds, through the plan runner (skip, resume,
    --jobs, Slurm). Writes OUT/study.csv (one row per run), OUT/study.md (mean ± std; graph − direct
    mAP) and OUT/study.png (mAP and CF1 against RHO).

    Examples:

        mlcdf study cooccurrence --out study --strengths 0,0.5,0.9 --seeds 3

        mlcdf study cooccurrence --out study-gpu --preset gpu --jobs 4 --devices 0,1,2,3
    """
    # Imported here: the study pulls in torch and the runner, which other commands need not pay for.
    from mlcdf.cli.reproduce import PlanMonitor, _log
    from mlcdf.cli.train import RichTrainCallbacks
    from mlcdf.experiments.study import PRESETS, StudyConfig, run_study

    chosen = dict(
        backbone=backbone, train=train, val=val, test=test, data_size=data_size, batch_size=batch_size, epochs=epochs, image_size=image_size
    )
    overrides = {name: value for name, value in chosen.items() if value is not None}
    config = StudyConfig(
        out=out_dir,
        strengths=_numbers(strengths, "--strengths"),
        seeds=seeds,
        profile=profile,
        subset=subset.value,
        models=tuple(model.strip() for model in models.split(",") if model.strip()),
        device=device.value,
        **{**PRESETS[preset.value], **overrides},
    )
    slurm = {key: value for key, value in dict(partition=partition, time=time_min, gpus=gpus, account=account).items() if value is not None}
    launch: dict[str, Any] = dict(
        jobs=jobs, devices=tuple(d.strip() for d in devices.split(",")) if devices else None, launcher=launcher, slurm=slurm
    )
    if dry_run:
        result, _ = run_study(config, dry_run=True, **launch)
        for outcome in result.outcomes:
            typer.echo(f"{outcome.entry.label}: {outcome.status}")
        return
    with RichTrainCallbacks(quiet, show=False) as callbacks, PlanMonitor(quiet) as monitor:
        result, _ = run_study(config, log=_log, callbacks=callbacks, progress=rich_progress(quiet=quiet), monitor=monitor, **launch)
    typer.echo((Path(out_dir) / "study.md").read_text(encoding="utf-8"))
    if result.failed:
        note(f"{len(result.failed)} run(s) failed: {', '.join(result.failed)}")
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")
