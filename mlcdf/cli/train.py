"""``mlcdf train``: train one model on one prepared subset (single process, or torchrun for DDP)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress, TaskID, TextColumn

from mlcdf.cli._console import err, out, progress_columns, rich_progress
from mlcdf.cli._options import Device, QuietOpt, check_workers_option
from mlcdf.errors import MlcdfError

if TYPE_CHECKING:
    from mlcdf.train.engine import StepInfo

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class RichTrainCallbacks:
    """A transient bar per epoch (loss, lr, images/s) and one summary line per epoch on stderr."""

    def __init__(self, quiet: bool, show: bool) -> None:
        self.show = show
        self.progress = Progress(
            *progress_columns(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.0f} img/s"),
            console=err,
            transient=True,
            disable=quiet or not show or not err.is_terminal,
        )
        self.task: TaskID | None = None
        self.epochs = 0

    def __enter__(self) -> RichTrainCallbacks:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.epochs = epochs
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch + 1}/{epochs}", total=steps, loss=0.0, lr=0.0, ips=0.0)

    def step(self, info: StepInfo) -> None:
        assert self.task is not None, "the trainer calls epoch_start before the epoch's steps"
        self.progress.update(self.task, completed=info.step, loss=info.loss, lr=info.lr, ips=info.images_per_s)

    def epoch_end(self, record: dict) -> None:
        if not self.show:
            return
        ema = f" (EMA {100 * record['val_mAP_ema']:.2f})" if record.get("val_mAP_ema") is not None else ""
        star = "  [green]best[/green]" if record["best"] else ""
        self.progress.console.print(
            f"epoch {record['epoch'] + 1}/{self.epochs}  loss {record['train_loss']:.4f}  "
            f"val mAP {100 * record['val_mAP']:.2f}{ema}  {record['images_per_s']:.0f} img/s  "
            f"{record['epoch_seconds']:.0f}s{star}",
            highlight=False,
        )

    def message(self, text: str) -> None:
        if self.show:
            self.progress.console.print(escape(text), highlight=False)


def _read_config_file(path: Path) -> dict[str, Any]:
    kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
        values = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MlcdfError(f"{path}: not valid {kind} ({error})") from None
    # A run's config.json nests the options under "train"; accept it as a template.
    values = values.get("train", values) if isinstance(values, dict) else values
    if not isinstance(values, dict):
        raise MlcdfError(f"{path}: expected a {kind} table of options")
    return {key.replace("-", "_"): value for key, value in values.items()}


#: CLI parameters whose name differs from the TrainConfig field they set.
_CLI_TO_FIELD = {"asl": "loss"}


def train_command(
    ctx: typer.Context,
    prepared: Annotated[Path | None, typer.Option("--prepared", help="Prepared subset folder (PREPARED/SUBSET).", file_okay=False)] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model name (see 'mlcdf models'), e.g. resnet101, tresnet_m, ml_gcn, timm:convnext_tiny.")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder to write.", file_okay=False)] = None,
    asl: Annotated[bool, typer.Option("--asl", help="Train with the Asymmetric Loss instead of binary cross-entropy.")] = False,
    asl_gamma_neg: Annotated[
        float,
        typer.Option(
            "--asl-gamma-neg",
            min=0.0,
            help="ASL's focusing exponent of negatives, γ-: a negative's loss is weighted by p^γ-. 4 suits sparse labels (COCO: 3 of 80 positive); lower it when most labels are positive, or uncertain scores sit above 0.5.",
        ),
    ] = 4.0,
    asl_gamma_pos: Annotated[float, typer.Option("--asl-gamma-pos", min=0.0, help="ASL's focusing exponent of positives, γ+.")] = 0.0,
    asl_clip: Annotated[
        float,
        typer.Option(
            "--asl-clip", min=0.0, max=0.999, help="ASL's probability margin m: negatives scoring below m cost nothing (0 disables)."
        ),
    ] = 0.05,
    backbone: Annotated[
        str | None, typer.Option("--backbone", help="Graph models: the timm backbone under the GCN head (default: the paper's).")
    ] = None,
    graph: Annotated[
        Path | None, typer.Option("--graph", help="Label graph (.npz from 'mlcdf build-graph'); needed by graph models.", dir_okay=False)
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            help="Training recipe: asl, mlgcn or seqfakeformer (default: the model's; seqfakeformer for the SeqFakeFormer models, else asl). 'asl': AdamW + OneCycle, lr 1e-4. 'mlgcn': SGD 0.9, lr 0.1 (backbone 0.01), step decay, clip 10. 'seqfakeformer': Seq-DeepFake's: AdamW lr 1e-3 (backbone 1e-4), warm-up then x0.1 steps, clip 0.1, 256 px, their colour jitter and Normalize(0.5, 0.5) (--epochs 170 for theirs).",
        ),
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Maximum epochs.")] = 40,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Global batch size (split over torchrun processes).")] = 128,
    image_size: Annotated[
        int | None, typer.Option("--image-size", min=8, help="Square input size in pixels (default: the recipe's; 224, seqfakeformer 256).")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (default: the recipe's).")] = None,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="Decoupled weight decay on weights (not biases or norms).")] = 1e-4,
    patience: Annotated[
        int, typer.Option("--patience", min=0, help="Stop after this many epochs without a better validation mAP (0: never).")
    ] = 10,
    ema_decay: Annotated[
        float,
        typer.Option("--ema-decay", min=0.0, max=1.0, help="Weight EMA decay (0 disables); plain and EMA weights are both validated."),
    ] = 0.9997,
    device: Annotated[Device, typer.Option("--device", help="'auto' takes CUDA when present.")] = Device.auto,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (initialisation, shuffling, augmentation).")] = 0,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Start from timm's ImageNet weights (needs internet or a warm cache).")
    ] = False,
    weights: Annotated[
        Path | None, typer.Option("--weights", help="Start the backbone from a local .pth/.safetensors file.", dir_okay=False, exists=True)
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=0, callback=check_workers_option, help="DataLoader worker processes, at most 64 (default: min(4, CPUs))."
        ),
    ] = None,
    amp: Annotated[
        bool | None,
        typer.Option(
            "--amp/--no-amp", help="Mixed precision (default: on for CUDA; bf16, or fp16 with a grad scaler).", show_default=False
        ),
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option("--channels-last/--no-channels-last", help="channels_last memory format (default: on for CUDA).", show_default=False),
    ] = None,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="SyncBatchNorm across torchrun processes (CUDA only).")] = False,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache/--no-cache", help="Decode and resize each image once into PREPARED/SUBSET/cache (default) instead of every epoch."
        ),
    ] = True,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of train held out for validation when there is no val split.")
    ] = 0.1,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flips.")] = True,
    jitter: Annotated[
        float | None,
        typer.Option(
            "--jitter",
            min=0.0,
            max=0.5,
            help="Brightness/contrast/saturation jitter: each factor drawn from [1-J, 1+J] (0 disables; default: the recipe's, 0.1, or seqfakeformer's own ranges).",
        ),
    ] = None,
    augment_perturb: Annotated[
        float,
        typer.Option(
            "--augment-perturb",
            min=0.0,
            max=1.0,
            help="Probability per training image of a random perturbation (mlcdf.data.perturb: any type, any level), drawn per (seed, epoch, image); applied at the input size.",
        ),
    ] = 0.0,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            "--tensorboard",
            help="Also write each epoch's loss, learning rate, val mAP (plain and EMA) and images/s as TensorBoard event files into this folder (one per run; view with 'tensorboard --logdir PARENT'). Needs pip install 'mlcdf[tensorboard]'; a --resume may set or change it.",
            file_okay=False,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out (where it is now, even if copied or moved) from checkpoints/last.pt, with its saved options; --device, --workers and --tensorboard may change.",
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="TOML or JSON file of these options (snake_case keys); flags override it.", dir_okay=False, exists=True
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a multi-label classifier and write RUN/{config.json, log.jsonl, checkpoints/{last,best}.pt}.

    The best checkpoint is chosen on the validation split (plain and EMA weights both compete). On
    several GPUs, launch with torchrun: each process takes batch-size / N images per step.

    Examples:

        mlcdf train --prepared prepared/facial_components --model resnet101 --asl --pretrained --out runs/r101-asl

        torchrun --nproc_per_node=4 -m mlcdf train --prepared prepared/facial_attributes --model tresnet_m --out runs/tm
    """
    # Imported here, not at the top: torch and timm take seconds, which --help and other commands need not pay.
    from mlcdf.config import RESUME_OVERRIDES, TrainConfig
    from mlcdf.train.distributed import launched_by_torchrun
    from mlcdf.train.stage import saved_run_options, train

    values: dict[str, Any] = _read_config_file(config) if config else {}
    for name, value in ctx.params.items():
        if name in ("config", "quiet", "resume") or getattr(ctx.get_parameter_source(name), "name", None) != "COMMANDLINE":
            continue
        field = _CLI_TO_FIELD.get(name, {"out_dir": "out", "compile_model": "compile"}.get(name, name))
        if field == "loss":
            value = "asl" if value else "bce"
        values[field] = value.value if isinstance(value, Device) else str(value) if isinstance(value, Path) else value
    saved = saved_run_options(out_dir) if resume and out_dir is not None else None
    if saved is not None:
        # Resuming continues the saved run; only where and how fast it runs may change.
        values = {**saved, **{k: v for k, v in values.items() if k in RESUME_OVERRIDES}}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    merged = {**defaults, **values}
    unknown = sorted(set(merged) - set(defaults) - {"prepared", "model", "out"})
    if unknown:
        raise MlcdfError(f"{config or 'options'}: unknown option(s) {unknown}")
    missing = [f"--{name}" for name in ("prepared", "model", "out") if not merged.get(name)]
    if missing:
        raise MlcdfError(f"missing option(s) {', '.join(missing)} (give them as flags or in --config)")
    train_config = TrainConfig.from_dict(merged, source=str(config) if config else "options")
    show = not launched_by_torchrun() or os.environ.get("RANK") == "0"
    with RichTrainCallbacks(quiet, show) as callbacks:
        result = train(train_config, resume=resume, callbacks=callbacks, progress=rich_progress(quiet=quiet or not show))
    if show:
        verdict = "stopped early (patience)" if result.stopped_early else "done"
        out.print(
            f"{result.run_dir}: {verdict} after {result.epochs_run} epoch(s); best val mAP "
            f"{100 * result.best_map:.2f} at epoch {result.best_epoch + 1} ({result.best_source} weights)"
        )


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
