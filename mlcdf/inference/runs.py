"""Rebuild a trained model from its run folder and score images with it.

A run folder is self-contained: ``config.json`` names the model and labels, ``graph.npz`` holds the
label graph of a graph model, and the checkpoints hold the weights.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import safetensors.torch
import torch

from mlcdf.config import TrainConfig, check_alignment, default_alignment
from mlcdf.data.dataset import (
    CachedSource,
    EpochSampler,
    FileSource,
    ImageSource,
    MultiLabelImages,
    build_image_cache,
    collate_batch,
    no_augmentation,
    to_model_input,
)
from mlcdf.data.images import IMAGE_EXTENSIONS, load_rgb
from mlcdf.data.prepared import load_prepared
from mlcdf.devices import resolve_device
from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError, first_line
from mlcdf.inference.bundle import WEIGHTS, Bundle, is_bundle_reference, open_bundle
from mlcdf.inference.thresholds import AUTO, Thresholds, decision_thresholds
from mlcdf.label_graph import load_graph
from mlcdf.labels import sequences_to_ids, step_name
from mlcdf.models import BackboneClassifier
from mlcdf.progress import ProgressFn, silent
from mlcdf.tasks import Task, create_task
from mlcdf.train.checkpoint import load_checkpoint, load_error_summary
from mlcdf.train.engine import autocast, predict
from mlcdf.train.stage import CHECKPOINTS, CONFIG_FILE, GRAPH_FILE, build_model, mixed_precision

CHECKPOINT_CHOICES = ("best", "last", "ema")


@dataclass(frozen=True)
class RunInfo:
    """What a run folder (or a bundle) says about itself.

    For a bundle, ``run_dir`` is the private folder it was extracted to and ``bundle`` the opened bundle
    (its manifest, thresholds and prior orders); ``source`` names what the user gave, for messages.
    """

    run_dir: Path
    config: TrainConfig
    labels: tuple[str, ...]
    subset: str
    num_params: int
    input_mean: tuple[float, float, float]
    input_std: tuple[float, float, float]
    bundle: Bundle | None = None
    #: How its training images were cut from their photos (:data:`mlcdf.config.ALIGNMENTS`); a run from
    #: before the field has its subset's default.
    alignment: str = "none"

    @property
    def task(self) -> Task:
        """What the run's model was trained for, which says how its outputs become scores."""
        return create_task(self.config, self.labels)

    @property
    def source(self) -> str:
        return self.bundle.source if self.bundle is not None else str(self.run_dir)


