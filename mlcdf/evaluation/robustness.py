"""Robustness: a run's metrics on a split under each perturbation condition (``evaluate --perturb``).

Each image is decoded once, at its stored size; every condition is derived from that decoded image
(:func:`mlcdf.data.perturb.apply`, as a platform would re-encode the file), then resized to the model's input
as the images of training were. Worker processes do the decoding and perturbing, the device the model.

Files written into the evaluation folder (``RUN/eval/<split>/``):

- ``robustness.csv``: ``perturbation,level``, the paper's metrics (percent), ``exact_match``; one row per
  condition, the ``clean`` row (level 0) first.
- ``robustness.md``: the same table with each level's raw parameter and the mAP change against clean,
  and the summary of :func:`summarise`.
- ``robustness.png``: mAP against level, one line per perturbation, the clean mAP as a dashed line.

The clean row goes through the same full decode and resize as the perturbed ones, so the differences
are the perturbations' alone. ``metrics.json`` beside it may differ from it in the last digits: it reads
the image cache, where JPEG files are decoded directly at a reduced scale.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mlcdf.config import available_cpus, check_workers
from mlcdf.data.dataset import no_augmentation, to_model_input
from mlcdf.data.images import load_rgb, resize
from mlcdf.data.perturb import CLEAN_CONDITION, PERTURBATIONS, Condition, apply, check_seed, describe
from mlcdf.data.prepared import load_prepared
from mlcdf.devices import resolve_device
from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError
from mlcdf.evaluation.evaluate import PAPER_METRICS, Predictions, compute_metrics, format_percent
from mlcdf.inference.runs import load_run_model, read_run
from mlcdf.io import atomic_open, read_csv_rows
from mlcdf.progress import ProgressFn, silent
from mlcdf.train.engine import predict
from mlcdf.train.stage import mixed_precision

ROBUSTNESS_CSV = "robustness.csv"
ROBUSTNESS_MD = "robustness.md"
ROBUSTNESS_PNG = "robustness.png"
COLUMNS = ("perturbation", "level", *PAPER_METRICS, "exact_match")


def condition_seed(seed: int, row: int, condition: Condition) -> tuple[int, ...]:
    """The random stream of one image under one condition: the same whatever other conditions are asked."""
    type_index = list(PERTURBATIONS).index(condition.name) if condition.level else 0
    return (seed, row, type_index, condition.level)


def perturbed_views(image: np.ndarray, conditions: Sequence[Condition], size: int, seed: int, row: int) -> np.ndarray:
    """``uint8`` (K, size, size, 3): the decoded ``image`` under each condition, resized to the model's input."""
    stored = Image.fromarray(image)
    return np.stack([np.asarray(resize(apply(stored, c, condition_seed(seed, row, c)), (size, size)), dtype=np.uint8) for c in conditions])


class _ConditionViews(torch.utils.data.Dataset):
    """Image ``row`` of a split under every condition; an unreadable file yields its error (raised by the caller)."""

    def __init__(self, paths: list[Path], conditions: Sequence[Condition], size: int, seed: int) -> None:
        self.paths = paths
        self.conditions = list(conditions)
        self.size = size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            image = load_rgb(self.paths[row])
        except OSError as error:
            return row, None, f"{self.paths[row]}: cannot decode ({error})"
        return row, perturbed_views(image, self.conditions, self.size, self.seed, row), None


def _flatten_batch(items: list, targets: np.ndarray, count: int) -> dict:
    """One model batch of every image x condition; index ``row * count + k`` keeps them apart.

    An unreadable image makes the batch ``{"problem": message}``, raised in the main process by
    :func:`_raise_problem` (an error raised in a worker would reach the user as a worker traceback).
    """
    problems = [problem for _, _, problem in items if problem is not None]
    if problems:
        return {"problem": problems[0]}
    rows = [row for row, _, _ in items]
    images = np.concatenate([views for _, views, _ in items])
    return {
        "images": torch.from_numpy(images),
        "targets": torch.from_numpy(np.repeat(targets[rows], count, axis=0).astype(np.float32)),
        "indices": torch.tensor([row * count + k for row in rows for k in range(count)], dtype=torch.int64),
        **no_augmentation(len(images)),
    }


def _raise_problem(batch: dict) -> None:
    if "problem" in batch:
        raise MlcdfError(batch["problem"])


@dataclass(frozen=True)
class ConditionScores:
    """Scores of one split under each condition: ``scores[:, k]`` belongs to ``conditions[k]``."""

    conditions: list[Condition]
    scores: np.ndarray  # float64 (N, K, C)
    predictions: Predictions  # the clean predictions (targets, file paths, steps)

    def under(self, k: int) -> Predictions:
        clean = self.predictions
        return Predictions(
            clean.file_paths,
            clean.labels,
            clean.targets,
            self.scores[:, k],
            clean.num_steps,
            origin=f"{clean.origin}, {describe(self.conditions[k])}",
        )


