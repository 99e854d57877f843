"""The order study: does predicting the order of the manipulations beat a multi-label model plus the prior order?

The paper (Singh et al., MMSP 2023) drops Seq-DeepFake's order, saying it "adds complexity to the problem
without having a clear benefit". :func:`run_study` measures that on the synthetic stand-in, whose
manipulations are stacked in order, each on the output of the previous one (:mod:`mlcdf.data.synth`), in a
uniformly random order, so the order can only be read from the traces each step leaves on the earlier
ones. It writes one dataset, prepares it, and runs one plan (:mod:`mlcdf.experiments.plans`) of two models
with the same timm backbone, recipe, epochs and input size, each with several training seeds:

- ``seqfakeformer``: SeqFakeFormer (``seqfakeformer_r34``'s architecture on the study's backbone), which
  predicts the steps in order (:class:`~mlcdf.tasks.SequenceTask`);
- ``multilabel``: the backbone with a linear head and the ASL loss, whose predicted set is put in the
  order the training split applies it most often (:mod:`mlcdf.tasks.prior_order`) for Fixed-Acc and
  Adaptive-Acc;

and the oracle: the true set in that most frequent order, which bounds what the prior order is worth.
The runner's evaluation gives every run all five figures (``metrics.json``: mAP, CF1, OF1, Fixed-Acc,
Adaptive-Acc, and ``oracle_order``). Everything lands under one folder::

    OUT/data/<subset>/                       mlcdf synth
    OUT/prepared/<subset>/                   mlcdf prepare
    OUT/runs/synth/<model>-s<k>/             mlcdf train + mlcdf evaluate (by the runner; k the training seed)
    OUT/study.json                           the study's settings; a rerun with other settings is refused
    OUT/study.csv                            one row per evaluated run (and the oracle's): the five figures
    OUT/study.md                             mean ± std per model, SeqFakeFormer − multi-label paired by seed, the answer
    OUT/study.png                            the five figures per model, ± std

The training seeds vary the initialisation, the batches and the augmentation; the dataset is the same for
every seed, so the spread is that of training, not of data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcdf.config import RECIPES, check_count
from mlcdf.data.synth import SynthConfig
from mlcdf.errors import MlcdfError
from mlcdf.evaluation.evaluate import METRICS_FILE, default_eval_dir, read_metrics
from mlcdf.experiments.plans import Plan
from mlcdf.experiments.runner import PlanResult
from mlcdf.experiments.study import (
    STUDY_PNG,
    Spread,
    chance_map,
    csv_number,
    direct_model,
    evaluated_runs,
    paired_differences,
    run_name,
    run_study_plan,
    save_figure,
    write_study_files,
)
from mlcdf.io import check_output_folder
from mlcdf.labels import SUBSETS
from mlcdf.models import is_model
from mlcdf.progress import ProgressFn, silent

COMMAND = "mlcdf study order"
#: The model that predicts the order, and the multi-label model read through the prior order.
SEQUENCE, MULTILABEL = "seqfakeformer", "multilabel"
#: The true set in its most frequent training order: a row of study.csv without a seed.
ORACLE = "oracle"
MODELS = (SEQUENCE, MULTILABEL)
#: The registry model whose architecture SeqFakeFormer takes, on the study's backbone.
SEQUENCE_MODEL = "seqfakeformer_r34"
#: The figures compared; the oracle has only the two sequence ones.
METRICS = ("mAP", "CF1", "OF1", "Fixed-Acc", "Adaptive-Acc")
SEQUENCE_METRICS = ("Fixed-Acc", "Adaptive-Acc")
#: The plan's name for the one dataset (its runs are OUT/runs/synth/...).
DATA_TAG = "synth"
CSV_COLUMNS = ("model", "seed", "backbone", *METRICS)
_CSV_HEADER = ",".join(CSV_COLUMNS)
_MD_TITLE = "# Order study"
_NAMES = {
    SEQUENCE: "SeqFakeFormer (predicts the order)",
    MULTILABEL: "multi-label + prior order",
    ORACLE: "oracle (true set, prior order)",
}
#: Settings that make a different study: a rerun into the same OUT must keep them (seeds may grow, adding runs).
_FIXED_SETTINGS = (
    "subset",
    "backbone",
    "train",
    "val",
    "test",
    "data_size",
    "trace_strength",
    "data_seed",
    "recipe",
    "epochs",
    "batch_size",
    "image_size",
    "lr",
    "pretrained",
    "patience",
)


@dataclass(frozen=True)
class OrderStudyConfig:
    """What :func:`run_study` runs; :data:`PRESETS` hold the CPU default, the GPU test and a tiny one.

    Attributes:
        out: the study folder.
        seeds: training runs per model (seeds 0..N-1).
        subset: the synthetic subset (its labels and manipulations).
        backbone: the timm backbone of both models.
        train, val, test: images per split.
        data_size: side of the synthetic images; trace_strength: how visible the manipulations are.
        data_seed: the dataset's seed.
        recipe, epochs, batch_size, image_size, lr, pretrained, patience: training, the same for both
            models, so that only the head and the task differ.
        device: ``auto``, ``cpu`` or ``cuda`` (in-process runs; ``devices`` of :func:`run_study` otherwise).
        workers: DataLoader workers (0: in the training process, best on a small CPU; ``None``: the
            trainer's default).
    """

    out: Path
    seeds: int = 3
    subset: str = "facial_components"
    backbone: str = "resnet18"
    train: int = 800
    val: int = 150
    test: int = 200
    data_size: int = 64
    # The co-occurrence study's CPU lesson: at trace strength 2 with a few hundred images every model
    # stayed near chance; at 4 a ResNet-18 from scratch leaves it within a few epochs.
    trace_strength: float = 4.0
    data_seed: int = 0
    # One recipe for both. The authors' (seqfakeformer: backbone at lr/10, x0.1 steps scaled to the run,
    # so x0.1 from epoch 3 of 8) left SeqFakeFormer from scratch near chance on the CPU preset's data (val
    # mAP 0.63, 0.63, 0.64 over its first 3 epochs); with the ASL recipe's OneCycle at lr 1e-3 it reached
    # 0.76 by epoch 6, and the multi-label model trains with it too.
    recipe: str = "asl"
    epochs: int = 8
    batch_size: int = 32
    image_size: int = 64
    lr: float | None = 1e-3
    pretrained: bool = False
    patience: int = 0
    device: str = "auto"
    workers: int | None = 0

    def check(self) -> None:
        if self.seeds < 1:
            raise MlcdfError(f"--seeds {self.seeds}: expected at least 1")
        check_count("seeds", self.seeds, option="--seeds")
        if self.subset not in SUBSETS:
            raise MlcdfError(f"--subset {self.subset}: expected one of {', '.join(SUBSETS)}")
        if self.recipe not in RECIPES:
            raise MlcdfError(f"--recipe {self.recipe}: expected one of {', '.join(RECIPES)}")
        if ":" in self.backbone or not is_model(f"timm:{self.backbone}"):
            raise MlcdfError(f"--backbone {self.backbone}: not a timm model (see 'mlcdf models')")
        self.synth_config().check()

    def settings(self) -> dict[str, Any]:
        """The settings as ``study.json`` records them."""
        return {**dataclasses.asdict(self), "out": str(self.out)}

    @property
    def prepared_dir(self) -> Path:
        return Path(self.out) / "prepared" / self.subset

    def synth_config(self) -> SynthConfig:
        return SynthConfig(
            out=Path(self.out) / "data",
            subsets=(self.subset,),
            train=self.train,
            val=self.val,
            test=self.test,
            size=self.data_size,
            seed=self.data_seed,
            strength=self.trace_strength,
            workers=1,
        )

    def model_options(self, model: str) -> dict[str, Any]:
        """The plan options of ``model`` (:data:`SEQUENCE` or :data:`MULTILABEL`) on the study's backbone."""
        if model == SEQUENCE:
            return {"model": SEQUENCE_MODEL, "backbone": self.backbone}
        return {"model": direct_model(self.backbone), "loss": "asl"}

    def plan(self) -> Plan:
        """The study as a plan: both models on the one dataset, ``seeds`` times, named ``<model>-s<k>``."""
        shared: dict[str, Any] = dict(
            recipe=self.recipe,
            epochs=self.epochs,
            batch_size=self.batch_size,
            image_size=self.image_size,
            pretrained=self.pretrained,
            patience=self.patience,
            device=self.device,
        )
        shared.update({name: getattr(self, name) for name in ("lr", "workers") if getattr(self, name) is not None})
        runs = [
            {"name": run_name(model, seed), "seed": seed, **self.model_options(model)} for model in MODELS for seed in range(self.seeds)
        ]
        return Plan.from_dict({"defaults": {"prepared": {DATA_TAG: str(self.prepared_dir)}, **shared}, "runs": runs}, source=COMMAND)


#: ``cpu``: the default, sized to learn on a 2-core CPU in about half an hour with ``--jobs 2 --devices
#: cpu,cpu``. ``gpu``: the real test, the authors' input size (256 px) on an ImageNet-pretrained ResNet-34
#: (their R34 backbone) with more data, epochs and seeds; the same trace strength as ``cpu``, so the two
#: differ in budget, not in the data's difficulty (lower it with ``--trace-strength`` if both models
#: saturate). ``tiny``: seconds per run, to try the command and for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "gpu": dict(
        seeds=5,
        backbone="resnet34",
        train=4000,
        val=500,
        test=1000,
        data_size=256,
        epochs=40,
        batch_size=32,
        image_size=256,
        lr=None,
        pretrained=True,
        patience=10,
        workers=None,
    ),
    "tiny": dict(seeds=2, backbone="test_resnet", train=24, val=8, test=16, data_size=32, epochs=1, batch_size=8, image_size=32),
}


