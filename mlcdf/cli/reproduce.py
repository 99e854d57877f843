"""``mlcdf reproduce`` (``make reproduce``): run the paper's plan of Tables I and II, or any plan file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from mlcdf.cli._console import err, note, out, rich_progress, warn
from mlcdf.cli._options import Device, QuietOpt, check_workers_option
from mlcdf.cli.train import RichTrainCallbacks
from mlcdf.graph.embeddings import PAPER_WORD_EMBEDDING

_STATUS_STYLE = {"done": "green", "evaluate": "cyan", "resume": "yellow", "new": "white"}
_SLURM = "Slurm (--launcher slurm)"


class PlanMonitor:
    """One live table of the runs running in other processes: device, epoch, last val mAP, time."""

    def __init__(self, quiet: bool) -> None:
        self.live = Live(console=err, transient=True, auto_refresh=False)
        self.enabled = not quiet and err.is_terminal

    def __enter__(self) -> PlanMonitor:
        if self.enabled:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.live.__exit__(*exc)

    def __call__(self, running) -> None:
        if not self.enabled:
            return
        table = Table(title=f"{len(running)} run(s) running", title_justify="left")
        for column in ("run", "device", "epoch", "val mAP", "time"):
            table.add_column(column)
        for run in running:
            done, epochs, val_map = run.progress()
            minutes, seconds = divmod(int(time.monotonic() - run.started), 60)
            table.add_row(
                run.job.label,
                run.device,
                f"{done}/{epochs}",
                "-" if val_map is None else f"{100 * val_map:.2f}",
                f"{minutes}:{seconds:02d}",
            )
        self.live.update(table, refresh=True)


def reproduce_command(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="The Seq-DeepFake root (SUBSET/annotations, SUBSET/images); the plan's subsets are prepared from it.",
            file_okay=False,
        ),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for prepared data, graphs, runs and reports.", file_okay=False)] = Path(
        "reproduce"
    ),
    plan_file: Annotated[
        Path | None,
        typer.Option(
            "--plan",
            help="A plan file (TOML, see docs/plans.md), or a shipped plan's name: 'paper' (the default: the paper's Tables I and II) or 'sequence' (SeqFakeFormer R34/R50 beside the best direct and graph models, both tasks).",
            dir_okay=False,
        ),
    ] = None,
    smoke: Annotated[
        bool,
        typer.Option(
            "--smoke",
            help="The same plan on a synthetic stand-in: 1 epoch, 32 px, no pretrained weights. Checks the pipeline; its numbers mean nothing.",
        ),
    ] = False,
    subset: Annotated[
        list[str] | None, typer.Option("--subset", help="Only this subset of the plan (repeatable); 'all' (default) means every one.")
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Only the runs whose name matches this glob, e.g. 'resnet*' or '*-image' (repeatable)."),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option("--seeds", min=1, help="Train each configuration N times, seeds 0..N-1 (folders RUN-s0, RUN-s1, ...; 1 keeps RUN)."),
    ] = None,
    device: Annotated[Device | None, typer.Option("--device", help="'auto' takes CUDA when present (default: the plan's).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Maximum epochs (paper: 40; early stopping on val mAP).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Batch size (paper: 128).")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", min=8, help="Input size (paper: 224).")] = None,
    word_embedding: Annotated[
        str | None,
        typer.Option(
            "--word-embedding",
            help=f"Node features of the word graphs (paper: {PAPER_WORD_EMBEDDING}, GloVe 300-d; 'glove' is the embedded 50-d subset).",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, callback=check_workers_option, help="DataLoader worker processes.")
    ] = None,
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard",
            help="Each run also writes TensorBoard event files to OUT/tensorboard/<subset>/<run> (view all with 'tensorboard --logdir OUT/tensorboard'). Needs pip install 'mlcdf[tensorboard]'.",
        ),
    ] = False,
    keep_last: Annotated[
        bool,
        typer.Option(
            "--keep-last",
            help="Keep checkpoints/last.pt (optimizer and EMA state, 4x the weights) of evaluated runs; by default only best.pt stays.",
        ),
    ] = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            min=1,
            help="Runs at once, each in its own process (local: one per --gpus-per-run devices of --devices, or without --devices one per visible GPU, refused if there are fewer; default 1, in this process; Slurm: jobs queued at once, default all).",
        ),
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices",
            help="Devices the runs take turns on, e.g. 0,1,2,3 or cpu,cpu; each run gets its own. GPU numbers count the GPUs this process sees (the Nth of an inherited CUDA_VISIBLE_DEVICES), in nvidia-smi's order.",
        ),
    ] = None,
    gpus_per_run: Annotated[
        int,
        typer.Option(
            "--gpus-per-run",
            min=1,
            help="GPUs of one run (DDP through torchrun); --devices lists them all, K per run (cpu,cpu: 2 CPU processes). Local runs need --devices.",
        ),
    ] = 1,
    launcher: Annotated[
        str,
        typer.Option(
            "--launcher", help="local (this machine) or slurm (each run a Slurm job through submitit: pip install 'mlcdf[slurm]')."
        ),
    ] = "local",
    partition: Annotated[str | None, typer.Option("--partition", help="Slurm partition.", rich_help_panel=_SLURM)] = None,
    time_min: Annotated[
        int | None, typer.Option("--time", min=1, help="Slurm time limit of each run, in minutes.", rich_help_panel=_SLURM)
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus", min=0, help="GPUs per Slurm job (default: none for a run on device cpu, else --gpus-per-run).", rich_help_panel=_SLURM
        ),
    ] = None,
    cpus_per_task: Annotated[
        int | None,
        typer.Option("--cpus-per-task", min=1, help="CPUs per Slurm job (default: 5 per GPU, 1 for a CPU run).", rich_help_panel=_SLURM),
    ] = None,
    account: Annotated[str | None, typer.Option("--account", help="Slurm account.", rich_help_panel=_SLURM)] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--slurm-cluster",
            help="submitit cluster: slurm (default), or local (the jobs as local processes, for testing).",
            rich_help_panel=_SLURM,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and each run's status (from the run folders), and stop.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train, evaluate and tabulate every run of a plan: by default the paper's Tables I and II.

    The paper's plan: ResNet-50/101 and TResNet-M with BCE and with ASL; ML-GCN (word); IML-GCN and
    ML-AGCN with ASL and word or image node embeddings; ML-AGCN without ASL; on each subset, with the
    paper's settings (224x224, batch 128, up to 40 epochs, ImageNet-pretrained backbones). Re-running
    skips evaluated runs and resumes interrupted ones; a lock per run keeps two launchers from training
    the same run. Writes OUT/report-SUBSET.md and OUT/results.csv.

    Examples:

        mlcdf reproduce --data /data/Seq-DeepFake --out reproduce --jobs 4 --devices 0,1,2,3

        mlcdf reproduce --plan my-sweep.toml --out sweep --seeds 3 --launcher slurm --partition gpu --time 600

        mlcdf reproduce --smoke --out reproduce-smoke

        mlcdf reproduce --plan sequence --data /data/Seq-DeepFake --out sequence
    """
    # Imported here: the runner pulls in torch and scikit-learn, which other commands need not pay for.
    from mlcdf.experiments.reproduce import ReproduceConfig, reproduce, status

    overrides = {
        name: value
        for name, value in dict(
            epochs=epochs,
            batch_size=batch_size,
            image_size=image_size,
            word_embedding=word_embedding,
            workers=workers,
            seeds=seeds,
            device=device.value if device else None,
            keep_last=keep_last or None,
            tensorboard=tensorboard or None,
        ).items()
        if value is not None
    }
    slurm = dict(partition=partition, time=time_min, gpus=gpus, cpus_per_task=cpus_per_task, account=account, cluster=cluster)
    common: dict[str, Any] = dict(
        data=data,
        plan_file=plan_file,
        subsets=None if not subset or subset == ["all"] else tuple(subset),
        only=tuple(only or ()),
        jobs=jobs,
        devices=tuple(d.strip() for d in devices.split(",")) if devices else (),
        gpus_per_run=gpus_per_run,
        launcher=launcher,
        slurm={key: value for key, value in slurm.items() if value is not None},
        **overrides,
    )
    config = ReproduceConfig.smoke_test(out_dir, **common) if smoke else ReproduceConfig(out=out_dir, **common)
    if dry_run:
        _print_plan(config, status(config))
        return
    with RichTrainCallbacks(quiet, show=True) as callbacks, PlanMonitor(quiet) as monitor:
        result = reproduce(config, log=_log, callbacks=callbacks, progress=rich_progress(quiet=quiet), monitor=monitor)
    for path in result.reports.values():
        typer.echo(path.read_text(encoding="utf-8"))
    note(
        f"{len(result.trained)} run(s) trained or evaluated, {len(result.skipped)} already done, "
        f"{len(result.failed)} failed; tables in {', '.join(str(p) for p in result.reports.values())}"
    )
    if result.failed:
        for label, reason in result.failed.items():
            err.print(f"[bold red]failed:[/] {escape(f'{label}: {reason}')}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)


def _log(text: str) -> None:
    (warn if "taking over the lock" in text else note)(text)


def _print_plan(config, outcomes) -> None:
    plan = config.plan()
    shared = plan.shared_options()
    table = Table(title=escape(f"Plan {plan.source} in {config.out}"), title_justify="left")
    for column in ("subset", "run", "recipe", "status", "locked by"):
        table.add_column(column)
    for outcome in outcomes:
        style = _STATUS_STYLE[outcome.status]
        recipe = outcome.entry.run.options.get("recipe", shared.recipe) or "the model's"
        table.add_row(outcome.entry.subset, outcome.entry.name, recipe, f"[{style}]{outcome.status}[/]", outcome.holder)
    out.print(table)
    pretrained = "ImageNet-pretrained" if shared.pretrained else "randomly initialised"
    size = f"{shared.image_size} px" if shared.image_size else "the recipe's size"
    out.print(
        f"up to {shared.epochs} epoch(s) (patience {shared.patience}), batch {shared.batch_size}, {size}, "
        f"{pretrained}, device {shared.device}, {plan.seeds} seed(s); word graphs: {plan.word_embedding}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("reproduce")(reproduce_command)