def read_run(run_dir: str | Path) -> RunInfo:
    """What a run says about itself, from a run folder, a bundle file (``.mlcdf``, written by ``mlcdf export
    --bundle``) or ``hf-hub:ORG/NAME`` (a bundle on the Hugging Face Hub); see :mod:`mlcdf.inference.bundle`.

    Raises:
        MissingArtifactError: no run folder or bundle there.
        SchemaError: a configuration or bundle that does not follow its format.
    """
    if is_bundle_reference(run_dir):
        bundle = open_bundle(run_dir)
        try:
            return dataclasses.replace(read_run(bundle.folder), bundle=bundle)
        except MlcdfError as error:  # named as the bundle's member, not as the private folder's file
            detail = error.detail if isinstance(error, SchemaError) else str(error).replace(f"{bundle.folder / CONFIG_FILE}: ", "")
            raise SchemaError(bundle.source, f"{CONFIG_FILE}: {detail}") from None
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise MissingArtifactError(run_dir, "neither a run folder nor a bundle")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise MissingArtifactError(path, "not a training run folder (run 'mlcdf train' first)")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        return RunInfo(
            run_dir=run_dir,
            config=TrainConfig.from_dict(values["train"], source=str(path)),
            labels=tuple(values["labels"]),
            subset=values["subset"],
            num_params=int(values["num_params"]),
            input_mean=tuple(values["input_mean"]),
            input_std=tuple(values["input_std"]),
            alignment=check_alignment(values.get("alignment", default_alignment(values["subset"])), source=str(path)),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SchemaError(path, f"not a run configuration ({type(error).__name__}: {error})") from None


def load_run_model(run: str | Path | RunInfo, checkpoint: str = "best", device: str | torch.device = "cpu") -> BackboneClassifier:
    """The model of a run, with the weights of ``checkpoint``, in eval mode on ``device``.

    Args:
        run: the run folder or bundle, or what :func:`read_run` read from it.
        checkpoint: ``best`` (the validation-selected weights), ``last`` (the plain weights after the
            last epoch) or ``ema`` (the EMA weights after the last epoch). A bundle holds one of them:
            ``best`` takes it, any other value must be the one it holds.
    """
    if checkpoint not in CHECKPOINT_CHOICES:
        raise MlcdfError(f"unknown checkpoint {checkpoint!r}; expected one of {', '.join(CHECKPOINT_CHOICES)}")
    info = run if isinstance(run, RunInfo) else read_run(run)
    if info.bundle is not None:
        path, weights = _bundle_weights(info.bundle, checkpoint)
    else:
        path = info.run_dir / CHECKPOINTS / ("best.pt" if checkpoint == "best" else "last.pt")
        state = load_checkpoint(path)
        if checkpoint == "ema" and not state.get("ema"):
            raise MlcdfError(f"{info.run_dir}: the run was trained without EMA (--ema-decay 0); use --checkpoint last")
        weights = state["ema"]["module"] if checkpoint == "ema" else state["model"]
    graph_path = info.run_dir / GRAPH_FILE
    graph = load_graph(graph_path) if graph_path.is_file() else None
    model = build_model(info.config, len(info.labels), graph, fresh=False)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, KeyError, AttributeError) as error:
        raise SchemaError(
            path, f"the weights do not fit the run's model ({info.config.model}, {len(info.labels)} labels): {load_error_summary(error)}"
        ) from None
    return model.to(device).eval()


def _bundle_weights(bundle: Bundle, checkpoint: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """The one set of weights a bundle holds (safetensors: no pickle), and the path to name in errors.

    A bundle keeps the weights chosen at export; ``best`` (every command's default) takes them, and
    another choice must be the one exported, so that asking for weights the bundle lacks is an error.
    """
    if checkpoint not in ("best", bundle.checkpoint):
        raise MlcdfError(f"{bundle.source}: the bundle holds the {bundle.checkpoint!r} weights only; leave out --checkpoint")
    named = Path(f"{bundle.source} ({WEIGHTS})")
    try:
        return named, safetensors.torch.load_file(bundle.folder / WEIGHTS, device="cpu")
    except (OSError, ValueError, safetensors.SafetensorError) as error:
        raise SchemaError(named, f"not readable safetensors ({first_line(error)})") from None


class SplitPredictions(NamedTuple):
    """What :func:`predict_split` returns; the first six fields unpack as before sequences existed.

    ``true_sequences`` and ``pred_sequences`` are (N, L) step ids (0 = none, ids 1..C, L = C), for
    :func:`mlcdf.metrics.fixed_accuracy` and :func:`~mlcdf.metrics.adaptive_accuracy`;
    ``pred_sequences`` is None when the run's task has no order (:meth:`mlcdf.tasks.Task.decode`).
    """

    y_true: np.ndarray
    y_score: np.ndarray
    file_paths: list[str]
    num_steps: np.ndarray
    labels: tuple[str, ...]
    num_params: int
    true_sequences: np.ndarray
    pred_sequences: np.ndarray | None


def predict_split(
    run_dir: str | Path,
    split: str = "test",
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int = 64,
    progress: ProgressFn = silent,
    workers: int = 0,
) -> SplitPredictions:
    """Score every image of a prepared split with a run's model, and decode its sequences where the task has an order.

    Returns:
        :class:`SplitPredictions`: ``(y_true, y_score, file_paths, num_steps, labels, num_params,
        true_sequences, pred_sequences)``.
    """
    info = read_run(run_dir)
    torch_device = resolve_device(device)
    model = load_run_model(info, checkpoint, torch_device)
    prepared = load_prepared(info.config.prepared)
    table = prepared.read_split(split)
    size = info.config.input_size
    source: ImageSource
    if info.config.cache:
        source = CachedSource(build_image_cache(prepared, split, size, table=table, progress=progress))
    else:
        source = FileSource([prepared.image_path(p) for p in table.file_paths], size)
    dataset = MultiLabelImages(source, table.targets)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), shuffle=False, pad=False),
        collate_fn=collate_batch,
        num_workers=workers,
        pin_memory=torch_device.type == "cuda",
    )
    autocast_dtype, _ = mixed_precision(torch_device, None)

    def prepare_input(batch: dict) -> torch.Tensor:
        return to_model_input(batch, torch_device, info.input_mean, info.input_std, channels_last=torch_device.type == "cuda")

    task = info.task
    decoded: list[torch.Tensor] = []

    def to_scores(outputs: torch.Tensor) -> torch.Tensor:
        steps = task.decode(outputs)
        if steps is not None:
            decoded.append(steps.cpu())
        return task.scores(outputs)

    scores, targets, _ = predict(
        model,
        loader,
        torch_device,
        to_scores=to_scores,
        prepare_input=prepare_input,
        autocast_dtype=autocast_dtype,
        progress=progress,
    )
    # One process, batches in row order: the decoded rows are in the order of the scores.
    pred_sequences = torch.cat(decoded).numpy().astype(np.int64) if decoded else None
    return SplitPredictions(
        targets.astype(np.uint8),
        scores,
        table.file_paths,
        table.num_steps,
        info.labels,
        info.num_params,
        sequences_to_ids(table.sequences, info.labels),
        pred_sequences,
    )