# --------------------------------------------------------------------------------------------- running


def run_study(
    config: OrderStudyConfig,
    *,
    jobs: int | None = None,
    devices: Sequence[str] | None = None,
    launcher: str = "local",
    slurm: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] = lambda text: None,
    progress: ProgressFn = silent,
    **hooks: Any,
) -> tuple[PlanResult, list[OrderRow]]:
    """Make the dataset, run the plan (see :func:`mlcdf.experiments.runner.run_plan` for ``jobs``, ``devices``,
    ``launcher``, ``slurm`` and ``hooks``), then write ``study.csv``, ``study.md`` and ``study.png`` from
    the evaluated runs. ``dry_run`` only reports each run's status.

    Raises:
        MlcdfError: bad settings, OUT holding a study with other settings, or an output that the study
            did not write.
    """
    check_output_folder(config.out)
    config.check()
    return run_study_plan(
        Path(config.out),
        config.settings(),
        config.plan(),
        command=COMMAND,
        fixed=_FIXED_SETTINGS,
        table_starts=(_CSV_HEADER, _MD_TITLE),
        datasets=[(config.synth_config(), config.prepared_dir)],
        analyse=lambda: collect_rows(config),
        write=lambda out, rows: write_study(out, rows, config),
        run_options=dict(jobs=jobs, devices=devices, launcher=launcher, slurm=slurm, **hooks),
        dry_run=dry_run,
        log=log,
        progress=progress,
    )


