"""The train stage: a resumable, distributed-ready run of one model on one prepared subset.

``train(config)`` writes ``RUN/config.json`` (the resolved configuration), ``RUN/log.jsonl`` (one JSON
line per epoch), ``RUN/checkpoints/{last,best}.pt`` and, for graph models, ``RUN/graph.npz`` (a copy of
the label graph, so the run is self-contained). Launched by ``torchrun`` it runs DistributedDataParallel
and only rank 0 writes.

``last.pt`` is the commit point of an epoch: it carries the whole epoch history and the best epoch, and
``best.pt`` and ``log.jsonl`` are written after it. A run killed between these writes is repaired when
it resumes (both are rewritten from ``last.pt``), so its log holds every epoch once and ``best.pt``
holds the best epoch of the log.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import timm.layers
import torch

from mlcdf import __version__
from mlcdf.config import RECIPES, RESUME_OVERRIDES, TrainConfig, default_workers
from mlcdf.data.dataset import (
    Augment,
    CachedSource,
    EpochSampler,
    FileSource,
    MultiLabelImages,
    RowSource,
    build_image_cache,
    cache_path,
    collate_batch,
    holdout_rows,
    to_model_input,
)
from mlcdf.data.prepared import PreparedSubset, load_prepared
from mlcdf.devices import resolve_device
from mlcdf.errors import MlcdfError, SchemaError
from mlcdf.io import atomic_open, check_output_apart, check_output_folder, file_lock, read_json_object, write_json
from mlcdf.label_graph import LabelGraph, load_graph, save_graph
from mlcdf.models import BackboneClassifier, create_model, resolve_config
from mlcdf.progress import ProgressFn, silent
from mlcdf.tasks import Task, create_task
from mlcdf.train.callbacks import SilentCallbacks, TrainCallbacks
from mlcdf.train.checkpoint import load_checkpoint, load_error_summary, save_checkpoint
from mlcdf.train.distributed import DistInfo, barrier, broadcast_buffers, init_distributed, launch_info, shutdown_distributed
from mlcdf.train.ema import ModelEma
from mlcdf.train.engine import predict, train_one_epoch
from mlcdf.train.tensorboard import TensorBoardCallbacks, require_tensorboard

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
GRAPH_FILE = "graph.npz"
CHECKPOINTS = "checkpoints"
#: What ``last.pt`` must hold to resume a run.
RESUME_KEYS = (
    "model",
    "ema",
    "optimizer",
    "scheduler",
    "scaler",
    "epoch",
    "steps_per_epoch",
    "best_map",
    "best_epoch",
    "best_source",
    "rng",
    "history",
    "config",
    "label_names",
    "model_name",
    "mlcdf_version",
)


@dataclass
class TrainResult:
    run_dir: Path
    epochs_run: int
    best_epoch: int
    best_map: float
    best_source: str
    stopped_early: bool
    history: list[dict] = field(default_factory=list)


def mixed_precision(device: torch.device, amp: bool | None) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, needs a grad scaler): bf16 where the GPU has it, else fp16 with a scaler.

    Training, inference and the benchmarks all ask here. bf16 counts only when the GPU computes it
    natively (Ampere and later): by default torch also reports GPUs that merely emulate it (V100, T4),
    where bf16 is several times slower than fp16.
    """
    if amp is False or (amp is None and device.type != "cuda"):
        return None, False
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16, True
    return torch.bfloat16, False


def sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` with SyncBatchNorm layers, for ``--sync-bn`` under DDP.

    timm's conversion keeps a ``BatchNormAct2d`` (TResNet's norm + activation) whole; torch's turns it
    into a plain SyncBatchNorm whose activation is never called, so training would run another network.

    Raises:
        MlcdfError: ``device`` is not CUDA (SyncBatchNorm does not train on the CPU).
    """
    if device.type != "cuda":
        raise MlcdfError("--sync-bn needs CUDA: SyncBatchNorm does not train on the CPU (leave --sync-bn out)")
    return timm.layers.convert_sync_batchnorm(model)


def graph_embedding_kind(graph: LabelGraph) -> str:
    """'image' or 'word', from the graph's recorded source (``build-graph`` writes it)."""
    source = str(
        graph.info.get("embedding", {}).get("kind", "")
        if isinstance(graph.info.get("embedding"), dict)
        else graph.info.get("embedding", "")
    )
    return "image" if source.startswith("image") else "word"


def build_model(config: TrainConfig, num_labels: int, graph: LabelGraph | None, *, fresh: bool = True) -> BackboneClassifier:
    """The model a run trains; pretrained or given weights are loaded only for a fresh start."""
    kwargs = {"backbone": config.backbone} if config.backbone else {}
    return create_model(
        config.model,
        num_labels,
        graph=graph,
        pretrained=config.pretrained and fresh,
        weights=config.weights if fresh else None,
        **kwargs,
    )


def _param_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict]:
    """Weight decay on weights only (not biases or norm parameters), or on every parameter where the
    recipe says ``decay_all`` (seqfakeformer, as the authors' AdamW); the mlgcn and seqfakeformer recipes
    give the backbone a lower learning rate than the head."""
    assert config.lr is not None, "TrainConfig.resolve() fills lr"
    backbone = getattr(model, "backbone", None)
    backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    factor = config.recipe_options.get("backbone_lr_factor", 1.0)
    decay_all = bool(config.recipe_options.get("decay_all", False))
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        key = (id(param) in backbone_ids, decay_all or param.ndim > 1)
        groups.setdefault(key, []).append(param)
    return [
        {
            "params": params,
            "weight_decay": config.weight_decay if decay else 0.0,
            "lr": config.lr * (factor if in_backbone else 1.0),
        }
        for (in_backbone, decay), params in sorted(groups.items())
    ]


def warmup_step_factor(epoch: int, epochs: int) -> float:
    """The seqfakeformer recipe's learning-rate factor in ``epoch`` (0-based) of a run of ``epochs``.

    The authors' ``LambdaLR`` (train.py): ``(epoch + 1) / W`` for the first W epochs, then
    ``0.1 ** #{milestones <= epoch}``, with W = 20 and milestones 70 and 120 of 170 epochs. A run of
    another length scales them: ``W = max(1, round(20 · epochs / 170))``, the milestones likewise.
    """
    recipe = RECIPES["seqfakeformer"]
    scale = epochs / recipe["epochs"]
    warmup = max(1, round(recipe["warmup_epochs"] * scale))
    if epoch < warmup:
        return (epoch + 1) / warmup
    return 0.1 ** sum(1 for milestone in recipe["milestones"] if round(milestone * scale) <= epoch)


def _optimizer_and_scheduler(
    model: torch.nn.Module, config: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    groups = _param_groups(model, config)
    assert config.lr is not None, "TrainConfig.resolve() fills lr"
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if config.recipe == "mlgcn":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=RECIPES["mlgcn"]["momentum"])
        # ML-GCN divides the learning rate by 10 once, late in training (epoch 30 of 40).
        milestone = max(1, math.ceil(0.75 * config.epochs)) * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=0.1)
    elif config.recipe == "seqfakeformer":
        optimizer = torch.optim.AdamW(groups, lr=config.lr)
        # Stepped every batch like the others, constant within an epoch as the authors' per-epoch schedule.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_step_factor(step // steps_per_epoch, config.epochs))
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.lr)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in groups],
            total_steps=config.epochs * steps_per_epoch,
            pct_start=0.2,
        )
    return optimizer, scheduler


@dataclass
class _Data:
    train: MultiLabelImages
    val: MultiLabelImages
    val_name: str


def _build_data(prepared: PreparedSubset, config: TrainConfig, task: Task, dist_info: DistInfo, progress: ProgressFn) -> _Data:
    train_table = prepared.read_split("train")
    if prepared.has_split("val"):
        val_table, val_name = prepared.read_split("val"), "val"
    else:
        val_table, val_name = None, f"{config.val_fraction:.0%} of train held out (no val split)"

    def source(split: str, table):
        if not config.cache:
            return FileSource([prepared.image_path(p) for p in table.file_paths], config.input_size)
        # Each process builds or reuses the cache under a file lock, before the process group exists:
        # the others wait on the lock, which has no timeout, and not in a collective, which has (decoding
        # 1024 px PNGs can outlast NCCL's 10 minutes). The first builds it; the next ones find it done.
        with file_lock(cache_path(prepared, split, config.input_size).with_suffix(".lock")):
            return CachedSource(
                build_image_cache(
                    prepared,
                    split,
                    config.input_size,
                    table=table,
                    workers=config.workers,
                    progress=progress if dist_info.is_main else silent,
                )
            )

    train_source = source("train", train_table)
    augment = Augment(flip=config.flip, **config.jitter_ranges(), perturb=config.augment_perturb)
    train_targets = task.targets(train_table)
    if val_table is None:
        kept, held = holdout_rows(len(train_table), config.val_fraction, config.seed)
        return _Data(
            train=MultiLabelImages(RowSource(train_source, kept), train_targets[kept], augment=augment, seed=config.seed),
            val=MultiLabelImages(RowSource(train_source, held), train_targets[held]),
            val_name=val_name,
        )
    return _Data(
        train=MultiLabelImages(train_source, train_targets, augment=augment, seed=config.seed),
        val=MultiLabelImages(source("val", val_table), task.targets(val_table)),
        val_name=val_name,
    )


def _check_batch_norm_batches(model: torch.nn.Module, smallest: int, config: TrainConfig, train_images: int) -> None:
    """Refuse training batches of one image for a model with BatchNorm layers, which cannot normalise a
    single value per channel (torch's ``ValueError: Expected more than 1 value per channel``)."""
    if smallest >= 2 or not any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules()):
        return
    raise MlcdfError(
        f"{config.prepared}: training batches of {smallest} image ({train_images} training image(s), --batch-size "
        f"{config.batch_size}); {config.model} has BatchNorm layers, which need at least 2 images per training batch"
    )


def _loader(dataset: MultiLabelImages, sampler: EpochSampler, batch_size: int, workers: int, device: torch.device, train: bool):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_batch,
        pin_memory=device.type == "cuda",
        drop_last=train and len(sampler) >= batch_size,
        persistent_workers=workers > 0,
    )


def _rng_state(device: torch.device) -> dict:
    """The generator states this process draws from: the CPU's and its own GPU's only, so that a run
    resumes on a machine (or with a number of processes) that shows fewer GPUs."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and isinstance(state.get("cuda"), torch.Tensor):
        torch.cuda.set_rng_state(state["cuda"], device)


def _resume_schedule(scheduler, state: dict, steps_per_epoch: int, done_epochs: int) -> None:
    """Continue the saved learning-rate schedule, or, where an epoch now takes another number of steps
    (another number of processes shards it), a fresh schedule of the new length from the same epoch, so
    that it neither runs out of steps nor ends early."""
    if state["steps_per_epoch"] == steps_per_epoch:
        scheduler.load_state_dict(state["scheduler"])
        return
    # The fresh scheduler starts from the initial rates; loading the optimizer replaced them.
    for group in scheduler.optimizer.param_groups:
        group["lr"] = group["initial_lr"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": no training here
        for _ in range(done_epochs * steps_per_epoch):
            scheduler.step()


def _best_checkpoint(state: dict) -> dict:
    """``best.pt`` for the epoch of ``state`` (a ``last.pt``), when that epoch's weights are the best."""
    weights = state["ema"]["module"] if state["best_source"] == "ema" else state["model"]
    return {key: state[key] for key in ("epoch", "config", "label_names", "model_name", "mlcdf_version")} | {
        "model": weights,
        "source": state["best_source"],
        "val_mAP": state["best_map"],
    }


def _publish_epoch(run_dir: Path, state: dict) -> None:
    """Write ``best.pt`` (when the epoch of ``last.pt``'s ``state`` is the best) and ``log.jsonl`` from
    ``state``: after an epoch's ``last.pt``, and again on resume, for a run killed before they were."""
    if state["best_epoch"] == state["epoch"]:
        save_checkpoint(run_dir / CHECKPOINTS / "best.pt", _best_checkpoint(state))
    with atomic_open(run_dir / LOG_FILE) as handle:
        for record in state["history"]:
            handle.write(json.dumps(record) + "\n")


def _load_resume_state(path: Path) -> dict:
    """``last.pt``, checked to hold what resuming needs.

    Raises:
        SchemaError: the file is not a checkpoint, or lacks resume state.
    """
    state = load_checkpoint(path)
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise SchemaError(path, f"cannot resume: the checkpoint has no {', '.join(missing)}")
    if not isinstance(state["config"], dict) or not isinstance(state["history"], list):
        raise SchemaError(path, "cannot resume: malformed 'config' or 'history' entry")
    return state


def saved_run_options(run_dir: str | Path) -> dict[str, Any] | None:
    """The options of the run in ``run_dir`` (from its ``config.json``), or ``None`` if there is none."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    options = read_json_object(path).get("train")
    if not isinstance(options, dict):
        raise SchemaError(path, "no 'train' options: not a run configuration")
    return dict(options)


def train(
    config: TrainConfig, *, resume: bool = False, callbacks: TrainCallbacks | None = None, progress: ProgressFn = silent
) -> TrainResult:
    """Run (or resume) training as ``config`` says; see the module docstring for the outputs.

    Raises:
        MlcdfError: bad options, missing inputs, a non-finite loss, or CUDA out of memory.
    """
    callbacks = callbacks or SilentCallbacks()
    run_dir = Path(config.out)
    checkpoint_dir = run_dir / CHECKPOINTS
    last_path = checkpoint_dir / "last.pt"
    resume_state = None
    if resume:
        resume_state = _load_resume_state(last_path) if last_path.is_file() else None
        if resume_state is not None:
            overrides = {name: getattr(config, name) for name in RESUME_OVERRIDES}
            config = TrainConfig.from_dict({**resume_state["config"], **overrides}, source=str(last_path))
    elif last_path.is_file():
        raise MlcdfError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    config = resolve_config(config)
    check_output_folder(run_dir)
    check_output_apart(run_dir, ("--prepared", config.prepared))
    if config.tensorboard is not None:
        check_output_folder(config.tensorboard, "--tensorboard")
        check_output_apart(config.tensorboard, ("--prepared", config.prepared))
        require_tensorboard()
    dist_info = launch_info()
    prepared = load_prepared(config.prepared)
    task = create_task(config, prepared.labels, ordered=prepared.meta.get("ordered", True) is not False)
    data = _build_data(prepared, config, task, dist_info, progress)  # before the process group: see _build_data
    init_distributed("cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu")
    board = None
    if config.tensorboard is not None and dist_info.is_main:
        board = TensorBoardCallbacks(config.tensorboard, callbacks, resume_state["history"] if resume_state else [])
    try:
        return _train(config, task, run_dir, resume_state, dist_info, prepared, data, board or callbacks)
    except torch.OutOfMemoryError:
        smaller = max(1, config.batch_size // 2)
        raise MlcdfError(
            f"CUDA ran out of memory at batch size {config.batch_size} and image size {config.image_size}; try --batch-size {smaller}"
        ) from None
    finally:
        if board is not None:
            board.close()
        shutdown_distributed()


def _train(
    config: TrainConfig,
    task: Task,
    run_dir: Path,
    resume_state: dict | None,
    dist_info: DistInfo,
    prepared: PreparedSubset,
    data: _Data,
    callbacks: TrainCallbacks,
) -> TrainResult:
    device = resolve_device(config.device, dist_info.local_rank)
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    labels = prepared.labels
    # A resumed run reads its own copy of the graph, in case the original moved.
    graph_path = run_dir / GRAPH_FILE if resume_state is not None and (run_dir / GRAPH_FILE).is_file() else config.graph
    graph = load_graph(graph_path) if graph_path else None
    if graph is not None and graph.labels != labels:
        raise MlcdfError(f"{graph_path}: graph labels {list(graph.labels)} differ from the prepared labels {list(labels)}")
    classifier = build_model(config, len(labels), graph, fresh=resume_state is None)
    num_params = sum(p.numel() for p in classifier.parameters())
    mean, std = config.normalisation(classifier.input_mean, classifier.input_std)
    model: torch.nn.Module = classifier  # converted (--sync-bn) and wrapped (DDP) below
    model.to(device)
    channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if config.sync_bn and dist_info.enabled:
        model = sync_batchnorm(model, device)
    ema = ModelEma(model, config.ema_decay) if config.ema_decay > 0 else None

    workers = config.workers if config.workers is not None else default_workers(dist_info.world_size)
    if config.batch_size % dist_info.world_size:
        raise MlcdfError(f"--batch-size {config.batch_size} must be divisible by the {dist_info.world_size} processes")
    rank_batch = config.batch_size // dist_info.world_size
    train_sampler = EpochSampler(len(data.train), shuffle=True, seed=config.seed, rank=dist_info.rank, world_size=dist_info.world_size)
    val_sampler = EpochSampler(len(data.val), shuffle=False, rank=dist_info.rank, world_size=dist_info.world_size, pad=False)
    _check_batch_norm_batches(classifier, min(rank_batch, len(train_sampler)), config, len(data.train))
    train_loader = _loader(data.train, train_sampler, rank_batch, workers, device, train=True)
    val_loader = _loader(data.val, val_sampler, rank_batch, workers, device, train=False)

    criterion = task.loss()
    optimizer, scheduler = _optimizer_and_scheduler(model, config, len(train_loader))
    autocast_dtype, needs_scaler = mixed_precision(device, config.amp)
    scaler = torch.amp.GradScaler(device.type) if needs_scaler else None

    model_without_ddp = model
    if dist_info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # Casts: torch.compile of a module returns an OptimizedModule (an nn.Module); its stub says only "a callable".
    train_model = cast(torch.nn.Module, torch.compile(model)) if config.compile else model
    eval_model = cast(torch.nn.Module, torch.compile(model_without_ddp)) if config.compile else model_without_ddp

    start_epoch, best_map, best_epoch, best_source, history = 0, -1.0, -1, "model", []
    if resume_state is not None:
        start_epoch = resume_state["epoch"] + 1
        try:
            model_without_ddp.load_state_dict(resume_state["model"])
            optimizer.load_state_dict(resume_state["optimizer"])
            _resume_schedule(scheduler, resume_state, len(train_loader), start_epoch)
            if scaler is not None and resume_state["scaler"]:
                scaler.load_state_dict(resume_state["scaler"])
            if ema is not None and resume_state["ema"]:
                ema.load_state_dict(resume_state["ema"])
            _set_rng_state(resume_state["rng"], device)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            # How torch reports the state of another model or optimizer (sizes, keys, parameter groups).
            raise SchemaError(run_dir / CHECKPOINTS / "last.pt", f"cannot resume this run from it: {load_error_summary(error)}") from None
        best_map, best_epoch, best_source = resume_state["best_map"], resume_state["best_epoch"], resume_state["best_source"]
        history = list(resume_state["history"])
        if dist_info.is_main:
            _publish_epoch(run_dir, resume_state)
        callbacks.message(f"resuming {run_dir} after epoch {start_epoch} of {config.epochs}")

    if dist_info.is_main:
        if graph is not None and resume_state is None:
            save_graph(run_dir / GRAPH_FILE, graph)
        write_json(
            run_dir / CONFIG_FILE,
            {
                "train": dataclasses.asdict(config),
                "subset": prepared.subset,
                "alignment": prepared.alignment,
                "labels": list(labels),
                "num_params": num_params,
                "input_mean": list(mean),
                "input_std": list(std),
                "augment": {"flip": config.flip, **{name: list(bounds) for name, bounds in config.jitter_ranges().items()}},
                "graph": {"file": GRAPH_FILE, "embedding": graph_embedding_kind(graph), "source": config.graph}
                if graph is not None
                else None,
                "validation": data.val_name,
                "device": str(device),
                "world_size": dist_info.world_size,
                "autocast": str(autocast_dtype).replace("torch.", "") if autocast_dtype else None,
                "mlcdf_version": __version__,
            },
        )

    def prepare_input(batch: dict) -> torch.Tensor:
        return to_model_input(batch, device, mean, std, channels_last=channels_last)

    # A sum-reduced loss grows with the batch; DDP averages gradients over ranks, so scale back up.
    loss_scale = float(dist_info.world_size) if getattr(criterion, "reduction", "mean") == "sum" else 1.0
    patience_left = config.patience
    if best_epoch >= 0 and history:
        patience_left = config.patience - (history[-1]["epoch"] - best_epoch)
    stopped_early = False
    for epoch in range(start_epoch, config.epochs):
        if config.patience and patience_left <= 0:
            stopped_early = True
            break
        train_sampler.set_epoch(epoch)
        callbacks.epoch_start(epoch, config.epochs, len(train_loader))
        stats = train_one_epoch(
            train_model,
            criterion,
            optimizer,
            train_loader,
            device,
            epoch,
            prepare_input=prepare_input,
            scheduler=scheduler,
            scaler=scaler,
            autocast_dtype=autocast_dtype,
            ema=ema,
            clip_grad_norm=config.clip_grad_norm,
            loss_scale=loss_scale,
            on_step=callbacks.step,
            forward=task.train_outputs,
        )
        # Each rank's BatchNorm statistics followed its own share of the batches: validate with rank 0's,
        # which are the ones saved, so the val mAP is the saved model's (evaluate --split val agrees).
        broadcast_buffers(model_without_ddp)
        if ema is not None:
            broadcast_buffers(ema.module)
        scores, targets, _ = predict(
            eval_model, val_loader, device, to_scores=task.scores, prepare_input=prepare_input, autocast_dtype=autocast_dtype
        )
        candidates = {"model": task.validation_score(targets, scores)}
        if ema is not None:
            ema_scores, _, _ = predict(
                ema.module, val_loader, device, to_scores=task.scores, prepare_input=prepare_input, autocast_dtype=autocast_dtype
            )
            candidates["ema"] = task.validation_score(targets, ema_scores)
        source = max(candidates, key=candidates.__getitem__)
        improved = candidates[source] > best_map
        if improved:
            best_map, best_epoch, best_source = candidates[source], epoch, source
            patience_left = config.patience
        else:
            patience_left -= 1
        record = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "val_mAP": candidates["model"],
            "val_mAP_ema": candidates.get("ema"),
            "lr": optimizer.param_groups[-1]["lr"],
            "images_per_s": stats.images_per_s * dist_info.world_size,
            "epoch_seconds": stats.seconds,
            "best": improved,
        }
        history.append(record)
        if dist_info.is_main:
            state = {
                "model": model_without_ddp.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch,
                "steps_per_epoch": len(train_loader),
                "best_map": best_map,
                "best_epoch": best_epoch,
                "best_source": best_source,
                "history": history,
                "rng": _rng_state(device),
                "config": dataclasses.asdict(config),
                "label_names": list(labels),
                "model_name": config.model,
                "mlcdf_version": __version__,
            }
            save_checkpoint(run_dir / CHECKPOINTS / "last.pt", state)  # the commit point of the epoch
            _publish_epoch(run_dir, state)
        callbacks.epoch_end(record)
    barrier()
    return TrainResult(
        run_dir=run_dir,
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_map=best_map,
        best_source=best_source,
        stopped_early=stopped_early,
        history=history,
    )
