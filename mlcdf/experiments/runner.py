"""The runner: run every run folder of a :class:`~mlcdf.experiments.plans.Plan` into ``OUT``, report from disk.

Everything it decides comes from the run folders, so a plan can be re-launched after any crash, from
this machine or another sharing the file system::

    OUT/graphs/<subset>-<embedding>.npz   graphs the runs' ``embedding`` asks for (built once)
    OUT/runs/<subset>/<run>/              mlcdf train + mlcdf evaluate (eval/test/metrics.json)
    OUT/runs/<subset>/<run>.lock          held while the run trains: {"host", "pid", "started"}
    OUT/launch/<subset>/<run>.{json,log,outcome.json}   a run launched in its own process: what it
                                          was asked, what it printed, how it ended
    OUT/report-<subset>.md, OUT/results.csv

A run folder is ``done`` (evaluated on test: skipped), ``evaluate`` (trained, not evaluated),
``resume`` (checkpoints of an unfinished run: resumed from ``last.pt``) or ``new``. A run that fails
(out of memory, a diverging loss, other options than its folder was trained with) is recorded and the
others go on. Once a run is evaluated its ``last.pt`` (resume state, 4x the weights) is deleted unless
the plan says ``keep_last``.

Never the same run twice: whoever trains a run holds its lock, created atomically (a hard link, which
fails if the lock exists, also over NFS) with the holder's host, process id and start time. A lock
whose holder is a dead process of this host is taken over with a warning; a launcher that finds every
remaining run locked by others waits for them, then reports from what is on disk.

Launchers start runs and say when they end, so the loop does not know where runs execute:
in this process (one at a time, no devices given), in subprocesses on this machine (``jobs`` at once,
each on its own device of ``devices``, several GPUs per run through ``torchrun``), or as Slurm jobs
through ``submitit``. A subprocess or job runs ``python -m mlcdf.experiments.runner OUT/launch/<subset>/<run>.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from mlcdf.config import RESUME_OVERRIDES, TrainConfig
from mlcdf.data.prepared import META_FILE
from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError, first_line
from mlcdf.evaluation.evaluate import METRICS_FILE, default_eval_dir
from mlcdf.evaluation.report import (
    ResultRow,
    check_figure_replaceable,
    is_report_file,
    load_result,
    results_table,
    runs_csv,
    write_category_figure,
)
from mlcdf.evaluation.runs import evaluate_run
from mlcdf.experiments.plans import Plan, PlanEntry, graph_path, run_dir
from mlcdf.graph.build import GraphConfig, build_graph
from mlcdf.io import _process_exists, atomic_open, check_file_replaceable, file_lock, read_json_object, write_json
from mlcdf.label_graph import load_graph
from mlcdf.progress import ProgressFn, silent
from mlcdf.train.callbacks import TrainCallbacks
from mlcdf.train.stage import CHECKPOINTS, CONFIG_FILE, LOG_FILE, saved_run_options, train
from mlcdf.train.tensorboard import require_tensorboard

DONE, RESUME, EVALUATE, NEW = "done", "resume", "evaluate", "new"
#: How a run ended in this launch: trained (and evaluated), skipped (evaluated already, here or by
#: another launcher), failed, planned (``dry_run``).
TRAINED, SKIPPED, FAILED, PLANNED = "trained", "skipped", "failed", "planned"
#: A run that another launcher holds; it goes back to the queue.
LOCKED = "locked"
LAUNCHERS = ("local", "slurm")
#: Shared by every launcher of one OUT: preparing data and building graphs happen under it, one at a time.
SETUP_LOCK = ".setup.lock"


# ----------------------------------------------------------------------------------------------- status


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


@dataclass
class RunOutcome:
    """A run folder of the plan: its status when the launch looked at it, and how it ended."""

    entry: PlanEntry
    run_dir: Path
    status: str
    outcome: str
    reason: str = ""
    #: Who holds the run's lock (``host:pid since ...``), when another launcher does.
    holder: str = ""

    @property
    def label(self) -> str:
        return self.entry.label


@dataclass
class PlanResult:
    """What :func:`run_plan` did: one outcome per run folder (in plan order) and the reports written."""

    outcomes: list[RunOutcome] = field(default_factory=list)
    reports: dict[str, Path] = field(default_factory=dict)

    def _labels(self, outcome: str) -> list[str]:
        return [o.label for o in self.outcomes if o.outcome == outcome]

    @property
    def trained(self) -> list[str]:
        return self._labels(TRAINED)

    @property
    def skipped(self) -> list[str]:
        return self._labels(SKIPPED)

    @property
    def failed(self) -> dict[str, str]:
        return {o.label: o.reason for o in self.outcomes if o.outcome == FAILED}


# ------------------------------------------------------------------------------------------------- locks


def lock_path(run_dir: Path) -> Path:
    """``<run folder>.lock``, beside the folder (the trainer owns what is inside it)."""
    return run_dir.with_name(f"{run_dir.name}.lock")


def _this_host() -> str:
    return socket.gethostname()


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        holder = read_json_object(path, "a run lock")
    except FileNotFoundError:
        return None
    except (MlcdfError, OSError, ValueError):  # unreadable: treat as held; the waiting message names the file
        return {"host": "?", "pid": -1, "started": "?"}
    return holder


def _describe(holder: Mapping[str, Any]) -> str:
    return f"{holder.get('host')}:{holder.get('pid')} since {holder.get('started')}"


def _is_stale(holder: Mapping[str, Any]) -> bool:
    """Held by a process of this host that is gone (killed, crashed): safe to take over."""
    pid = holder.get("pid")
    return holder.get("host") == _this_host() and isinstance(pid, int) and pid > 0 and not _process_exists(pid)


def live_holder(run_dir: Path) -> dict[str, Any] | None:
    """The holder of the run's lock, unless there is none or it is a dead process of this host."""
    holder = _read_lock(lock_path(run_dir))
    return None if holder is None or _is_stale(holder) else holder