# --------------------------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class OrderRow:
    """One evaluated run (its model and seed), or the oracle (seed None), and its test figures (%) of :data:`METRICS`."""

    model: str
    seed: int | None
    values: dict[str, float | None]


def collect_rows(config: OrderStudyConfig) -> list[OrderRow]:
    """The evaluated runs of the study under OUT, then the oracle, read from the runs' ``metrics.json``.

    Every run evaluates the same test split with the prior of the same training split, so every run
    records the same oracle; the first one's is taken.

    Raises:
        MlcdfError: a run's metrics.json without the sequence figures (naming the file).
    """
    names = {run_name(model, seed): (model, seed) for model in MODELS for seed in range(config.seeds)}
    rows, oracle = [], None
    for entry, folder in evaluated_runs(config.plan(), Path(config.out)):
        path = default_eval_dir(folder, "test") / METRICS_FILE
        metrics = read_metrics(path)
        if "Fixed-Acc" not in metrics or "oracle_order" not in metrics:
            raise MlcdfError(f"{path}: no Fixed-Acc or oracle_order; evaluate the run again with 'mlcdf evaluate --run {folder}'")
        model, seed = names[entry.run.name]
        rows.append(OrderRow(model, seed, {name: metrics[name] for name in METRICS}))
        oracle = oracle or {name: metrics["oracle_order"].get(name) for name in SEQUENCE_METRICS}
    if oracle is not None:
        rows.append(OrderRow(ORACLE, None, {**dict.fromkeys(METRICS), **oracle}))
    return rows