@dataclass(frozen=True)
class ImagePredictions:
    """Scores of user images: one row per readable image, plus the files that could not be read.

    A run whose task has an order (a sequence model) also gives ``sequences``, (N, L) step ids in order
    (0 = none, as :meth:`mlcdf.tasks.Task.decode` gives them), and ``step_probabilities``, (N, L) the
    probability of each of those steps; both are None for a multi-label run.
    """

    labels: tuple[str, ...]
    paths: list[Path]
    scores: np.ndarray
    thresholds: Thresholds
    unreadable: list[tuple[Path, str]]
    sequences: np.ndarray | None = None
    step_probabilities: np.ndarray | None = None

    @property
    def predicted(self) -> np.ndarray:
        return self.thresholds.hits(self.scores)

    @property
    def fake_scores(self) -> np.ndarray:
        """An image is fake when any manipulation is present: its fake score is the largest label score."""
        return self.scores.max(axis=1) if len(self.scores) else np.zeros(0)

    def predicted_sets(self) -> list[list[str]]:
        return [[label for label, hit in zip(self.labels, row) if hit] for row in self.predicted]

    def predicted_steps(self) -> list[list[tuple[str, float]]] | None:
        """Each image's predicted steps in order, with each step's probability (``[]`` for a real image;
        a token that is no label, which the decoder can emit, is named ``#<id>``: :func:`~mlcdf.labels.step_name`);
        None for a run without an order."""
        if self.sequences is None or self.step_probabilities is None:
            return None
        return [
            [(step_name(step, self.labels), float(probability)) for step, probability in zip(ids.tolist(), probabilities) if step]
            for ids, probabilities in zip(self.sequences, self.step_probabilities)
        ]