def score_conditions(
    run_dir: str | Path,
    conditions: Sequence[Condition],
    *,
    split: str = "test",
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    seed: int = 0,
    progress: ProgressFn = silent,
) -> ConditionScores:
    """Score every image of ``split`` under ``clean`` and each of ``conditions`` with a run's model.

    Args:
        conditions: perturbations to apply (the clean condition is added first when absent).
        batch_size: images x conditions per model batch (at least one image's conditions).
        workers: processes decoding and perturbing (the main cost, not the model); None takes
            min(16, CPUs), 0 works in this process.
        seed: the random draws (noise, block positions) of image ``row`` under a condition come from
            :func:`condition_seed`, so they do not depend on the worker count or the other conditions.
    """
    check_seed(seed, "seed")
    check_workers(workers, "workers")
    conditions = list(dict.fromkeys([CLEAN_CONDITION, *conditions]))
    info = read_run(run_dir)
    torch_device = resolve_device(device)
    model = load_run_model(info, checkpoint, torch_device)
    prepared = load_prepared(info.config.prepared)
    table = prepared.read_split(split)
    count = len(conditions)
    workers = min(16, available_cpus()) if workers is None else workers
    dataset = _ConditionViews([prepared.image_path(p) for p in table.file_paths], conditions, info.config.input_size, seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=max(1, batch_size // count),
        collate_fn=functools.partial(_flatten_batch, targets=table.targets, count=count),
        num_workers=workers if len(dataset) > 1 else 0,
        pin_memory=torch_device.type == "cuda",
    )
    autocast_dtype, _ = mixed_precision(torch_device, None)

    def prepare_input(batch: dict) -> torch.Tensor:
        _raise_problem(batch)
        return to_model_input(batch, torch_device, info.input_mean, info.input_std, channels_last=torch_device.type == "cuda")

    def labelled(items, description, total=None):
        return progress(items, f"Scoring {len(table)} images x {count} conditions", total=total)

    flat_scores, _, _ = predict(
        model,
        loader,
        torch_device,
        to_scores=info.task.scores,
        prepare_input=prepare_input,
        autocast_dtype=autocast_dtype,
        progress=labelled,
    )
    scores = flat_scores.reshape(len(table), count, -1)
    clean = Predictions(
        file_paths=list(table.file_paths),
        labels=tuple(info.labels),
        targets=np.asarray(table.targets, dtype=np.uint8),
        scores=scores[:, 0],
        num_steps=None if table.num_steps is None else np.asarray(table.num_steps, dtype=np.int64),
        origin=f"{run_dir} ({split} split, {checkpoint} checkpoint)",
    )
    return ConditionScores(conditions, scores, clean)


def robustness_rows(scored: ConditionScores, *, threshold=0.5, tune_on: Predictions | None = None) -> list[dict]:
    """One row per condition (clean first): ``perturbation``, ``level``, the paper's metrics, ``exact_match``."""
    rows = []
    for k, condition in enumerate(scored.conditions):
        metrics = compute_metrics(scored.under(k), threshold=threshold, tune_on=tune_on)
        rows.append(
            {"perturbation": condition.name, "level": condition.level, **{name: metrics[name] for name in (*PAPER_METRICS, "exact_match")}}
        )
    return rows


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def write_robustness(folder: str | Path, rows: list[dict]) -> None:
    """Write robustness.csv, robustness.md and robustness.png into ``folder`` (an evaluation folder being built)."""
    folder = Path(folder)
    with atomic_open(folder / ROBUSTNESS_CSV) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row["perturbation"], row["level"], *(_cell(row[name]) for name in COLUMNS[2:])])
    (folder / ROBUSTNESS_MD).write_text(render_robustness(rows), encoding="utf-8")
    plot_robustness(folder / ROBUSTNESS_PNG, rows)


