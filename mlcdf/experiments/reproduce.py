"""``make reproduce``: the paper's plan (or any plan) with its data prepared, trained, evaluated and reported.

The paper's Tables I and II are the plan :data:`mlcdf.experiments.plans.PAPER_PLAN` (12 configurations on each
subset, the paper's settings: 224x224, batch 128, 40 epochs with early stopping, ImageNet-pretrained
backbones). Other plans ship beside it and are named by their file's stem (``sequence``: SeqFakeFormer
R34/R50 with the authors' recipe beside the paper's best direct and graph models, both families scored on
both tasks); any plan file works too (:func:`mlcdf.experiments.plans.plan_path`). This module adds what
is particular to running a plan from a dataset root: the synthetic stand-in of the smoke run and
``mlcdf prepare`` of each subset; the runner (:mod:`mlcdf.experiments.runner`) builds the graphs, trains,
evaluates and reports. Everything lands under one folder::

    OUT/data/<subset>/                     the synthetic stand-in (smoke only)
    OUT/prepared/<subset>/                 mlcdf prepare (plans without their own prepared folders)
    OUT/graphs/<subset>-{word,image}.npz   mlcdf build-graph
    OUT/runs/<subset>/<run>/               mlcdf train + mlcdf evaluate (eval/test/metrics.json)
    OUT/report-<subset>.md                 mlcdf report (--paper for the shipped plans; --columns as the plan says)
    OUT/results.csv                        every run, 6 decimals

Re-running picks up where it stopped (see :mod:`mlcdf.experiments.runner`); prepared folders and graphs are reused.

``smoke=True`` runs the same plan on a synthetic stand-in (``mlcdf synth``) with 1 epoch, tiny images
and random initialisation: it checks the whole pipeline in minutes on a CPU, and its numbers mean
nothing. The overrides (the smoke's, and the command line's ``--epochs`` and the like) hold for every run,
also for one that sets its own value in the plan (:meth:`~mlcdf.experiments.plans.Plan.with_overrides`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcdf.config import check_count
from mlcdf.data.prepared import META_FILE, load_prepared
from mlcdf.data.seqdeepfake import PrepareConfig, prepare
from mlcdf.data.synth import SynthConfig, generate
from mlcdf.errors import MlcdfError
from mlcdf.experiments.plans import PAPER_PLAN, Plan, load_plan, plan_path
from mlcdf.experiments.runner import SETUP_LOCK, PlanResult, Running, RunOutcome, run_plan
from mlcdf.io import check_output_folder, file_lock
from mlcdf.labels import SUBSETS
from mlcdf.progress import ProgressFn, silent
from mlcdf.train.callbacks import TrainCallbacks

#: The embedded GloVe 6B 50-d subset, for the smoke run (no download).
SMOKE_WORD_EMBEDDING = "glove"
#: Images per split of each synthetic subset in the smoke run, and their side in pixels.
SMOKE_SPLITS = {"train": 48, "val": 16, "test": 32}
SMOKE_SIZE = 32

#: Plan defaults the command line may override (``None``: the plan's).
PLAN_OVERRIDES = (
    "device",
    "epochs",
    "batch_size",
    "image_size",
    "pretrained",
    "patience",
    "word_embedding",
    "workers",
    "keep_last",
    "seeds",
    "tensorboard",
)


@dataclass(frozen=True)
class ReproduceConfig:
    """What :func:`reproduce` runs, and how.

    Attributes:
        out: the folder everything is written to.
        data: a Seq-DeepFake root to prepare the plan's subsets from (default: the plan's ``data``);
            ``None`` with ``smoke`` (the synthetic stand-in goes to ``OUT/data``) or for a plan with its
            own ``prepared`` folders.
        plan_file: the plan: a TOML file, or the name of a shipped plan (``paper``, ``sequence``); ``None``
            is the paper's.
        subsets: subsets of the plan to run (``None``: all of them).
        only: glob patterns of run names (``resnet*``, ``*-image``); empty means all.
        device, epochs, batch_size, image_size, pretrained, patience, word_embedding, workers,
            keep_last, seeds, tensorboard: override the plan's defaults (``None``: the plan's). ``keep_last`` keeps
            ``checkpoints/last.pt`` of an evaluated run (optimizer and EMA state for resuming, about 4x
            the weights: 15 GB for the paper's 24 runs); ``best.pt`` is always kept.
        smoke: the synthetic, 1-epoch, tiny-image variant.
        jobs, devices, gpus_per_run, launcher, slurm: how runs are launched (see :func:`mlcdf.experiments.runner.run_plan`).
    """

    out: Path
    data: Path | None = None
    plan_file: Path | str | None = None
    subsets: tuple[str, ...] | None = None
    only: tuple[str, ...] = ()
    device: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    image_size: int | None = None
    pretrained: bool | None = None
    patience: int | None = None
    word_embedding: str | None = None
    workers: int | None = None
    keep_last: bool | None = None
    seeds: int | None = None
    tensorboard: bool | None = None
    smoke: bool = False
    jobs: int | None = None
    devices: tuple[str, ...] = ()
    gpus_per_run: int = 1
    launcher: str = "local"
    slurm: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def smoke_test(cls, out: Path, **overrides) -> ReproduceConfig:
        """The smoke variant: synthetic data, 1 epoch, tiny images, no pretrained weights, embedded GloVe."""
        settings = dict(
            smoke=True,
            epochs=1,
            batch_size=16,
            image_size=SMOKE_SIZE,
            pretrained=False,
            word_embedding=SMOKE_WORD_EMBEDDING,
            workers=0,
        )
        return cls(out=Path(out), **{**settings, **overrides})

    def plan(self) -> Plan:
        """The plan with this configuration's overrides and, unless it names its own, prepared folders in OUT.

        Raises:
            MlcdfError: a bad plan file, plan name or override, or data options that do not fit the plan.
        """
        check_output_folder(self.out)
        if self.seeds is not None:
            check_count("seeds", self.seeds, option="--seeds")
        plan = load_plan(plan_path(self.plan_file) if self.plan_file is not None else PAPER_PLAN)
        plan = plan.with_overrides(**{name: getattr(self, name) for name in PLAN_OVERRIDES})
        if plan.prepared:
            if self.smoke or self.data is not None:
                raise MlcdfError(f"{plan.source} names its prepared folders; drop {'--smoke' if self.smoke else '--data'}")
            out = Path(self.out).resolve()
            for subset, folder in plan.prepared.items():
                if out.is_relative_to(folder.resolve()):
                    raise MlcdfError(
                        f"--out {self.out}: is or lies inside the plan's prepared folder {folder} (subset {subset}); "
                        "writing there could overwrite its input, choose another output"
                    )
            return plan
        if self.data is None and not self.smoke and plan.data is None:
            raise MlcdfError(
                "give the Seq-DeepFake root (--data / DATA=...), or run the synthetic smoke variant (--smoke, REPRODUCE_SMOKE=1)"
            )
        if self.data is not None and self.smoke:
            raise MlcdfError("the smoke variant makes its own synthetic data; drop --data")
        unknown = [name for name in plan.subsets if name not in SUBSETS]
        if unknown:
            raise MlcdfError(
                f"{plan.source}: subsets {unknown} are not Seq-DeepFake subsets ({', '.join(SUBSETS)}); give prepared folders instead"
            )
        if self.smoke:
            data = Path(self.out) / "data"
        else:
            root = self.data if self.data is not None else plan.data
            assert root is not None, "checked above: without --smoke, --data or the plan names the root"
            data = Path(root)
        if not self.smoke and not data.is_dir():
            raise MlcdfError(f"{data}: no such folder (the Seq-DeepFake root)")
        return dataclasses.replace(plan, data=data, prepared={subset: self.prepared_dir(subset) for subset in plan.subsets})

    def prepared_dir(self, subset: str) -> Path:
        return Path(self.out) / "prepared" / subset

    def run_dir(self, subset: str, name: str) -> Path:
        return Path(self.out) / "runs" / subset / name

    def report_path(self, subset: str) -> Path:
        return Path(self.out) / f"report-{subset}.md"

    def launch(self, plan: Plan, **hooks: Any) -> PlanResult:
        """``run_plan`` of ``plan`` into OUT with this configuration's selection and launcher."""
        return run_plan(
            plan,
            Path(self.out),
            jobs=self.jobs,
            devices=self.devices or None,
            gpus_per_run=self.gpus_per_run,
            launcher=self.launcher,
            slurm=self.slurm,
            only=self.only,
            subsets=self.subsets,
            **hooks,
        )


def status(config: ReproduceConfig) -> list[RunOutcome]:
    """Every run folder of the plan (of the selected subsets and runs) with its status; writes nothing."""
    return config.launch(config.plan(), dry_run=True).outcomes


def reproduce(
    config: ReproduceConfig,
    *,
    log: Callable[[str], None] = lambda text: None,
    callbacks: TrainCallbacks | None = None,
    progress: ProgressFn = silent,
    monitor: Callable[[list[Running]], None] | None = None,
) -> PlanResult:
    """Prepare the data of the plan of ``config`` and run it (see the module docstring); ``log`` hears one
    line per step.

    Raises:
        MlcdfError: bad options or plan, a release that does not validate, a graph that cannot be built,
            or a file at a table's name in OUT that is not an earlier table. A failing run does not
            raise: it is an outcome of the result.
    """
    plan = config.plan()
    config.launch(plan, dry_run=True)  # every check, before anything is written
    subsets = config.subsets if config.subsets is not None else plan.subsets
    if plan.data is not None:
        with file_lock(Path(config.out) / SETUP_LOCK):  # another launcher on this OUT may be preparing too
            if config.smoke:
                _synthesize(plan.data, subsets, log, progress)
            for subset in subsets:
                _prepare(plan.data, plan.prepared[subset], subset, log, progress)
    return config.launch(plan, log=log, callbacks=callbacks, progress=progress, monitor=monitor)


def _synthesize(root: Path, subsets: tuple[str, ...], log: Callable[[str], None], progress: ProgressFn) -> None:
    missing = tuple(subset for subset in subsets if not (root / subset / "annotations").is_dir())
    if not missing:
        return
    log(f"synthesizing a stand-in for {', '.join(missing)} in {root}")
    train, val, test = SMOKE_SPLITS["train"], SMOKE_SPLITS["val"], SMOKE_SPLITS["test"]
    generate(SynthConfig(out=root, subsets=missing, train=train, val=val, test=test, size=SMOKE_SIZE, strength=2.0), progress)


def _prepare(data: Path, prepared: Path, subset: str, log: Callable[[str], None], progress: ProgressFn) -> None:
    root = data.resolve()
    if (prepared / META_FILE).is_file():
        prepared_from = load_prepared(prepared).root
        if prepared_from != root:
            raise MlcdfError(f"{prepared} was prepared from {prepared_from}, not {root}; choose another output folder")
        return
    log(f"{subset}: preparing {root / subset}")
    prepare(PrepareConfig(root=root, out=prepared.parent, subsets=(subset,)), progress)