def find_images(inputs: list[Path], extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Expand folders (recursively, sorted) into files with one of ``extensions`` (images by default, videos
    too for ``mlcdf predict``); files are kept as given.

    Raises:
        MissingArtifactError: an input does not exist.
    """
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found.extend(sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in extensions))
        elif item.is_file():
            found.append(item)
        else:
            raise MissingArtifactError(item)
    return found


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes user images one by one; an unreadable file yields its error instead of failing the batch."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths = paths
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, load_rgb(self.paths[index], self.size), None
        except (OSError, ValueError) as error:
            return index, None, str(error) or type(error).__name__


def _collate_images(items):
    good = [(index, image) for index, image, _ in items if image is not None]
    bad = [(index, reason) for index, _, reason in items if reason is not None]
    images = torch.from_numpy(np.stack([image for _, image in good])) if good else None
    return [index for index, _ in good], images, bad


class ScoredBatch(NamedTuple):
    """A batch's per-label probabilities (N, C), and for a sequence run its steps (N, L) and their probabilities."""

    scores: np.ndarray
    sequences: np.ndarray | None
    step_probabilities: np.ndarray | None


class ImageScorer:
    """A run's model on ``device``, scoring batches of ``uint8`` RGB images (N, S, S, 3) at its input size:
    what :func:`predict_images`, face crops (:mod:`mlcdf.inference.faces`) and video frames share."""

    def __init__(self, info: RunInfo, model: torch.nn.Module, device: torch.device) -> None:
        self.info, self.model, self.device = info, model, device
        self.task = info.task
        self.autocast_dtype, _ = mixed_precision(device, None)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> ScoredBatch:
        batch = {"images": images, **no_augmentation(len(images))}
        x = to_model_input(batch, self.device, self.info.input_mean, self.info.input_std, channels_last=self.device.type == "cuda")
        with autocast(self.device, self.autocast_dtype):
            logits = self.model(x)
        decoded, probabilities = self.task.decode(logits), self.task.step_probabilities(logits)
        ordered = decoded is not None and probabilities is not None
        return ScoredBatch(
            self.task.scores(logits).cpu().double().numpy(),
            decoded.cpu().numpy().astype(np.int64) if ordered else None,  # type: ignore[union-attr]
            probabilities.cpu().double().numpy() if ordered else None,  # type: ignore[union-attr]
        )


@torch.no_grad()
def predict_images(
    run_dir: str | Path,
    inputs: list[Path],
    *,
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int = 64,
    threshold: str | float = AUTO,
    workers: int = 2,
    progress: ProgressFn = silent,
) -> ImagePredictions:
    """Score user images (files or folders) with a run's model; unreadable files are listed, not fatal.

    ``threshold`` decides the predicted labels (:func:`~mlcdf.inference.thresholds.decision_thresholds`).
    """
    info = read_run(run_dir)
    thresholds = decision_thresholds(info, threshold)
    torch_device = resolve_device(device)
    model = load_run_model(info, checkpoint, torch_device)
    paths = find_images(inputs)
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, info.config.input_size),
        batch_size=batch_size,
        num_workers=workers if len(paths) > batch_size else 0,
        collate_fn=_collate_images,
    )
    scorer = ImageScorer(info, model, torch_device)
    kept: list[int] = []
    scores: list[np.ndarray] = []
    steps: list[np.ndarray] = []
    step_probabilities: list[np.ndarray] = []
    unreadable: list[tuple[Path, str]] = []
    for indices, images, bad in progress(loader, "Predicting", total=len(loader)):
        unreadable.extend((paths[index], reason) for index, reason in bad)
        if images is None:
            continue
        scored = scorer(images)
        scores.append(scored.scores)
        if scored.sequences is not None and scored.step_probabilities is not None:
            steps.append(scored.sequences)
            step_probabilities.append(scored.step_probabilities)
        kept.extend(indices)
    score_array = np.concatenate(scores) if scores else np.zeros((0, len(info.labels)))
    return ImagePredictions(
        info.labels,
        [paths[i] for i in kept],
        score_array,
        thresholds,
        unreadable,
        sequences=np.concatenate(steps) if steps else None,
        step_probabilities=np.concatenate(step_probabilities) if step_probabilities else None,
    )