def summarise(rows: Sequence[OrderRow]) -> dict[tuple[str, str], Spread]:
    """(model, metric) -> the metric over the model's rows (seeds; one row for the oracle)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        for metric in METRICS:
            if (value := row.values.get(metric)) is not None:
                groups.setdefault((row.model, metric), []).append(float(value))
    return {key: Spread.of(values) for key, values in groups.items()}


def sequence_minus_multilabel(rows: Sequence[OrderRow]) -> dict[str, Spread]:
    """Per metric: SeqFakeFormer's figure minus the multi-label model's of the same seed, over the seeds both have."""
    differences = {}
    for metric in METRICS:
        values = {(None, row.model, row.seed): row.values.get(metric) for row in rows if row.model in MODELS and row.seed is not None}
        if (spread := paired_differences(values, MULTILABEL).get((None, SEQUENCE))) is not None:
            differences[metric] = spread
    return differences


def verdict(difference: Spread) -> str:
    """Whether a paired difference (SeqFakeFormer − multi-label) has one sign in every seed, in words."""
    seeds = "the one seed" if difference.n == 1 else f"every one of {difference.n} seeds"
    if difference.low > 0:
        return f"yes, higher in {seeds}"
    if difference.high < 0:
        return f"no, lower in {seeds}"
    return (
        f"not consistently: higher in some of the {difference.n} seeds, not in others" if difference.n > 1 else "no, equal in the one seed"
    )


def answer(rows: Sequence[OrderRow]) -> str:
    """The study's answer in plain words, computed from ``rows``; empty without a seed that both models ran."""
    differences = sequence_minus_multilabel(rows)
    if not differences:
        return ""
    sentence = "Does predicting the order beat the multi-label model plus the prior order?"
    for metric in SEQUENCE_METRICS:
        if (difference := differences.get(metric)) is not None:
            sentence += f" On {metric}: {verdict(difference)} ({_delta(difference)})."
    if (cost := differences.get("mAP")) is not None:
        direction = "costs" if cost.mean < 0 else "gains"
        sentence += f" On mAP it {direction} {abs(cost.mean):.1f} points on average ({_delta(cost)})."
    oracle = summarise(rows)
    if all((ORACLE, metric) in oracle for metric in SEQUENCE_METRICS):
        sentence += (
            f" The true sets in their most frequent training order score {oracle[(ORACLE, 'Fixed-Acc')].mean:.1f} Fixed-Acc and "
            f"{oracle[(ORACLE, 'Adaptive-Acc')].mean:.1f} Adaptive-Acc: what the prior order is worth with a perfect set."
        )
    return sentence


def _delta(difference: Spread) -> str:
    """``Δ +1.2 ± 0.4 points, from +0.8 to +1.6``: a paired difference with its range over seeds."""
    return f"Δ {difference.text(signed=True)} points, from {difference.low:+.1f} to {difference.high:+.1f}"