def try_lock(run_dir: Path, warn: Callable[[str], None]) -> bool:
    """Take the run's lock for this process; ``False`` if a live process holds it.

    The lock's content is written to a temporary file first and hard-linked into place: the link is the
    atomic, exclusive create (``O_EXCL`` semantics, also over NFS), and a reader never sees it half-written.
    """
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"host": _this_host(), "pid": os.getpid(), "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_json(temporary, mine)
    try:
        for _ in range(2):  # the second time after taking over a stale lock
            try:
                os.link(temporary, path)
                return True
            except FileExistsError:
                holder = _read_lock(path)
                if holder is None:
                    continue  # released meanwhile
                if not _is_stale(holder):
                    return False
                if not _take_over(path, holder):
                    return False
                warn(f"{path}: taking over the lock of {_describe(holder)}, a process that is gone")
        return False
    finally:
        temporary.unlink(missing_ok=True)


def _take_over(path: Path, stale: Mapping[str, Any]) -> bool:
    """Move the stale lock aside; if what was moved is not the stale lock (taken over by someone else
    meanwhile), put it back and give up."""
    aside = path.with_name(f".{path.name}.stale.{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return True
    moved = _read_lock(aside)
    if moved != dict(stale):
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def unlock(run_dir: Path) -> None:
    """Release the run's lock if this process holds it."""
    path = lock_path(run_dir)
    holder = _read_lock(path)
    if holder and holder.get("host") == _this_host() and holder.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ one run


@dataclass(frozen=True)
class RunJob:
    """What it takes to run one run folder, in this process or another: JSON-able, see :meth:`to_json`."""

    label: str
    config: TrainConfig
    keep_last: bool = False
    gpus_per_run: int = 1

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "train": dataclasses.asdict(self.config),
            "keep_last": self.keep_last,
            "gpus_per_run": self.gpus_per_run,
        }

    @classmethod
    def from_json(cls, path: Path) -> RunJob:
        document = read_json_object(path, "a run job")
        try:
            config = TrainConfig.from_dict(document["train"], source=str(path))
            return cls(document["label"], config, bool(document["keep_last"]), int(document["gpus_per_run"]))
        except (KeyError, TypeError) as error:
            raise SchemaError(path, f"not a run job ({first_line(error)})") from None


