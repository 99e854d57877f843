"""The co-occurrence study: do graph models gain over a direct model when manipulations co-occur?

The paper (Singh et al., MMSP 2023) found that ML-GCN, IML-GCN and ML-AGCN, which model label
co-occurrence, lose to plain CNNs on Seq-DeepFake, and explained it by the data: the manipulations were
drawn uniformly, so their co-occurrence carries no information. :func:`run_study` tests that
explanation. For each co-occurrence strength RHO it writes a synthetic dataset whose fakes follow a
profile's recipes with probability RHO (:mod:`mlcdf.data.synth_cooccurrence`), prepares it, and runs one
plan (:mod:`mlcdf.experiments.plans`): a direct model and graph models with the same backbone, loss and recipe,
each with several training seeds, on every dataset; the runner builds each dataset's word graph, skips
evaluated runs and resumes interrupted ones, on one device, several, or Slurm. Everything lands under
one folder::

    OUT/data/rho<RHO>/<subset>/        mlcdf synth (same seed for every RHO: only the label process differs)
    OUT/prepared/rho<RHO>/<subset>/    mlcdf prepare
    OUT/graphs/rho<RHO>-word.npz       mlcdf build-graph (by the runner)
    OUT/runs/rho<RHO>/<model>-s<k>/    mlcdf train + mlcdf evaluate (by the runner; k the training seed)
    OUT/study.json                     the study's settings; a rerun with other settings is refused
    OUT/study.csv                      one row per evaluated run: strength, model, seed, the paper's metrics
    OUT/study.md                       mean ± std per strength and model; graph - direct mAP per strength
    OUT/study.png                      mAP and CF1 against RHO, one line per model, ± std bands

The training seeds vary the initialisation, the batches and the augmentation; the dataset of a strength
is the same for every seed, so the spread is that of training, not of data.

The parts every study shares (a study's settings pinned in ``study.json``, its synthetic datasets, its
evaluated runs, :class:`Spread`, seed-paired differences, its tables and figure) are public here, for
:mod:`mlcdf.experiments.study_order`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mlcdf.config import check_count
from mlcdf.data.prepared import META_FILE, SYNTH_JSON, load_prepared
from mlcdf.data.seqdeepfake import PrepareConfig, prepare
from mlcdf.data.synth import SynthConfig, generate
from mlcdf.data.synth_cooccurrence import EDITING_HABITS
from mlcdf.errors import MlcdfError
from mlcdf.evaluation.evaluate import PAPER_METRICS
from mlcdf.evaluation.report import load_result
from mlcdf.experiments.plans import Plan, PlanEntry, graph_path, run_dir
from mlcdf.experiments.runner import PlanResult, is_evaluated, run_plan
from mlcdf.graph.embeddings import PAPER_WORD_EMBEDDING
from mlcdf.io import (
    PNG_STAMP_KEY,
    atomic_open,
    atomic_path,
    check_file_replaceable,
    check_output_folder,
    png_written_by,
    read_json_object,
    write_json,
)
from mlcdf.labels import SUBSETS
from mlcdf.models import is_model
from mlcdf.progress import ProgressFn, silent

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: A study's analysed row (its own type per study).
Row = TypeVar("Row")

COMMAND = "mlcdf study cooccurrence"
STUDY_JSON, STUDY_CSV, STUDY_MD, STUDY_PNG = "study.json", "study.csv", "study.md", "study.png"
#: The direct model's name in the tables (its run folder is ``direct-s<k>``).
DIRECT = "direct"
#: Graph models compared with the direct one; each takes the study's backbone.
GRAPH_MODELS = ("ml_gcn", "ml_agcn")
CSV_COLUMNS = ("strength", "model", "seed", "backbone", *PAPER_METRICS)
_CSV_HEADER = ",".join(CSV_COLUMNS)
_MD_TITLE = "# Co-occurrence study"
#: Settings that make a different study: a rerun into the same OUT must keep them (strengths and seeds
#: may grow, adding runs).
_FIXED_SETTINGS = (
    "profile",
    "subset",
    "backbone",
    "models",
    "train",
    "val",
    "test",
    "data_size",
    "trace_strength",
    "data_seed",
    "epochs",
    "batch_size",
    "image_size",
    "lr",
    "pretrained",
    "patience",
    "word_embedding",
)


@dataclass(frozen=True)
class StudyConfig:
    """What :func:`run_study` runs; :data:`PRESETS` hold the CPU default and the paper-sized GPU variant.

    Attributes:
        out: the study folder.
        strengths: the RHO values, each in [0, 1].
        seeds: training runs per model and strength (seeds 0..N-1).
        profile: the co-occurrence profile (``editing-habits`` or a profile JSON file).
        subset: the synthetic subset (its labels).
        backbone: the timm backbone of every model (the direct model is ``timm:<backbone>``, or the
            registry's model of that name, e.g. ``resnet101``).
        models: ``direct`` and graph models of :data:`GRAPH_MODELS`.
        train, val, test: images per split of each dataset.
        data_size: side of the synthetic images; trace_strength: how visible the manipulations are.
        data_seed: the seed of every dataset.
        epochs, batch_size, image_size, lr, pretrained, patience: training, the same for every model
            (the ASL recipe and loss for all, so that only the head differs).
        word_embedding: node features of the graphs.
        device: ``auto``, ``cpu`` or ``cuda`` (in-process runs; ``devices`` of :func:`run_study` otherwise).
        workers: DataLoader workers (0: in the training process, best on a small CPU; ``None``: the
            trainer's default).
    """

    out: Path
    strengths: tuple[float, ...] = (0.0, 0.5, 0.9)
    seeds: int = 3
    profile: str = EDITING_HABITS
    subset: str = "facial_components"
    backbone: str = "resnet18"
    models: tuple[str, ...] = (DIRECT, *GRAPH_MODELS)
    train: int = 800
    val: int = 150
    test: int = 200
    data_size: int = 64
    # The most visible traces (as make demo): at 2.0 with 400 images and 3 epochs every model stayed
    # within a few points of chance, which cannot tell a graph model's gain from noise.
    trace_strength: float = 4.0
    data_seed: int = 0
    epochs: int = 6
    batch_size: int = 32
    image_size: int = 48
    lr: float | None = 1e-3
    pretrained: bool = False
    patience: int = 0
    word_embedding: str = "glove"
    device: str = "auto"
    workers: int | None = 0

    def check(self) -> None:
        if not self.strengths:
            raise MlcdfError("--strengths is empty; give e.g. 0,0.5,0.9")
        for strength in self.strengths:
            if not 0.0 <= strength <= 1.0:
                raise MlcdfError(f"--strengths: {strength} is not a co-occurrence strength from 0 to 1")
        if len(set(map(strength_tag, self.strengths))) != len(self.strengths):
            raise MlcdfError(f"--strengths {','.join(map(str, self.strengths))}: a strength is given twice")
        if self.seeds < 1:
            raise MlcdfError(f"--seeds {self.seeds}: expected at least 1")
        check_count("seeds", self.seeds, option="--seeds")
        if self.subset not in SUBSETS:
            raise MlcdfError(f"--subset {self.subset}: expected one of {', '.join(SUBSETS)}")
        unknown = [model for model in self.models if model not in (DIRECT, *GRAPH_MODELS)]
        if unknown or DIRECT not in self.models or len(self.models) < 2:
            raise MlcdfError(f"--models {','.join(self.models)}: expected direct and one or more of {', '.join(GRAPH_MODELS)}")
        if not is_model(self.direct_model):
            raise MlcdfError(f"--backbone {self.backbone}: not a timm model (see 'mlcdf models')")
        for strength in self.strengths:  # the dataset's settings and the --profile file, before study.json is written
            self.synth_config(strength).check()

    @property
    def direct_model(self) -> str:
        return direct_model(self.backbone)

    def settings(self) -> dict[str, Any]:
        """The settings as ``study.json`` records them."""
        values = dataclasses.asdict(self)
        values.update(out=str(self.out), strengths=list(self.strengths), models=list(self.models))
        return values

    def data_root(self, strength: float) -> Path:
        return Path(self.out) / "data" / strength_tag(strength)

    def prepared_dir(self, strength: float) -> Path:
        return Path(self.out) / "prepared" / strength_tag(strength) / self.subset

    def synth_config(self, strength: float) -> SynthConfig:
        return SynthConfig(
            out=self.data_root(strength),
            subsets=(self.subset,),
            train=self.train,
            val=self.val,
            test=self.test,
            size=self.data_size,
            seed=self.data_seed,
            strength=self.trace_strength,
            workers=1,
            cooccurrence=self.profile,
            cooccurrence_strength=strength,
        )

    def plan(self) -> Plan:
        """The study as a plan: every model on the prepared dataset of every strength, ``seeds`` times."""
        shared = dict(
            loss="asl",
            recipe="asl",
            epochs=self.epochs,
            batch_size=self.batch_size,
            image_size=self.image_size,
            pretrained=self.pretrained,
            patience=self.patience,
            device=self.device,
        )
        shared.update({name: getattr(self, name) for name in ("lr", "workers") if getattr(self, name) is not None})
        # One configuration per model and seed, named <model>-s<k> whatever the number of seeds, so that
        # a study can grow from 1 seed to 3 without training seed 0 again under another folder name.
        runs = [
            {
                "name": run_name(model, seed),
                "seed": seed,
                **({"model": self.direct_model} if model == DIRECT else {"model": model, "backbone": self.backbone, "embedding": "word"}),
            }
            for model in self.models
            for seed in range(self.seeds)
        ]
        defaults = {
            "prepared": {strength_tag(s): str(self.prepared_dir(s)) for s in self.strengths},
            "word_embedding": self.word_embedding,
            **shared,
        }
        return Plan.from_dict({"defaults": defaults, "runs": runs}, source=COMMAND)


#: ``cpu``: the default, about 1 minute per run on a 2-core CPU (two runs at once). ``gpu``: the paper's sizes (ResNet-101, the
#: backbone of ML-GCN, ImageNet-pretrained, 224 px, up to 40 epochs with early stopping, GloVe 300-d), on data of the
#: same trace strength (4) as ``cpu``: the two presets then differ in model and budget only, so the GPU run tests
#: whether the CPU finding holds for converged models rather than on easier or harder data (``--trace-strength``
#: changes it, e.g. to 1, the default difficulty of ``mlcdf synth``, if the models saturate).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "gpu": dict(
        backbone="resnet101",
        train=4000,
        val=500,
        test=1000,
        data_size=256,
        epochs=40,
        batch_size=128,
        image_size=224,
        lr=None,
        pretrained=True,
        patience=10,
        word_embedding=PAPER_WORD_EMBEDDING,
        workers=None,
    ),
}


def direct_model(backbone: str) -> str:
    """The multi-label model of a timm ``backbone``: the registry's model of that name (e.g. ``resnet101``), else ``timm:<backbone>``."""
    return backbone if is_model(backbone) and ":" not in backbone else f"timm:{backbone}"


def run_name(model: str, seed: int) -> str:
    """``ml_gcn-s2``: the run folder of a model and a training seed."""
    return f"{model}-s{seed}"


def strength_tag(strength: float) -> str:
    """``rho0.5``: the name of a strength's dataset, graph and run folders."""
    return f"rho{strength:g}"


# --------------------------------------------------------------------------------------------- running


def run_study(
    config: StudyConfig,
    *,
    jobs: int | None = None,
    devices: Sequence[str] | None = None,
    launcher: str = "local",
    slurm: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] = lambda text: None,
    progress: ProgressFn = silent,
    **hooks: Any,
) -> tuple[PlanResult, list[StudyRow]]:
    """Make the datasets, run the plan (see :func:`mlcdf.experiments.runner.run_plan` for ``jobs``, ``devices``,
    ``launcher``, ``slurm`` and ``hooks``), then write ``study.csv``, ``study.md`` and ``study.png`` from
    the evaluated runs. ``dry_run`` only reports each run's status.

    Raises:
        MlcdfError: bad settings, OUT holding a study with other settings, or an output table that the
            study did not write.
    """
    check_output_folder(config.out)
    config.check()
    datasets = [(config.synth_config(strength), config.prepared_dir(strength)) for strength in config.strengths]
    return run_study_plan(
        Path(config.out),
        config.settings(),
        config.plan(),
        command=COMMAND,
        fixed=_FIXED_SETTINGS,
        table_starts=(_CSV_HEADER, _MD_TITLE),
        datasets=datasets,
        analyse=lambda: collect_rows(config),
        write=lambda out, rows: write_study(out, rows, config),
        run_options=dict(jobs=jobs, devices=devices, launcher=launcher, slurm=slurm, **hooks),
        dry_run=dry_run,
        log=log,
        progress=progress,
    )


# --------------------------------------------------------------------------------------------- shared by the studies


def run_study_plan(
    out: Path,
    settings: Mapping[str, Any],
    plan: Plan,
    *,
    command: str,
    fixed: Sequence[str],
    table_starts: Sequence[str],
    datasets: Sequence[tuple[SynthConfig, Path]],
    analyse: Callable[[], list[Row]],
    write: Callable[[Path, list[Row]], None],
    run_options: Mapping[str, Any],
    dry_run: bool,
    log: Callable[[str], None],
    progress: ProgressFn,
) -> tuple[PlanResult, list[Row]]:
    """What every study does around its own analysis: check OUT (:func:`check_study_outputs`), record the
    settings, make the synthetic ``datasets``, run ``plan`` with ``run_options`` (those of
    :func:`mlcdf.experiments.runner.run_plan`), then ``analyse`` the evaluated runs into rows and ``write``
    them under OUT. ``dry_run`` only reports each run's status."""
    check_study_outputs(out, settings, fixed, command=command, table_starts=table_starts)
    if dry_run:
        return run_plan(plan, out, **run_options, dry_run=True), []
    write_json(out / STUDY_JSON, settings)
    for synth, prepared_dir in datasets:
        make_dataset(synth, prepared_dir, log=log, progress=progress)
    result = run_plan(plan, out, **run_options, log=log, progress=progress)
    rows = analyse()
    write(out, rows)
    log(f"{len(rows)} rows; {out / STUDY_CSV}, {out / STUDY_MD}, {out / STUDY_PNG}")
    return result, rows


def check_study_outputs(out: Path, settings: Mapping[str, Any], fixed: Sequence[str], *, command: str, table_starts: Sequence[str]) -> None:
    """Before a study runs: OUT holds no study with other ``fixed`` settings (its ``study.json``), and
    ``study.csv``, ``study.md`` and ``study.png`` are absent or the study's own (their first line one of
    ``table_starts``; the figure stamped by ``command``).

    Raises:
        MlcdfError: naming the file at fault.
    """
    path = out / STUDY_JSON
    if path.is_file():
        previous = read_json_object(path, f"the settings of '{command}'")
        changed = [key for key in fixed if previous.get(key) != settings[key]]
        if changed:
            details = ", ".join(f"{key} {previous.get(key)!r} -> {settings[key]!r}" for key in changed)
            raise MlcdfError(f"{path}: this folder holds a study with other settings ({details}); choose another --out")
    for name in (STUDY_CSV, STUDY_MD):
        check_file_replaceable(out / name, command=command, is_own=lambda table: _starts_with_line(table, table_starts))
    check_file_replaceable(out / STUDY_PNG, command=command, is_own=png_written_by(command))


def make_dataset(synth: SynthConfig, prepared_dir: Path, *, log: Callable[[str], None], progress: ProgressFn) -> None:
    """Write the synthetic dataset of ``synth`` (one subset) and prepare it into ``prepared_dir``, unless both are there."""
    (subset,) = synth.subsets
    if (synth.out / subset / SYNTH_JSON).is_file() and (prepared_dir / META_FILE).is_file():
        return  # the settings are pinned by study.json, and a folder is complete once it has its file
    labels = (
        "" if synth.cooccurrence_strength is None else f", {synth.cooccurrence} at co-occurrence strength {synth.cooccurrence_strength:g}"
    )
    log(f"{synth.out.name}: writing the synthetic dataset ({subset}, trace strength {synth.strength:g}{labels})")
    generate(synth, progress=progress)
    prepare(PrepareConfig(root=synth.out, out=prepared_dir.parent, subsets=(subset,)), progress=progress)


def evaluated_runs(plan: Plan, out: Path) -> list[tuple[PlanEntry, Path]]:
    """The plan's runs under ``out`` that have their test evaluation, with their folders, in plan order."""
    folders = [(entry, run_dir(out, entry)) for entry in plan.entries()]
    return [(entry, folder) for entry, folder in folders if is_evaluated(folder)]


def paired_differences(values: Mapping[tuple[Any, str, int], float | None], baseline: str) -> dict[tuple[Any, str], Spread]:
    """Per (group, model other than ``baseline``): the model's value minus ``baseline``'s with the same
    seed in the same group, over the seeds both have. ``values`` maps (group, model, seed) to a value."""
    differences: dict[tuple[Any, str], list[float]] = {}
    for (group, model, seed), value in sorted(values.items()):
        reference = values.get((group, baseline, seed))
        if model != baseline and value is not None and reference is not None:
            differences.setdefault((group, model), []).append(float(value) - float(reference))
    return {key: Spread.of(found) for key, found in differences.items()}


def write_study_files(out: Path, *, csv_rows: Sequence[Sequence[Any]], markdown: str) -> None:
    """``study.csv`` (``csv_rows``, the header first) and ``study.md``, each written whole."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(csv_rows)
    with atomic_open(out / STUDY_CSV) as handle:
        handle.write(buffer.getvalue())
    with atomic_open(out / STUDY_MD) as handle:
        handle.write(markdown)


def csv_number(value: float | None) -> str:
    """A metric as study.csv writes it: 6 decimals, empty when undefined."""
    return "" if value is None else f"{value:.6f}"


def save_figure(figure: Figure, path: Path, command: str) -> None:
    """``figure`` as a PNG stamped as ``command``'s, written whole."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120, metadata={PNG_STAMP_KEY: command})


def _starts_with_line(path: Path, starts: Sequence[str]) -> bool:
    """Whether the file's first line is one of ``starts`` (a study's CSV header or Markdown title)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline(1 << 16).rstrip("\n") in starts
    except (OSError, UnicodeDecodeError):
        return False


# --------------------------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class StudyRow:
    """One evaluated run: its strength, model (``direct`` or a graph model), seed and test metrics (%)."""

    strength: float
    model: str
    seed: int
    values: dict[str, float | None]


def collect_rows(config: StudyConfig) -> list[StudyRow]:
    """The evaluated runs of the study under OUT, read from their run folders."""
    tags = {strength_tag(s): s for s in config.strengths}
    models = {run_name(model, seed): (model, seed) for model in config.models for seed in range(config.seeds)}
    rows = []
    for entry, folder in evaluated_runs(config.plan(), Path(config.out)):
        model, seed = models[entry.run.name]
        rows.append(StudyRow(tags[entry.subset], model, seed, dict(load_result(folder).values)))
    return rows


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (``nan`` for one value), smallest and largest of ``n`` values."""

    mean: float
    std: float
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return cls(statistics.fmean(values), std, len(values), min(values), max(values))

    def text(self, digits: int = 1, *, signed: bool = False) -> str:
        """``62.0 ± 2.8``; ``+5.0 ± –`` for a signed difference of one value."""
        std = "–" if math.isnan(self.std) else f"{self.std:.{digits}f}"
        return f"{self.mean:{'+' if signed else ''}.{digits}f} ± {std}"


def summarise(rows: Sequence[StudyRow], metric: str) -> dict[tuple[float, str], Spread]:
    """``metric`` over seeds per (strength, model)."""
    groups: dict[tuple[float, str], list[float]] = {}
    for row in rows:
        if (value := row.values.get(metric)) is not None:
            groups.setdefault((row.strength, row.model), []).append(float(value))
    return {key: Spread.of(values) for key, values in sorted(groups.items())}


def graph_minus_direct(rows: Sequence[StudyRow], metric: str = "mAP") -> dict[tuple[float, str], Spread]:
    """Per strength and graph model: ``metric`` of the graph model minus that of the direct model
    trained with the same seed, over the seeds both have."""
    return paired_differences({(row.strength, row.model, row.seed): row.values.get(metric) for row in rows}, DIRECT)


def write_study(out: Path, rows: Sequence[StudyRow], config: StudyConfig) -> None:
    """``study.csv``, ``study.md`` and ``study.png`` from ``rows``."""
    table: list[list[Any]] = [list(CSV_COLUMNS)]
    for row in sorted(rows, key=lambda r: (r.strength, _model_order(config, r.model), r.seed)):
        values = [csv_number(row.values.get(m)) for m in PAPER_METRICS]
        table.append([f"{row.strength:g}", row.model, row.seed, config.backbone, *values])
    write_study_files(out, csv_rows=table, markdown=study_markdown(rows, config))
    if rows:
        _write_figure(out / STUDY_PNG, rows, config)


def _model_order(config: StudyConfig, model: str) -> int:
    return config.models.index(model) if model in config.models else len(config.models)


def study_markdown(rows: Sequence[StudyRow], config: StudyConfig) -> str:
    strengths = sorted({row.strength for row in rows})
    models = sorted({row.model for row in rows}, key=lambda model: _model_order(config, model))
    lines = [
        _MD_TITLE,
        "",
        f"Profile `{config.profile}` on `{config.subset}`, strengths {', '.join(f'{s:g}' for s in strengths)}; "
        f"backbone `{config.backbone}` for every model (direct = `{config.direct_model}`), ASL loss and recipe, "
        f"{config.epochs} epochs at {config.image_size} px, {config.train}/{config.val}/{config.test} images of "
        f"{config.data_size} px per dataset. Test metrics in %, mean ± sample std over training seeds (n each).",
        "",
        "| strength | model | n | " + " | ".join(PAPER_METRICS) + " |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in PAPER_METRICS) + " |",
    ]
    tables = {metric: summarise(rows, metric) for metric in PAPER_METRICS}
    for strength in strengths:
        for model in models:
            cells = [tables[m].get((strength, model)) for m in PAPER_METRICS]
            n = max((cell.n for cell in cells if cell is not None), default=0)
            if n:
                lines.append(f"| {strength:g} | {model} | {n} | " + " | ".join(c.text() if c else "–" for c in cells) + " |")
    lines += ["", *_data_lines(config, strengths)]
    lines += ["", "Graph − direct mAP (points; per seed, the graph model minus the direct model of the same seed):", ""]
    lines += ["| strength | model | n | Δ mAP |", "| --- | --- | ---: | ---: |"]
    for (strength, model), spread in sorted(graph_minus_direct(rows).items(), key=lambda i: (i[0][0], _model_order(config, i[0][1]))):
        lines.append(f"| {strength:g} | {model} | {spread.n} | {spread.text(signed=True)} |")
    return "\n".join(lines) + "\n"


def chance_map(prepared_dir: Path) -> float:
    """The test mAP (%) of a scorer that knows nothing: each label's share of the test images, averaged."""
    targets = load_prepared(prepared_dir).read_split("test").targets
    return 100 * float(targets.mean(axis=0).mean())


def _data_lines(config: StudyConfig, strengths: Sequence[float]) -> list[str]:
    """What co-occurrence each dataset has: the share of fakes whose label set is a recipe (all splits)
    and the edges its label graph keeps (P(j | i) >= t on the training split); and the test mAP of a
    scorer that knows nothing (each label's share of the test images, averaged), which moves with the
    label frequencies."""
    lines = [
        "The datasets (chance mAP: the test mAP of a constant score):",
        "",
        "| strength | fakes with a recipe's label set | edges kept by the graph | chance mAP |",
        "| --- | ---: | ---: | ---: |",
    ]
    labels = SUBSETS[config.subset]
    for strength in strengths:
        tag = strength_tag(strength)
        synth_json = config.data_root(strength) / config.subset / SYNTH_JSON
        graph_json = graph_path(Path(config.out), tag, "word").with_suffix(".json")
        if not synth_json.is_file() or not graph_json.is_file():
            continue
        share = read_json_object(synth_json)["cooccurrence"]["label_statistics"]["fakes_from_a_recipe_set"]
        graph = read_json_object(graph_json)
        possible = len(labels) * (len(labels) - 1)
        chance = chance_map(config.prepared_dir(strength))
        lines.append(f"| {strength:g} | {100 * share:.0f}% | {graph['num_edges']} of {possible} (t = {graph['t']}) | {chance:.1f} |")
    return lines


def _write_figure(path: Path, rows: Sequence[StudyRow], config: StudyConfig) -> None:
    # Imported here: matplotlib costs about a second, and only this step draws.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.6), layout="constrained")
    models = sorted({row.model for row in rows}, key=lambda model: _model_order(config, model))
    for axes, metric in zip(figure.subplots(1, 2), ("mAP", "CF1")):
        table = summarise(rows, metric)
        for model in models:
            points = sorted((strength, spread) for (strength, name), spread in table.items() if name == model)
            xs = [strength for strength, _ in points]
            means = [spread.mean for _, spread in points]
            stds = [0.0 if math.isnan(spread.std) else spread.std for _, spread in points]
            label = f"direct ({config.direct_model})" if model == DIRECT else model
            (line,) = axes.plot(xs, means, marker="o", label=label)
            axes.fill_between(
                xs,
                [m - s for m, s in zip(means, stds)],
                [m + s for m, s in zip(means, stds)],
                color=line.get_color(),
                alpha=0.18,
                linewidth=0,
            )
        if metric == "mAP":  # the label frequencies change with RHO, and chance with them
            strengths = sorted({row.strength for row in rows})
            axes.plot(strengths, [chance_map(config.prepared_dir(s)) for s in strengths], color="grey", linestyle="--", label="chance")
        axes.set_xlabel("co-occurrence strength RHO")
        axes.set_ylabel(f"test {metric} (%)")
        axes.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=8)
    figure.suptitle(f"{config.profile} on {config.subset}, backbone {config.backbone}: mean ± std over seeds", fontsize=9)
    save_figure(figure, path, COMMAND)
