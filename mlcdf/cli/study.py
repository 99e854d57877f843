"""``mlcdf study cooccurrence``: direct vs graph models as label co-occurrence grows (:mod:`mlcdf.experiments.study`);
``mlcdf study order``: SeqFakeFormer vs a multi-label model plus the prior order (:mod:`mlcdf.experiments.study_order`)."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from mlcdf.cli._console import note, rich_progress
from mlcdf.cli._options import Device, DeviceOpt, QuietOpt, Subset
from mlcdf.errors import MlcdfError

_SLURM = "Slurm (--launcher slurm)"

study_app = typer.Typer(help="Studies that go past the paper: each one a plan of runs plus its analysis.", no_args_is_help=True)


class Preset(str, Enum):
    cpu = "cpu"
    gpu = "gpu"


class OrderPreset(str, Enum):
    cpu = "cpu"
    gpu = "gpu"
    tiny = "tiny"


# Options every study takes: the dataset's sizes, training, and how the plan's runs are launched.
_TrainImages = Annotated[int | None, typer.Option("--train", min=1, help="Training images per dataset.")]
_ValImages = Annotated[int | None, typer.Option("--val", min=1, help="Validation images per dataset.")]
_TestImages = Annotated[int | None, typer.Option("--test", min=1, help="Test images per dataset.")]
_DataSize = Annotated[int | None, typer.Option("--data-size", min=32, max=2048, help="Side of the synthetic images.")]
_TraceStrength = Annotated[
    float | None,
    typer.Option("--trace-strength", min=0.0, help="How visible the manipulations are (mlcdf synth --strength; default: the preset's)."),
]
_BatchSize = Annotated[int | None, typer.Option("--batch-size", min=1, help="Batch size.")]
_Epochs = Annotated[int | None, typer.Option("--epochs", min=1, help="Maximum epochs.")]
_ImageSize = Annotated[int | None, typer.Option("--image-size", min=8, help="Training input size.")]
_Jobs = Annotated[int | None, typer.Option("--jobs", min=1, help="Runs at once, each in its own process.")]
_Devices = Annotated[str | None, typer.Option("--devices", help="Devices the runs take turns on, e.g. 0,1,2,3 or cpu,cpu.")]
_Launcher = Annotated[str, typer.Option("--launcher", help="local, or slurm (each run a Slurm job through submitit).")]
_Partition = Annotated[str | None, typer.Option("--partition", help="Slurm partition.", rich_help_panel=_SLURM)]
_TimeMin = Annotated[int | None, typer.Option("--time", min=1, help="Slurm time limit of each run, in minutes.", rich_help_panel=_SLURM)]
_Gpus = Annotated[
    int | None, typer.Option("--gpus", min=0, help="GPUs per Slurm job (default: 0 for --device cpu, else 1).", rich_help_panel=_SLURM)
]
_CpusPerTask = Annotated[
    int | None,
    typer.Option("--cpus-per-task", min=1, help="CPUs per Slurm job (default: 5 per GPU, 1 for a CPU run).", rich_help_panel=_SLURM),
]
_Account = Annotated[str | None, typer.Option("--account", help="Slurm account.", rich_help_panel=_SLURM)]
_DryRun = Annotated[bool, typer.Option("--dry-run", help="Print each run's status and stop.")]


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
    train: _TrainImages = None,
    val: _ValImages = None,
    test: _TestImages = None,
    data_size: _DataSize = None,
    trace_strength: _TraceStrength = None,
    batch_size: _BatchSize = None,
    epochs: _Epochs = None,
    image_size: _ImageSize = None,
    device: DeviceOpt = Device.auto,
    jobs: _Jobs = None,
    devices: _Devices = None,
    launcher: _Launcher = "local",
    partition: _Partition = None,
    time_min: _TimeMin = None,
    gpus: _Gpus = None,
    cpus_per_task: _CpusPerTask = None,
    account: _Account = None,
    dry_run: _DryRun = False,
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
    from mlcdf.experiments.study import PRESETS, StudyConfig, run_study

    chosen = dict(
        backbone=backbone,
        train=train,
        val=val,
        test=test,
        data_size=data_size,
        trace_strength=trace_strength,
        batch_size=batch_size,
        epochs=epochs,
        image_size=image_size,
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
    slurm = dict(partition=partition, time=time_min, gpus=gpus, cpus_per_task=cpus_per_task, account=account)
    _run(run_study, config, dict(jobs=jobs, devices=devices, launcher=launcher, slurm=slurm), out_dir=out_dir, dry_run=dry_run, quiet=quiet)


@study_app.command("order")
def order_command(
    out_dir: Annotated[Path, typer.Option("--out", help="The study folder: data, runs, study.{csv,md,png}.", file_okay=False)],
    preset: Annotated[
        OrderPreset,
        typer.Option(
            "--preset",
            help="cpu: ResNet-18 from scratch at 64 px, 8 epochs, 800 training images at trace strength 4, 3 seeds (about 30 min on 2 cores "
            "with --jobs 2 --devices cpu,cpu). gpu: the real test (ResNet-34 ImageNet-pretrained, 256 px, up to 40 epochs, 4000 training "
            "images, 5 seeds). tiny: seconds per run, to try the command.",
        ),
    ] = OrderPreset.cpu,
    seeds: Annotated[int | None, typer.Option("--seeds", min=1, help="Training seeds per model (default: the preset's).")] = None,
    subset: Annotated[Subset, typer.Option("--subset", help="The synthetic subset (its labels).")] = Subset.facial_components,
    backbone: Annotated[str | None, typer.Option("--backbone", help="timm backbone of both models (default: the preset's).")] = None,
    recipe: Annotated[
        str | None, typer.Option("--recipe", help="Training recipe of both models: asl (the default), mlgcn or seqfakeformer.")
    ] = None,
    train: _TrainImages = None,
    val: _ValImages = None,
    test: _TestImages = None,
    data_size: _DataSize = None,
    trace_strength: _TraceStrength = None,
    batch_size: _BatchSize = None,
    epochs: _Epochs = None,
    image_size: _ImageSize = None,
    device: DeviceOpt = Device.auto,
    jobs: _Jobs = None,
    devices: _Devices = None,
    launcher: _Launcher = "local",
    partition: _Partition = None,
    time_min: _TimeMin = None,
    gpus: _Gpus = None,
    cpus_per_task: _CpusPerTask = None,
    account: _Account = None,
    dry_run: _DryRun = False,
    quiet: QuietOpt = False,
) -> None:
    """Does predicting the order beat a multi-label model plus the prior order? Seq-DeepFake's task, tested.

    On one synthetic dataset (manipulations stacked in a random order, each on the output of the
    previous one): SeqFakeFormer on a timm backbone, which predicts the steps in order, and a
    multi-label model on the same backbone whose predicted set takes its most frequent training order,
    with the same recipe, trained with several seeds through the plan runner (skip, resume, --jobs,
    Slurm). Writes OUT/study.csv (one row per run, and the oracle: the true set in that order),
    OUT/study.md (mean ± std; SeqFakeFormer − multi-label per seed; the answer in words) and
    OUT/study.png.

    Examples:

        mlcdf study order --out study-order --jobs 2 --devices cpu,cpu

        mlcdf study order --out study-order-gpu --preset gpu --jobs 4 --devices 0,1,2,3
    """
    from mlcdf.experiments.study_order import PRESETS, OrderStudyConfig, run_study

    chosen = dict(
        seeds=seeds,
        backbone=backbone,
        recipe=recipe,
        train=train,
        val=val,
        test=test,
        data_size=data_size,
        trace_strength=trace_strength,
        batch_size=batch_size,
        epochs=epochs,
        image_size=image_size,
    )
    overrides = {name: value for name, value in chosen.items() if value is not None}
    config = OrderStudyConfig(out=out_dir, subset=subset.value, device=device.value, **{**PRESETS[preset.value], **overrides})
    slurm = dict(partition=partition, time=time_min, gpus=gpus, cpus_per_task=cpus_per_task, account=account)
    _run(run_study, config, dict(jobs=jobs, devices=devices, launcher=launcher, slurm=slurm), out_dir=out_dir, dry_run=dry_run, quiet=quiet)


def _run(
    run_study: Callable[..., tuple[Any, Any]], config: Any, launch: dict[str, Any], *, out_dir: Path, dry_run: bool, quiet: bool
) -> None:
    """Run a study with the CLI's progress, or list its runs' status (``dry_run``); then print its study.md.

    ``launch``: ``jobs``, ``devices`` (comma-separated text or None), ``launcher`` and ``slurm`` (the
    options, None where not given), as the study commands take them.
    """
    # Imported here: the runner's monitors pull in torch, which other commands need not pay for.
    from mlcdf.cli.reproduce import PlanMonitor, _log
    from mlcdf.cli.train import RichTrainCallbacks

    devices = launch["devices"]
    options: dict[str, Any] = dict(
        jobs=launch["jobs"],
        devices=tuple(d.strip() for d in devices.split(",")) if devices else None,
        launcher=launch["launcher"],
        slurm={key: value for key, value in launch["slurm"].items() if value is not None},
    )
    if dry_run:
        result, _ = run_study(config, dry_run=True, **options)
        for outcome in result.outcomes:
            typer.echo(f"{outcome.entry.label}: {outcome.status}")
        return
    with RichTrainCallbacks(quiet, show=False) as callbacks, PlanMonitor(quiet) as monitor:
        result, _ = run_study(config, log=_log, callbacks=callbacks, progress=rich_progress(quiet=quiet), monitor=monitor, **options)
    typer.echo((Path(out_dir) / "study.md").read_text(encoding="utf-8"))
    if result.failed:
        note(f"{len(result.failed)} run(s) failed: {', '.join(result.failed)}")
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")