def execute(
    job: RunJob,
    *,
    log: Callable[[str], None] = lambda text: None,
    callbacks: TrainCallbacks | None = None,
    progress: ProgressFn = silent,
) -> str:
    """Train (or resume) and evaluate one run under its lock: :data:`TRAINED`, :data:`SKIPPED` (evaluated
    meanwhile) or :data:`LOCKED` (another process holds it).

    Raises:
        MlcdfError: the run failed (bad options, out of memory, other options than its folder's, ...).
    """
    run_dir = job.run_dir
    if not try_lock(run_dir, log):
        return LOCKED
    try:
        status = run_status(run_dir)
        if status == DONE:
            return SKIPPED
        if status in (RESUME, EVALUATE):
            _check_same_options(run_dir, job.config)
        if status != EVALUATE:
            log(f"{job.label}: {'resuming' if status == RESUME else 'training'}")
            if job.gpus_per_run > 1:
                _train_with_torchrun(job, resume=status == RESUME)
            else:
                trained = train(job.config, resume=status == RESUME, callbacks=callbacks, progress=progress)
                log(f"{job.label}: best val mAP {100 * trained.best_map:.2f} at epoch {trained.best_epoch + 1}")
        _, metrics = evaluate_run(run_dir, device=job.config.device, progress=progress)
        log(f"{job.label}: test mAP {metrics['mAP']:.2f}")
        if not job.keep_last:
            (run_dir / CHECKPOINTS / "last.pt").unlink(missing_ok=True)
        return TRAINED
    finally:
        unlock(run_dir)
        _release_memory()


def _train_with_torchrun(job: RunJob, *, resume: bool) -> None:
    """DDP over ``gpus_per_run`` GPUs of this process's visible devices: ``torchrun -m mlcdf train``."""
    options = job.run_dir.with_name(f".{job.run_dir.name}.train.json")
    write_json(options, {"train": dataclasses.asdict(job.config)})
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={job.gpus_per_run}",
        "-m",
        "mlcdf",
        "train",
        "--config",
        str(options),
        "--quiet",
        *(["--resume", "--out", job.config.out] if resume else []),
    ]
    try:
        finished = subprocess.run(command, capture_output=True, text=True)
    finally:
        options.unlink(missing_ok=True)
    if finished.returncode != 0:
        lines = [line for line in finished.stderr.splitlines() if line.strip()]
        raise MlcdfError(f"torchrun exited with {finished.returncode}: {lines[-1] if lines else 'no message'}")


#: Options a resumed run may differ in: the trainer's overrides (its folder among them), and the paths
#: the plan derives from OUT (a resumed run reads its own from its checkpoint), so that OUT may be spelt
#: another way.
_FREE_OPTIONS = {*RESUME_OVERRIDES, "prepared", "graph"}


def _check_same_options(run_dir: Path, planned: TrainConfig) -> None:
    saved = saved_run_options(run_dir)
    if saved is None:
        return
    # An option the run's config.json does not name (it predates the option) was at its default then.
    saved = dataclasses.asdict(TrainConfig.from_dict(saved, source=str(run_dir / CONFIG_FILE)))
    wanted = dataclasses.asdict(planned.resolve())
    changed = sorted(key for key in wanted if key not in _FREE_OPTIONS and saved[key] != wanted[key])
    if changed:
        details = ", ".join(f"{key} {saved[key]!r} -> {wanted[key]!r}" for key in changed)
        raise MlcdfError(f"{run_dir} was trained with other options ({details}); delete it or choose another output folder")


def _release_memory() -> None:
    # Two dozen large models in one process: free each one's memory before the next starts.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def worker_main(job_file: str) -> int:
    """``python -m mlcdf.experiments.runner JOB.json``: run one job, write ``JOB.outcome.json``; exit 0 unless it failed."""
    path = Path(job_file)
    outcome_path = outcome_file(path)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        job = RunJob.from_json(path)
        outcome, reason = execute(job, log=say), ""
    except MlcdfError as error:
        outcome, reason = FAILED, first_line(error)
        say(f"FAILED: {reason}")
    write_json(outcome_path, {"outcome": outcome, "reason": reason})
    return 1 if outcome == FAILED else 0