def read_robustness(path: str | Path) -> list[dict]:
    """Read a ``robustness.csv``; empty cells (undefined metrics) become None.

    Raises:
        MissingArtifactError: no such file. SchemaError: another header, or a cell that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(path, "run 'mlcdf evaluate --run RUN --perturb SPEC' first")
    records = read_csv_rows(path)
    _, header = next(records, (1, None))
    if header is None or tuple(header) != COLUMNS:
        raise SchemaError(path, f"header is {header}, expected {list(COLUMNS)}", line=1)
    rows = []
    for line, record in records:
        if len(record) != len(COLUMNS):
            raise SchemaError(path, f"{len(record)} columns, expected {len(COLUMNS)}", line=line)
        try:
            values = [None if cell == "" else float(cell) for cell in record[2:]]
            level = int(record[1])
        except ValueError:
            raise SchemaError(path, f"expected numbers after the perturbation name, got {record[1:]}", line=line) from None
        rows.append({"perturbation": record[0], "level": level, **dict(zip(COLUMNS[2:], values))})
    if not rows or rows[0]["level"] != 0:
        raise SchemaError(path, "expected the clean row (level 0) first", line=2)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Clean mAP, mean mAP over the perturbed conditions, and the worst condition (lowest mAP)."""
    perturbed = [row for row in rows if row["level"] > 0 and row["mAP"] is not None]
    worst = min(perturbed, key=lambda row: row["mAP"], default=None)
    return {
        "clean_mAP": rows[0]["mAP"],
        "conditions": len(perturbed),
        "mean_mAP": float(np.mean([row["mAP"] for row in perturbed])) if perturbed else None,
        "worst": None if worst is None else f"{worst['perturbation']}:{worst['level']}",
        "worst_mAP": None if worst is None else worst["mAP"],
    }


def render_robustness(rows: list[dict]) -> str:
    summary = summarise(rows)
    clean_map = rows[0]["mAP"]
    lines = [
        "# Robustness",
        "",
        f"Clean mAP {format_percent(clean_map)}; mean mAP over {summary['conditions']} perturbed conditions "
        f"{format_percent(summary['mean_mAP'])}; worst {summary['worst'] or 'n/a'} ({format_percent(summary['worst_mAP'])}).",
        "Perturbations follow DeeperForensics-1.0 (Jiang et al., CVPR 2020); see `mlcdf.data.perturb` for each level.",
        "",
        "| condition | " + " | ".join(PAPER_METRICS) + " | exact match | mAP change |",
        "| --- |" + " ---: |" * (len(PAPER_METRICS) + 2),
    ]
    for row in rows:
        name = describe(Condition(row["perturbation"], row["level"]))
        change = "" if None in (row["mAP"], clean_map) or row["level"] == 0 else f"{row['mAP'] - clean_map:+.2f}"
        cells = [format_percent(row[metric]) for metric in (*PAPER_METRICS, "exact_match")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {change} |")
    lines += ["", f"![mAP against level]({ROBUSTNESS_PNG})", ""]
    return "\n".join(lines)


def plot_robustness(path: Path, rows: list[dict], title: str = "mAP under perturbations") -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    axes = figure.add_subplot()
    names = list(dict.fromkeys(row["perturbation"] for row in rows if row["level"] > 0))
    for name in names:
        points = sorted((row["level"], row["mAP"]) for row in rows if row["perturbation"] == name and row["mAP"] is not None)
        axes.plot([level for level, _ in points], [value for _, value in points], marker="o", label=name)
    if rows[0]["mAP"] is not None:
        axes.axhline(rows[0]["mAP"], color="black", linestyle="--", label=f"clean ({rows[0]['mAP']:.1f})")
    axes.set(xlabel="level (1 = mildest)", ylabel="mAP (%)", xticks=[1, 2, 3, 4, 5], title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize="small", ncol=2)
    figure.savefig(path, dpi=120)


def robustness_file(path: str | Path, split: str = "test") -> Path:
    """The robustness.csv of an evaluation folder, or of a run folder's ``eval/<split>``."""
    path = Path(path)
    return path / ROBUSTNESS_CSV if (path / ROBUSTNESS_CSV).is_file() else path / "eval" / split / ROBUSTNESS_CSV


def robustness_section(paths: Sequence[str | Path], split: str = "test") -> str:
    """``mlcdf report --robustness``: a Markdown section comparing the runs' robustness (:func:`render_comparison`).

    Raises:
        MissingArtifactError: a run was not evaluated with ``--perturb``. SchemaError: a malformed robustness.csv.
    """
    named = [(Path(path).name, read_robustness(robustness_file(path, split))) for path in paths]
    return "\n## Robustness (mAP under perturbations, percent)\n\n" + render_comparison(named)


def render_comparison(named_rows: Sequence[tuple[str, list[dict]]]) -> str:
    """A Markdown table of several runs' robustness: clean mAP, mean over conditions, worst condition."""
    lines = [
        "| run | clean mAP | mean mAP (perturbed) | conditions | worst condition | worst mAP |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for name, rows in named_rows:
        s = summarise(rows)
        lines.append(
            f"| {name} | {format_percent(s['clean_mAP'])} | {format_percent(s['mean_mAP'])} | {s['conditions']} | "
            f"{s['worst'] or 'n/a'} | {format_percent(s['worst_mAP'])} |"
        )
    return "\n".join(lines) + "\n"
