"""``make reproduce``: every configuration of the paper's Tables I and II, trained, evaluated and reported.

For each subset, :func:`reproduce` prepares the release, builds the two label graphs (word and image
node embeddings), trains and evaluates the 12 published configurations of :data:`PAPER_RUNS` with the
paper's settings (224x224, batch 128, 40 epochs with early stopping, ImageNet-pretrained backbones),
and writes the table of ``mlcdf report --paper``. Everything lands under one folder::

    OUT/prepared/<subset>/            mlcdf prepare
    OUT/graphs/<subset>-{word,image}.npz   mlcdf build-graph
    OUT/runs/<subset>/<run>/          mlcdf train + mlcdf evaluate (eval/test/metrics.json)
    OUT/report-<subset>.md            mlcdf report --paper
    OUT/results.csv                   every run, 6 decimals

Re-running picks up where it stopped: an evaluated run is skipped, a run with checkpoints is resumed
from ``last.pt`` (a finished one only evaluated), and prepared folders and graphs are reused (a graph that
does not load, e.g. half-replaced by a killed build, is rebuilt). A run that
fails (out of memory, a diverging loss) is reported and the others go on. Once a run is evaluated, its
``last.pt`` (resume state, 4x the size of the weights) is deleted unless ``keep_last``.

``smoke=True`` runs the same plan on a synthetic stand-in (``mlcdf synth``) with 1 epoch, tiny images
and random initialisation: it checks the whole pipeline in minutes on a CPU, and its numbers mean
nothing.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mlcdf.data.prepared import META_FILE, load_prepared
from mlcdf.data.seqdeepfake import PrepareConfig, prepare
from mlcdf.data.synth import SynthConfig, generate
from mlcdf.errors import MlcdfError, SchemaError
from mlcdf.evaluate import METRICS_FILE, default_eval_dir, evaluate_run
from mlcdf.graph import load_graph
from mlcdf.graph.build import GraphConfig, build_graph
from mlcdf.graph.embeddings import PAPER_WORD_EMBEDDING
from mlcdf.io import atomic_open, check_file_replaceable
from mlcdf.labels import SUBSETS
from mlcdf.progress import ProgressFn, silent
from mlcdf.report import ResultRow, is_report_file, load_result, results_table
from mlcdf.training import CHECKPOINTS, LOG_FILE, RESUME_OVERRIDES, TrainCallbacks, TrainConfig, saved_run_options, train


@dataclass(frozen=True)
class PaperRun:
    """One row of Tables I/II: a model, its loss, the node embedding of a graph model, the recipe.

    ML-GCN is trained with ML-GCN's recipe (SGD); every other model with the ASL recipe (AdamW +
    OneCycle), which the ASL, IML-GCN and ML-AGCN reference code use.
    """

    model: str
    loss: str
    embedding: str | None = None
    recipe: str = "asl"

    @property
    def name(self) -> str:
        """The run folder name, e.g. ``resnet101-asl`` or ``iml_gcn-asl-image``."""
        return "-".join(part for part in (self.model, self.loss, self.embedding) if part)


#: The 12 rows of each of the paper's Tables I and II, in the paper's order.
PAPER_RUNS: tuple[PaperRun, ...] = (
    PaperRun("resnet50", "bce"),
    PaperRun("resnet50", "asl"),
    PaperRun("resnet101", "bce"),
    PaperRun("resnet101", "asl"),
    PaperRun("tresnet_m", "bce"),
    PaperRun("tresnet_m", "asl"),
    PaperRun("ml_gcn", "bce", "word", recipe="mlgcn"),
    PaperRun("iml_gcn", "asl", "image"),
    PaperRun("iml_gcn", "asl", "word"),
    PaperRun("ml_agcn", "asl", "image"),
    PaperRun("ml_agcn", "asl", "word"),
    PaperRun("ml_agcn", "bce", "word"),
)

#: The embedded GloVe 6B 50-d subset, for the smoke run (no download).
SMOKE_WORD_EMBEDDING = "glove"
#: Images per split of each synthetic subset in the smoke run, and their side in pixels.
SMOKE_SPLITS = {"train": 48, "val": 16, "test": 32}
SMOKE_SIZE = 32

DONE, RESUME, EVALUATE, NEW = "done", "resume", "evaluate", "new"


@dataclass(frozen=True)
class ReproduceConfig:
    """What :func:`reproduce` runs.

    Attributes:
        out: the folder everything is written to.
        data: the Seq-DeepFake root; ``None`` with ``smoke`` (the synthetic stand-in goes to ``OUT/data``).
        subsets: subsets to run (both by default).
        only: glob patterns of run names (``resnet*``, ``*-image``); empty means all 12.
        device: ``auto``, ``cuda`` or ``cpu``.
        epochs, batch_size, image_size, pretrained: the paper's settings by default.
        patience: early stopping on validation mAP ("40 epochs or until convergence").
        word_embedding: node features of the ``word`` graphs.
        workers: DataLoader workers (``None``: the trainer's default).
        keep_last: keep ``checkpoints/last.pt`` of an evaluated run. It holds the optimizer and EMA
            state for resuming (about 4x the weights: 0.7 GB for ResNet-101, 15 GB for the 24 runs)
            and is deleted by default once the run is evaluated; ``best.pt`` is always kept.
        smoke: the synthetic, 1-epoch, tiny-image variant.
    """

    out: Path
    data: Path | None = None
    subsets: tuple[str, ...] = tuple(SUBSETS)
    only: tuple[str, ...] = ()
    device: str = "auto"
    epochs: int = 40
    batch_size: int = 128
    image_size: int = 224
    pretrained: bool = True
    patience: int = 10
    word_embedding: str = PAPER_WORD_EMBEDDING
    workers: int | None = None
    keep_last: bool = False
    smoke: bool = False

    @classmethod
    def smoke_test(cls, out: Path, **overrides) -> "ReproduceConfig":
        """The smoke variant: synthetic data, 1 epoch, tiny images, no pretrained weights, embedded GloVe."""
        settings = dict(
            smoke=True, epochs=1, batch_size=16, image_size=SMOKE_SIZE, pretrained=False,
            word_embedding=SMOKE_WORD_EMBEDDING, workers=0,
        )
        return cls(out=Path(out), **{**settings, **overrides})

    def check(self) -> None:
        if self.data is None and not self.smoke:
            raise MlcdfError("give the Seq-DeepFake root (--data / DATA=...), or run the synthetic smoke variant (--smoke, REPRODUCE_SMOKE=1)")
        if self.data is not None and self.smoke:
            raise MlcdfError("the smoke variant makes its own synthetic data; drop --data")
        if self.data is not None and not Path(self.data).is_dir():
            raise MlcdfError(f"{self.data}: no such folder (the Seq-DeepFake root)")
        unknown = [name for name in self.subsets if name not in SUBSETS]
        if unknown or not self.subsets:
            raise MlcdfError(f"subsets {list(self.subsets)}: expected some of {', '.join(SUBSETS)}")
        if not self.runs():
            names = ", ".join(run.name for run in PAPER_RUNS)
            raise MlcdfError(f"--only {' '.join(self.only)} matches no run; the runs are {names}")

    def runs(self) -> list[PaperRun]:
        """The configurations selected by :attr:`only`."""
        if not self.only:
            return list(PAPER_RUNS)
        return [run for run in PAPER_RUNS if any(fnmatch.fnmatchcase(run.name, pattern) for pattern in self.only)]

    @property
    def data_root(self) -> Path:
        return Path(self.out) / "data" if self.smoke else Path(self.data)

    def prepared_dir(self, subset: str) -> Path:
        return Path(self.out) / "prepared" / subset

    def graph_path(self, subset: str, embedding: str) -> Path:
        return Path(self.out) / "graphs" / f"{subset}-{embedding}.npz"

    def run_dir(self, subset: str, run: PaperRun) -> Path:
        return Path(self.out) / "runs" / subset / run.name

    def report_path(self, subset: str) -> Path:
        return Path(self.out) / f"report-{subset}.md"

    def train_config(self, subset: str, run: PaperRun) -> TrainConfig:
        return TrainConfig(
            prepared=str(self.prepared_dir(subset)),
            model=run.model,
            out=str(self.run_dir(subset, run)),
            loss=run.loss,
            graph=str(self.graph_path(subset, run.embedding)) if run.embedding else None,
            recipe=run.recipe,
            epochs=self.epochs,
            batch_size=self.batch_size,
            image_size=self.image_size,
            patience=self.patience,
            device=self.device,
            pretrained=self.pretrained,
            workers=self.workers,
        )


@dataclass(frozen=True)
class PlannedRun:
    """A run of the plan and what :func:`reproduce` will do with it (:data:`DONE`, :data:`RESUME`, ...)."""

    subset: str
    run: PaperRun
    run_dir: Path
    status: str

    @property
    def label(self) -> str:
        """``<subset>/<run name>``, as the log and the failures name it."""
        return f"{self.subset}/{self.run.name}"


def is_evaluated(run_dir: Path) -> bool:
    """Whether the run has its test evaluation (``eval/test/metrics.json``), i.e. is finished."""
    return (default_eval_dir(run_dir, "test") / METRICS_FILE).is_file()


def run_status(run_dir: Path) -> str:
    """``done`` (evaluated on test), ``evaluate`` (trained, not evaluated), ``resume`` (checkpoints of an
    unfinished run) or ``new``."""
    if is_evaluated(run_dir):
        return DONE
    if not (run_dir / CHECKPOINTS / "last.pt").is_file():
        return NEW
    log_file = run_dir / LOG_FILE
    history = log_file.read_text(encoding="utf-8").splitlines() if log_file.is_file() else []
    options = saved_run_options(run_dir) or {}
    finished = len(history) >= options.get("epochs", float("inf"))
    return EVALUATE if finished else RESUME


def plan(config: ReproduceConfig, subsets: Sequence[str] | None = None) -> list[PlannedRun]:
    """Every run of ``config`` (of ``subsets`` only, if given), with its current status."""
    planned = []
    for subset in config.subsets if subsets is None else subsets:
        for run in config.runs():
            run_dir = config.run_dir(subset, run)
            planned.append(PlannedRun(subset, run, run_dir, run_status(run_dir)))
    return planned


@dataclass
class ReproduceResult:
    """What :func:`reproduce` did: the reports written, and the runs trained, skipped and failed."""

    reports: dict[str, Path] = dataclasses.field(default_factory=dict)
    trained: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)


def reproduce(
    config: ReproduceConfig,
    *,
    log: Callable[[str], None] = lambda text: None,
    callbacks: TrainCallbacks | None = None,
    progress: ProgressFn = silent,
) -> ReproduceResult:
    """Run the plan of ``config`` (see the module docstring); ``log`` hears one line per step.

    Raises:
        MlcdfError: bad options, a release that does not validate, a graph that cannot be built, or a
            file at a table's name in OUT that is not an earlier table. A failing run does not raise:
            it is recorded in :attr:`ReproduceResult.failed`.
    """
    config.check()
    for table in [*map(config.report_path, config.subsets), _results_csv_path(config)]:  # before hours of work
        check_file_replaceable(table, command="mlcdf reproduce", is_own=is_report_file)
    result = ReproduceResult()
    rows: dict[str, list[ResultRow]] = {}
    if config.smoke:
        _synthesize(config, log, progress)
    for subset in config.subsets:
        _prepare(config, subset, log, progress)
        for embedding in sorted({run.embedding for run in config.runs() if run.embedding}):
            _build_graph(config, subset, embedding, log, progress)
        for planned in plan(config, subsets=(subset,)):
            if planned.status == DONE:
                result.skipped.append(planned.label)
                log(f"{planned.label}: evaluated already, skipped")
                continue
            try:
                _train_and_evaluate(config, planned, log, callbacks, progress)
            except MlcdfError as error:
                result.failed[planned.label] = str(error)
                log(f"{planned.label}: FAILED: {error}")
                continue
            finally:
                _release_memory()
            result.trained.append(planned.label)
        rows[subset] = _evaluated_results(config, subset)
        result.reports[subset] = _write_report(config, subset, rows[subset], log)
    # The CSV covers every subset evaluated under OUT, also those this call did not run.
    _write_results_csv(
        config,
        [row for subset in SUBSETS for row in (rows[subset] if subset in rows else _evaluated_results(config, subset))],
    )
    return result


def _synthesize(config: ReproduceConfig, log: Callable[[str], None], progress: ProgressFn) -> None:
    missing = [subset for subset in config.subsets if not (config.data_root / subset / "annotations").is_dir()]
    if not missing:
        return
    log(f"synthesizing a stand-in for {', '.join(missing)} in {config.data_root}")
    generate(
        SynthConfig(out=config.data_root, subsets=tuple(missing), **SMOKE_SPLITS, size=SMOKE_SIZE, strength=2.0),
        progress,
    )


def _prepare(config: ReproduceConfig, subset: str, log: Callable[[str], None], progress: ProgressFn) -> None:
    prepared = config.prepared_dir(subset)
    root = config.data_root.resolve()
    if (prepared / META_FILE).is_file():
        prepared_from = load_prepared(prepared).root
        if prepared_from != root:
            raise MlcdfError(f"{prepared} was prepared from {prepared_from}, not {root}; choose another output folder")
        return
    log(f"{subset}: preparing {root / subset}")
    prepare(PrepareConfig(root=root, out=prepared.parent, subsets=(subset,)), progress)


def _build_graph(
    config: ReproduceConfig, subset: str, embedding: str, log: Callable[[str], None], progress: ProgressFn
) -> None:
    path = config.graph_path(subset, embedding)
    if path.is_file():
        try:
            load_graph(path)
            return
        except SchemaError as error:  # ours, left damaged or half-replaced by an interrupted reproduce
            log(f"{subset}: rebuilding the label graph ({error})")
    log(f"{subset}: building the label graph with {embedding} node embeddings")
    if embedding == "word":
        graph_config = GraphConfig(prepared=config.prepared_dir(subset), out=path, embedding=config.word_embedding)
    else:
        # Mean ImageNet features of each label's training images, IML-GCN's image embeddings.
        graph_config = GraphConfig(
            prepared=config.prepared_dir(subset),
            out=path,
            embedding="image",
            pretrained=config.pretrained,
            image_size=config.image_size,
            device=config.device,
            cache=True,
            workers=config.workers if config.workers is not None else 4,
        )
    for message in build_graph(graph_config, progress=progress).warnings:
        log(f"{subset}: {message}")


def _train_and_evaluate(
    config: ReproduceConfig,
    planned: PlannedRun,
    log: Callable[[str], None],
    callbacks: TrainCallbacks | None,
    progress: ProgressFn,
) -> None:
    label = planned.label
    train_config = config.train_config(planned.subset, planned.run)
    if planned.status in (RESUME, EVALUATE):
        _check_same_options(planned.run_dir, train_config)
    if planned.status != EVALUATE:
        log(f"{label}: {'resuming' if planned.status == RESUME else 'training'}")
        trained = train(train_config, resume=planned.status == RESUME, callbacks=callbacks, progress=progress)
        log(f"{label}: best val mAP {100 * trained.best_map:.2f} at epoch {trained.best_epoch + 1}")
    _, metrics = evaluate_run(planned.run_dir, device=config.device, progress=progress)
    log(f"{label}: test mAP {100 * metrics['mAP']:.2f}")
    if not config.keep_last:
        (planned.run_dir / CHECKPOINTS / "last.pt").unlink(missing_ok=True)


#: Options a resumed run may differ in: the trainer's overrides (its folder among them), and the paths
#: the plan derives from OUT (a resumed run reads its own from its checkpoint), so that OUT may be spelt
#: another way.
_FREE_OPTIONS = {*RESUME_OVERRIDES, "prepared", "graph"}


def _check_same_options(run_dir: Path, planned: TrainConfig) -> None:
    saved = saved_run_options(run_dir)
    if saved is None:
        return
    wanted = dataclasses.asdict(planned.resolve())
    changed = sorted(key for key in wanted if key not in _FREE_OPTIONS and saved.get(key) != wanted[key])
    if changed:
        details = ", ".join(f"{key} {saved.get(key)!r} -> {wanted[key]!r}" for key in changed)
        raise MlcdfError(f"{run_dir} was trained with other options ({details}); delete it or choose another output folder")


def _release_memory() -> None:
    # Two dozen large models in one process: free each one's memory before the next starts.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _evaluated_results(config: ReproduceConfig, subset: str) -> list[ResultRow]:
    """The test results of the evaluated runs of ``subset`` under OUT, in the paper's order."""
    run_dirs = (config.run_dir(subset, run) for run in PAPER_RUNS)
    return [load_result(run_dir) for run_dir in run_dirs if is_evaluated(run_dir)]


def _write_report(config: ReproduceConfig, subset: str, rows: list[ResultRow], log: Callable[[str], None]) -> Path:
    path = config.report_path(subset)
    with atomic_open(path) as handle:
        handle.write(results_table(rows, fmt="md", paper=True))
    log(f"{subset}: {len(rows)} of {len(PAPER_RUNS)} configurations evaluated; table in {path}")
    return path


def _results_csv_path(config: ReproduceConfig) -> Path:
    return Path(config.out) / "results.csv"


def _write_results_csv(config: ReproduceConfig, rows: list[ResultRow]) -> None:
    if rows:
        with atomic_open(_results_csv_path(config)) as handle:
            handle.write(results_table(rows, fmt="csv"))