def outcome_file(job_file: Path) -> Path:
    return job_file.with_name(job_file.name.removesuffix(".json") + ".outcome.json")


# --------------------------------------------------------------------------------------------- launchers


@dataclass
class Running:
    """A run a launcher has started, as the display shows it."""

    job: RunJob
    device: str
    started: float = field(default_factory=time.monotonic)

    def progress(self) -> tuple[int, int, float | None]:
        """(epochs done, epochs planned, last validation mAP), from the run folder's ``log.jsonl``."""
        try:
            lines = (self.job.run_dir / LOG_FILE).read_text(encoding="utf-8").splitlines()
            last = json.loads(lines[-1]).get("val_mAP") if lines else None
        except (OSError, ValueError):
            lines, last = [], None
        return len(lines), self.job.config.epochs, last


class Launcher(Protocol):
    """Starts runs and says when they end; the runner's loop knows nothing else about where they run."""

    def free_slots(self) -> int: ...

    def start(self, job: RunJob) -> None: ...

    def finished(self, wait: float) -> list[tuple[RunJob, str, str]]:
        """The runs that ended (job, outcome, reason), waiting up to ``wait`` seconds for one."""
        ...

    def running(self) -> list[Running]: ...

    def stop(self) -> None:
        """Interrupt what is still running (Ctrl-C)."""
        ...


class InProcessLauncher:
    """One run at a time, in this process (the trainer's callbacks and progress bars see it)."""

    def __init__(self, log: Callable[[str], None], callbacks: TrainCallbacks | None, progress: ProgressFn) -> None:
        self.log, self.callbacks, self.progress = log, callbacks, progress
        self.done: list[tuple[RunJob, str, str]] = []

    def free_slots(self) -> int:
        return 1

    def start(self, job: RunJob) -> None:
        try:
            outcome, reason = execute(job, log=self.log, callbacks=self.callbacks, progress=self.progress), ""
        except MlcdfError as error:
            outcome, reason = FAILED, str(error)
        self.done.append((job, outcome, reason))

    def finished(self, wait: float) -> list[tuple[RunJob, str, str]]:
        done, self.done = self.done, []
        return done

    def running(self) -> list[Running]:
        return []

    def stop(self) -> None:
        pass


def _job_file(out: Path, job: RunJob) -> Path:
    return out / "launch" / f"{job.label}.json"


def _ended(job: RunJob, job_file: Path, code: int | None, log_file: Path) -> tuple[RunJob, str, str]:
    """How a run launched in another process ended, from the outcome file it wrote."""
    try:
        ended = read_json_object(outcome_file(job_file))
        return job, str(ended["outcome"]), str(ended.get("reason", ""))
    except (MlcdfError, OSError, KeyError):
        return job, FAILED, f"its process ended (exit code {code}) without an outcome; see {log_file}"


