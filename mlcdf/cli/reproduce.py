"""``mlcdf reproduce`` (``make reproduce``): every configuration of the paper's Tables I and II."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from mlcdf.cli._console import err, note, out, rich_progress
from mlcdf.cli._options import Device, QuietOpt, Subset
from mlcdf.cli.train import RichTrainCallbacks
from mlcdf.graph.embeddings import PAPER_WORD_EMBEDDING

_STATUS_STYLE = {"done": "green", "evaluate": "cyan", "resume": "yellow", "new": "white"}


def reproduce_command(
    data: Annotated[Optional[Path], typer.Option("--data", help="The Seq-DeepFake root (SUBSET/annotations, SUBSET/images).", file_okay=False)] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for prepared data, graphs, runs and reports.", file_okay=False)] = Path("reproduce"),
    smoke: Annotated[bool, typer.Option("--smoke", help="The same plan on a synthetic stand-in: 1 epoch, 32 px, no pretrained weights. Checks the pipeline; its numbers mean nothing.")] = False,
    subset: Annotated[Subset, typer.Option("--subset", help="Which subset's table; 'all' means both.")] = Subset.all,
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Only the runs whose name matches this glob, e.g. 'resnet*' or '*-image' (repeatable).")] = None,
    device: Annotated[Device, typer.Option("--device", help="'auto' takes CUDA when present.")] = Device.auto,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Maximum epochs (paper: 40; early stopping on val mAP).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Batch size (paper: 128).")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", min=8, help="Input size (paper: 224).")] = None,
    word_embedding: Annotated[Optional[str], typer.Option("--word-embedding", help=f"Node features of the word graphs (default {PAPER_WORD_EMBEDDING}, the paper's GloVe 300-d; 'glove' is the embedded 50-d subset).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, help="DataLoader worker processes.")] = None,
    keep_last: Annotated[bool, typer.Option("--keep-last", help="Keep checkpoints/last.pt (optimizer and EMA state, 4x the weights) of evaluated runs; by default only best.pt stays.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and what each run needs, and stop.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train, evaluate and tabulate the 12 configurations of the paper's Tables I and II on each subset.

    ResNet-50/101 and TResNet-M with BCE and with ASL; ML-GCN (word); IML-GCN and ML-AGCN with ASL and
    word or image node embeddings; ML-AGCN without ASL. Paper settings: 224x224, batch 128, up to 40
    epochs, ImageNet-pretrained backbones (downloaded by timm once). Re-running skips evaluated runs and
    resumes interrupted ones. Writes OUT/report-SUBSET.md (mlcdf report --paper) and OUT/results.csv.

    Examples:

        mlcdf reproduce --data /data/Seq-DeepFake --out reproduce

        mlcdf reproduce --data /data/Seq-DeepFake --only 'resnet101-*' --subset facial_components

        mlcdf reproduce --smoke --out reproduce-smoke
    """
    # Imported here: the report stage pulls in scikit-learn, which other commands need not pay for.
    from mlcdf.reproduce import ReproduceConfig, reproduce

    overrides = {
        name: value
        for name, value in dict(epochs=epochs, batch_size=batch_size, image_size=image_size, word_embedding=word_embedding, workers=workers).items()
        if value is not None
    }
    common = dict(subsets=tuple(subset.names()), only=tuple(only or ()), device=device.value, keep_last=keep_last, **overrides)
    if smoke:
        config = ReproduceConfig.smoke_test(out_dir, data=data, **common)
    else:
        config = ReproduceConfig(out=out_dir, data=data, **common)
    config.check()
    if dry_run:
        _print_plan(config)
        return
    with RichTrainCallbacks(quiet, show=True) as callbacks:
        result = reproduce(config, log=note, callbacks=callbacks, progress=rich_progress(quiet=quiet))
    for path in result.reports.values():
        typer.echo(path.read_text(encoding="utf-8"))
    note(
        f"{len(result.trained)} run(s) trained or evaluated, {len(result.skipped)} already done, "
        f"{len(result.failed)} failed; tables in {', '.join(str(p) for p in result.reports.values())}"
    )
    if result.failed:
        for label, reason in result.failed.items():
            err.print(f"[bold red]failed:[/] {label}: {reason}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)


def _print_plan(config) -> None:
    from mlcdf.reproduce import plan

    table = Table(title=f"Plan in {config.out}", title_justify="left")
    for column in ("subset", "run", "recipe", "status"):
        table.add_column(column)
    for planned in plan(config):
        style = _STATUS_STYLE[planned.status]
        table.add_row(planned.subset, planned.run.name, planned.run.recipe, f"[{style}]{planned.status}[/]")
    out.print(table)
    pretrained = "ImageNet-pretrained" if config.pretrained else "randomly initialised"
    out.print(
        f"up to {config.epochs} epoch(s) (patience {config.patience}), batch {config.batch_size}, {config.image_size}x{config.image_size}, "
        f"{pretrained}, device {config.device}; word graphs: {config.word_embedding}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("reproduce")(reproduce_command)