def study_markdown(rows: Sequence[OrderRow], config: OrderStudyConfig, *, chance: float | None = None) -> str:
    """``study.md``: the settings, mean ± std per model, the paired differences and :func:`answer`."""
    table = summarise(rows)
    lines = [
        _MD_TITLE,
        "",
        f"Synthetic `{config.subset}` at trace strength {config.trace_strength:g}, {config.train}/{config.val}/{config.test} "
        f"images of {config.data_size} px (seed {config.data_seed}); backbone `{config.backbone}` for both models "
        f"(SeqFakeFormer = `{SEQUENCE_MODEL}`'s architecture on it; multi-label = `{direct_model(config.backbone)}` with the ASL "
        f"loss), recipe `{config.recipe}`, {config.epochs} epochs at {config.image_size} px, "
        f"{'ImageNet-pretrained' if config.pretrained else 'from scratch'}. Test metrics in %, mean ± sample std over "
        "training seeds (n each).",
        "",
        "| model | n | " + " | ".join(METRICS) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in METRICS) + " |",
    ]
    for model in (*MODELS, ORACLE):
        cells = [table.get((model, metric)) for metric in METRICS]
        n = max((cell.n for cell in cells if cell is not None), default=0)
        if n:
            if model == ORACLE:  # one value, no spread: the same data for every seed
                lines.append(f"| {_NAMES[model]} | – | " + " | ".join(f"{c.mean:.1f}" if c else "–" for c in cells) + " |")
            else:
                lines.append(f"| {_NAMES[model]} | {n} | " + " | ".join(c.text() if c else "–" for c in cells) + " |")
    if chance is not None:
        lines += ["", f"Chance mAP (a constant score: each label's share of the test images, averaged): {chance:.1f}."]
    differences = sequence_minus_multilabel(rows)
    if differences:
        lines += ["", "SeqFakeFormer − multi-label (points; per seed, the same seed's runs):", ""]
        lines += ["| metric | n | Δ | lowest | highest |", "| --- | ---: | ---: | ---: | ---: |"]
        for metric, spread in differences.items():
            lines.append(f"| {metric} | {spread.n} | {spread.text(signed=True)} | {spread.low:+.1f} | {spread.high:+.1f} |")
        lines += ["", f"**Answer.** {answer(rows)}"]
    return "\n".join(lines) + "\n"


def write_study(out: Path, rows: Sequence[OrderRow], config: OrderStudyConfig) -> None:
    """``study.csv``, ``study.md`` and ``study.png`` from ``rows``."""
    order = {model: index for index, model in enumerate((*MODELS, ORACLE))}
    table: list[list[Any]] = [list(CSV_COLUMNS)]
    for row in sorted(rows, key=lambda r: (order[r.model], -1 if r.seed is None else r.seed)):
        seed = "" if row.seed is None else row.seed
        backbone = "" if row.model == ORACLE else config.backbone
        table.append([row.model, seed, backbone, *(csv_number(row.values.get(metric)) for metric in METRICS)])
    chance = chance_map(config.prepared_dir) if rows else None
    write_study_files(out, csv_rows=table, markdown=study_markdown(rows, config, chance=chance))
    if rows:
        _write_figure(out / STUDY_PNG, rows, config, chance)


def _write_figure(path: Path, rows: Sequence[OrderRow], config: OrderStudyConfig, chance: float | None) -> None:
    # Imported here: matplotlib costs about a second, and only this step draws.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.8), layout="constrained")
    axes = figure.subplots()
    table = summarise(rows)
    models = [model for model in (*MODELS, ORACLE) if any(name == model for name, _ in table)]
    width = 0.8 / len(models)
    for position, model in enumerate(models):
        spreads = [table.get((model, metric)) for metric in METRICS]
        centres = [index - 0.4 + width * (position + 0.5) for index in range(len(METRICS))]
        axes.bar(
            centres,
            [math.nan if s is None else s.mean for s in spreads],
            width,
            yerr=[0.0 if s is None or math.isnan(s.std) else s.std for s in spreads],
            capsize=3,
            label=_NAMES[model],
        )
    if chance is not None:
        axes.plot([-0.45, 0.45], [chance, chance], color="grey", linestyle="--", label="chance mAP")
    axes.set_xticks(range(len(METRICS)), METRICS)
    axes.set_ylabel("test figure (%)")
    axes.set_ylim(0, 100)
    axes.grid(axis="y", alpha=0.3)
    figure.legend(fontsize=8, loc="outside right upper")  # beside the axes: inside, it hides the short bars
    figure.suptitle(
        f"{config.subset}, trace strength {config.trace_strength:g}, backbone {config.backbone}: mean ± std over seeds", fontsize=9
    )
    save_figure(figure, path, COMMAND)