class LocalLauncher:
    """Up to ``jobs`` runs at once in subprocesses of this machine, each on its own device(s)."""

    def __init__(self, out: Path, jobs: int, devices: Sequence[str] | None, gpus_per_run: int) -> None:
        self.out = out
        devices = list(devices) if devices else ["auto"] * jobs
        if gpus_per_run > 1:
            if any(not d.isdigit() for d in devices) or len(devices) < gpus_per_run:
                raise MlcdfError(
                    f"--gpus-per-run {gpus_per_run} needs at least that many GPU numbers in --devices, got {','.join(devices)}"
                )
            devices = [",".join(devices[i : i + gpus_per_run]) for i in range(0, len(devices) - gpus_per_run + 1, gpus_per_run)]
        self.free = devices[:jobs]
        self.gpus_per_run = gpus_per_run
        self.processes: dict[subprocess.Popen, tuple[Running, Path, Path]] = {}

    def free_slots(self) -> int:
        return len(self.free)

    def start(self, job: RunJob) -> None:
        device = self.free.pop(0)
        env = dict(os.environ)
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
            job = dataclasses.replace(job, config=dataclasses.replace(job.config, device="cpu"))
        elif device != "auto":
            env["CUDA_VISIBLE_DEVICES"] = device
            job = dataclasses.replace(job, config=dataclasses.replace(job.config, device="cuda"))
        job = dataclasses.replace(job, gpus_per_run=self.gpus_per_run)
        job_file = _job_file(self.out, job)
        job_file.parent.mkdir(parents=True, exist_ok=True)
        outcome_file(job_file).unlink(missing_ok=True)
        write_json(job_file, job.to_json())
        log_file = job_file.with_suffix(".log")
        with open(log_file, "w", encoding="utf-8") as output:
            # Its own session: a Ctrl-C reaches the runs once, through stop(), and they end cleanly.
            process = subprocess.Popen(
                [sys.executable, "-m", "mlcdf.experiments.runner", str(job_file)],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.processes[process] = (Running(job, device), job_file, log_file)

    def finished(self, wait: float) -> list[tuple[RunJob, str, str]]:
        deadline = time.monotonic() + wait
        while True:
            ended = [process for process in self.processes if process.poll() is not None]
            if ended or not self.processes or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        results = []
        for process in ended:
            running, job_file, log_file = self.processes.pop(process)
            self.free.append(running.device)
            results.append(_ended(running.job, job_file, process.returncode, log_file))
        return results

    def running(self) -> list[Running]:
        return [running for running, _, _ in self.processes.values()]

    def stop(self) -> None:
        for process in self.processes:  # like Ctrl-C: each run releases its lock and keeps its last epoch
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
        for process in self.processes:
            process.wait()


#: Options of ``--launcher slurm`` and the submitit parameters they set.
SLURM_OPTIONS = {
    "partition": "slurm_partition",
    "time": "timeout_min",
    "gpus": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "account": "slurm_account",
}


class SlurmLauncher:
    """Each run a Slurm job through submitit; ``cluster="local"`` runs them as local processes (tests)."""

    def __init__(self, out: Path, jobs: int | None, options: Mapping[str, Any], gpus_per_run: int) -> None:
        try:
            import submitit
        except ImportError:
            raise MlcdfError("--launcher slurm needs submitit: pip install 'mlcdf[slurm]'") from None
        self.submitit = submitit
        self.out = out
        self.jobs = jobs
        unknown = sorted(set(options) - set(SLURM_OPTIONS) - {"cluster"})
        if unknown:
            raise MlcdfError(f"unknown Slurm option(s) {unknown}; known: {', '.join(SLURM_OPTIONS)}")
        cluster = options.get("cluster", "slurm")  # never submitit's silent fallback to local processes
        try:
            self.executor = submitit.AutoExecutor(folder=out / "launch" / "slurm", cluster=cluster)
        except RuntimeError as error:  # no sbatch/srun here
            raise MlcdfError(f"--launcher slurm: {first_line(error)} (--slurm-cluster local runs the jobs here)") from None
        parameters = {SLURM_OPTIONS[key]: value for key, value in options.items() if key in SLURM_OPTIONS and value is not None}
        parameters.setdefault("gpus_per_node", gpus_per_run if cluster == "slurm" else 0)
        parameters.setdefault("tasks_per_node", 1)
        parameters.setdefault("name", "mlcdf")
        self.executor.update_parameters(**parameters)
        self.gpus_per_run = gpus_per_run
        self.jobs_running: dict[Any, tuple[Running, Path]] = {}

    def free_slots(self) -> int:
        return sys.maxsize if self.jobs is None else self.jobs - len(self.jobs_running)

    def start(self, job: RunJob) -> None:
        job = dataclasses.replace(job, gpus_per_run=self.gpus_per_run)
        job_file = _job_file(self.out, job)
        job_file.parent.mkdir(parents=True, exist_ok=True)
        outcome_file(job_file).unlink(missing_ok=True)
        write_json(job_file, job.to_json())
        # What submitit pickles is this command line only; the job reads its JSON job file.
        command = self.submitit.helpers.CommandFunction([sys.executable, "-m", "mlcdf.experiments.runner", str(job_file)], verbose=False)
        submitted = self.executor.submit(command)
        self.jobs_running[submitted] = (Running(job, f"slurm {submitted.job_id}"), job_file)

    def finished(self, wait: float) -> list[tuple[RunJob, str, str]]:
        deadline = time.monotonic() + wait
        while True:
            ended = [submitted for submitted in self.jobs_running if submitted.done()]
            if ended or not self.jobs_running or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        results = []
        for submitted in ended:
            running, job_file = self.jobs_running.pop(submitted)
            code = 0 if submitted.exception() is None else 1
            results.append(_ended(running.job, job_file, code, Path(submitted.paths.stdout)))
        return results

    def running(self) -> list[Running]:
        return [running for running, _ in self.jobs_running.values()]

    def stop(self) -> None:
        for submitted in self.jobs_running:
            with contextlib.suppress(Exception):
                submitted.cancel()


# ----------------------------------------------------------------------------------------------- the plan


def run_plan(
    plan: Plan,
    out: Path,
    *,
    jobs: int | None = None,
    devices: Sequence[str] | None = None,
    gpus_per_run: int = 1,
    launcher: str = "local",
    slurm: Mapping[str, Any] | None = None,
    only: Sequence[str] = (),
    subsets: Sequence[str] | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] = lambda text: None,
    callbacks: TrainCallbacks | None = None,
    progress: ProgressFn = silent,
    monitor: Callable[[list[Running]], None] | None = None,
    poll_seconds: float = 2.0,
) -> PlanResult:
    """Run ``plan`` into the folder ``out``: the Python API of ``mlcdf reproduce --plan``.

    Skips evaluated runs, resumes interrupted ones, locks each run while it trains, goes on after a
    failure, and writes ``OUT/report-<subset>.md`` and ``OUT/results.csv`` from the run folders.
    ``launcher`` is ``local`` or ``slurm`` (options in ``slurm``: partition, time, gpus, cpus_per_task,
    account, cluster); ``only`` and ``subsets`` narrow the plan; ``dry_run`` only reports each run's status.

    ``jobs``: runs at once (local: one per device, or 1; Slurm: jobs queued at once, all by default). Without
    ``devices`` and with one job, runs train in this process (``callbacks`` and ``progress`` see them);
    otherwise each in its own process, on ``devices[i]`` (a GPU number or ``cpu``), and ``monitor``
    hears the running runs every ``poll_seconds``.

    Raises:
        MlcdfError: bad options, no run selected, a prepared folder missing, a graph that cannot be
            built, or a file at a table's name in OUT that is not an earlier table. A failing run does
            not raise: it is an outcome.
    """
    out = Path(out)
    entries = _check(plan, out, jobs, devices, gpus_per_run, launcher, only, subsets)
    if dry_run:
        return PlanResult([_planned(out, entry) for entry in entries])
    chosen = subsets if subsets is not None else plan.subsets
    _check_prepared(plan, chosen)
    if plan.tensorboard:
        require_tensorboard()  # here, not in each run: a missing extra would fail every run one by one
    if launcher == "slurm":
        runs: Launcher = SlurmLauncher(out, jobs, slurm or {}, gpus_per_run)
    elif devices or (jobs or 1) > 1:
        runs = LocalLauncher(out, jobs or max(1, len(devices or ()) // gpus_per_run), devices, gpus_per_run)
    else:
        runs = InProcessLauncher(log, callbacks, progress)
    with file_lock(out / SETUP_LOCK):
        for subset in chosen:
            for embedding in plan.embeddings(only):
                _build_graph(plan, out, subset, embedding, log, progress)
    outcomes = _launch(plan, out, entries, runs, log, monitor, poll_seconds)
    result = PlanResult([outcomes[entry.label] for entry in entries])
    for subset in chosen:
        result.reports[subset] = _write_report(plan, out, subset, log)
        _write_figure(plan, out, subset, log)
    # The CSV covers every subset of the plan evaluated under OUT, also those this call did not run.
    _write_results_csv(out, [row for subset in plan.subsets for row in _evaluated_results(plan, out, subset)])
    return result


def _check(
    plan: Plan,
    out: Path,
    jobs: int | None,
    devices: Sequence[str] | None,
    gpus_per_run: int,
    launcher: str,
    only: Sequence[str],
    subsets: Sequence[str] | None,
) -> list[PlanEntry]:
    if launcher not in LAUNCHERS:
        raise MlcdfError(f"unknown launcher {launcher!r}; expected {' or '.join(LAUNCHERS)}")
    if jobs is not None and jobs < 1 or gpus_per_run < 1:
        raise MlcdfError("--jobs and --gpus-per-run must be at least 1")
    given_devices = devices or ()
    for device in given_devices:
        if device != "cpu" and not device.isdigit():
            raise MlcdfError(f"--devices {','.join(given_devices)}: each device is a GPU number or cpu")
    unknown = [name for name in subsets or () if name not in plan.subsets]
    if unknown:
        raise MlcdfError(f"{plan.source}: no subset {unknown[0]!r}; the plan's are {', '.join(plan.subsets)}")
    if not plan.select(only):
        raise MlcdfError(f"--only {' '.join(only)} matches no run; the runs are {', '.join(run.name for run in plan.runs)}")
    for table in [*(_report_path(out, s) for s in plan.subsets), _results_csv_path(out)]:  # before hours of work
        check_file_replaceable(table, command="mlcdf reproduce", is_own=is_report_file)
    for subset in plan.subsets:
        check_figure_replaceable(_figure_path(out, subset), command="mlcdf reproduce")
    return plan.entries(only, subsets)


def _check_prepared(plan: Plan, subsets: Sequence[str]) -> None:
    for subset in subsets:
        if subset not in plan.prepared:
            raise MlcdfError(f"{plan.source}: subset {subset!r} has no prepared folder (give prepared, or data to 'mlcdf reproduce')")
        if not (plan.prepared[subset] / META_FILE).is_file():
            raise MissingArtifactError(plan.prepared[subset], f"the prepared subset {subset!r} of {plan.source}; run 'mlcdf prepare'")


def _planned(out: Path, entry: PlanEntry) -> RunOutcome:
    folder = run_dir(out, entry)
    holder = live_holder(folder)
    return RunOutcome(entry, folder, run_status(folder), PLANNED, holder=_describe(holder) if holder else "")


def _launch(
    plan: Plan,
    out: Path,
    entries: list[PlanEntry],
    runs: Launcher,
    log: Callable[[str], None],
    monitor: Callable[[list[Running]], None] | None,
    poll_seconds: float,
) -> dict[str, RunOutcome]:
    outcomes: dict[str, RunOutcome] = {}
    statuses: dict[str, str] = {}
    pending: list[PlanEntry] = []
    for entry in entries:
        folder = run_dir(out, entry)
        statuses[entry.label] = run_status(folder)
        if statuses[entry.label] == DONE:
            outcomes[entry.label] = RunOutcome(entry, folder, DONE, SKIPPED)
            log(f"{entry.label}: evaluated already, skipped")
        else:
            pending.append(entry)
    by_label = {entry.label: entry for entry in entries}
    waiting_told: set[str] = set()
    try:
        while pending or runs.running():
            for entry in list(pending):
                if runs.free_slots() <= 0:
                    break
                folder = run_dir(out, entry)
                holder = live_holder(folder)
                if holder is not None:
                    if entry.label not in waiting_told:
                        log(f"{entry.label}: trained by {_describe(holder)} ({lock_path(folder)}); waiting for it")
                        waiting_told.add(entry.label)
                    continue
                pending.remove(entry)
                if run_status(folder) == DONE:  # finished by another launcher meanwhile
                    outcomes[entry.label] = RunOutcome(entry, folder, statuses[entry.label], SKIPPED, "evaluated by another launcher")
                    log(f"{entry.label}: evaluated by another launcher, skipped")
                    continue
                runs.start(RunJob(entry.label, plan.train_config(entry, out), keep_last=plan.keep_last))
            busy = bool(runs.running())
            for job, outcome, reason in runs.finished(poll_seconds if busy else 0):
                entry = by_label[job.label]
                if outcome == LOCKED:
                    pending.append(entry)
                    continue
                outcomes[entry.label] = RunOutcome(entry, job.run_dir, statuses[entry.label], outcome, reason)
                if outcome == FAILED:
                    log(f"{entry.label}: FAILED: {reason}")
                elif outcome == SKIPPED:
                    log(f"{entry.label}: evaluated by another launcher, skipped")
                elif busy:
                    log(f"{entry.label}: done")
            if monitor is not None:
                monitor(runs.running())
            if pending and not runs.running():
                time.sleep(poll_seconds)  # every remaining run is locked by another launcher
    except KeyboardInterrupt:
        runs.stop()
        raise
    return outcomes


def _build_graph(plan: Plan, out: Path, subset: str, embedding: str, log: Callable[[str], None], progress: ProgressFn) -> None:
    path = graph_path(out, subset, embedding)
    if path.is_file():
        try:
            load_graph(path)
            return
        except SchemaError as error:  # ours, left damaged or half-replaced by an interrupted launch
            log(f"{subset}: rebuilding the label graph ({error})")
    log(f"{subset}: building the label graph with {embedding} node embeddings")
    prepared = plan.prepared[subset]
    if embedding == "word":
        graph_config = GraphConfig(prepared=prepared, out=path, embedding=plan.word_embedding)
    else:
        # Mean ImageNet features of each label's training images, IML-GCN's image embeddings.
        defaults = plan.shared_options()
        graph_config = GraphConfig(
            prepared=prepared,
            out=path,
            embedding="image",
            pretrained=defaults.pretrained,
            image_size=defaults.image_size,
            device=defaults.device,
            cache=True,
            workers=defaults.workers if defaults.workers is not None else 4,
        )
    for message in build_graph(graph_config, progress=progress).warnings:
        log(f"{subset}: {message}")


def _report_path(out: Path, subset: str) -> Path:
    return out / f"report-{subset}.md"


def _results_csv_path(out: Path) -> Path:
    return out / "results.csv"


def _figure_path(out: Path, subset: str) -> Path:
    return out / f"figure-{subset}.png"


def _evaluated_results(plan: Plan, out: Path, subset: str) -> list[ResultRow]:
    """The test results of the evaluated runs of ``subset`` under OUT, in the plan's order."""
    folders = (run_dir(out, entry) for entry in plan.entries(subsets=(subset,)))
    return [load_result(folder) for folder in folders if is_evaluated(folder)]


def _write_report(plan: Plan, out: Path, subset: str, log: Callable[[str], None]) -> Path:
    rows = _evaluated_results(plan, out, subset)
    path = _report_path(out, subset)
    with atomic_open(path) as handle:
        handle.write(results_table(rows, fmt="md", paper=plan.paper))
    log(f"{subset}: {len(rows)} of {len(plan.entries(subsets=(subset,)))} runs evaluated; table in {path}")
    return path


def _write_figure(plan: Plan, out: Path, subset: str, log: Callable[[str], None]) -> None:
    """The paper's Figure 2/3 of ``subset`` (direct vs indirect means), once a run of a known category is evaluated."""
    rows = [row for row in _evaluated_results(plan, out, subset) if row.category in ("direct", "indirect")]
    if rows:
        path = _figure_path(out, subset)
        write_category_figure(rows, path, paper=plan.paper, command="mlcdf reproduce")
        log(f"{subset}: direct vs indirect figure in {path}")


def _write_results_csv(out: Path, rows: list[ResultRow]) -> None:
    """One line per run (seeds not grouped, with a ``seed`` column); ``mlcdf report`` groups them."""
    if rows:
        with atomic_open(_results_csv_path(out)) as handle:
            handle.write(runs_csv(rows))


if __name__ == "__main__":
    sys.exit(worker_main(*sys.argv[1:]))
