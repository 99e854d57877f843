"""The runner: run every run folder of a :class:`~mlcdf.experiments.plans.Plan` into ``OUT``, report from disk.

Everything it decides comes from the run folders, so a plan can be re-launched after any crash, from
this machine or another sharing the file system::

    OUT/graphs/<subset>-<embedding>.npz   graphs the runs' ``embedding`` asks for (built once)
    OUT/runs/<subset>/<run>/              mlcdf train + mlcdf evaluate (eval/test/metrics.json)
    OUT/runs/<subset>/<run>.lock          held while the run trains, or queued as a Slurm job: {"host", "pid",
                                          "started", "process_start", "slurm_job" or "queued"/"claim"}
    OUT/launch/<subset>/<run>.{json,log,outcome.json}   a run launched in its own process: what it
                                          was asked, what it printed, how it ended
    OUT/report-<subset>.md, OUT/results.csv

A run folder is ``done`` (evaluated on test: skipped), ``evaluate`` (trained, not evaluated),
``resume`` (checkpoints of an unfinished run: resumed from ``last.pt``) or ``new``. A run that fails
(out of memory, a diverging loss, other options than its folder was trained with) is recorded and the
others go on. Once a run is evaluated its ``last.pt`` (resume state, 4x the weights) is deleted unless
the plan says ``keep_last``.

Never the same run twice: whoever trains a run holds its lock, created atomically (a hard link, which
fails if the lock exists, also over NFS) with the holder's host, process id and start time (and Slurm
job id). A lock whose holder has ended (a Slurm job that Slurm no longer runs, asked from any host; a
process of this host that is gone) is taken over with a warning; a launcher that finds every remaining
run locked by others waits for them, then reports from what is on disk. A run stops cleanly on
SIGINT and SIGTERM (``scancel``, a Slurm time limit): lock released, finished epochs kept.

Launchers start runs and say when they end, so the loop does not know where runs execute:
in this process (one at a time, no devices given), in subprocesses on this machine (``jobs`` at once,
each on its own device of ``devices``, several GPUs per run through ``torchrun``), or as Slurm jobs
through ``submitit``. A subprocess or job runs ``python -m mlcdf.experiments.runner OUT/launch/<subset>/<run>.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import gc
import io
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import torch

from mlcdf.config import DEFAULT_LOADER_WORKERS, RESUME_OVERRIDES, TrainConfig, default_workers
from mlcdf.data.prepared import META_FILE
from mlcdf.devices import CUDA_ORDER, default_slots, device_slots
from mlcdf.errors import INTERRUPTED_MESSAGE, MissingArtifactError, MlcdfError, SchemaError, first_line
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
from mlcdf.models import resolve_config
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


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, parent, process group, ...; the
    start time is the 20th), ``None`` for a process that is gone (or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (OSError, ValueError):
        return None
    return stat.rsplit(")", 1)[-1].split()  # the command name, in parentheses, may hold spaces


def _process_start(pid: int) -> str | None:
    """When process ``pid`` of this host started (clock ticks since boot, from ``/proc``), ``None`` if unknown.

    With the process id it names one process for good: a process id alone is reused once its process
    is gone, and a lock of a dead run would look held by whatever process got the number.
    """
    fields = _stat_fields(pid)
    return fields[19] if fields else None  # field 22 of stat


def _my_lock(claim: str, queued_as: str | None) -> dict[str, Any]:
    pid = os.getpid()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    mine: dict[str, Any] = {"host": _this_host(), "pid": pid, "started": started, "process_start": _process_start(pid)}
    job = queued_as if queued_as is not None else os.environ.get("SLURM_JOB_ID")
    if job:  # a Slurm job, queued or running: any host can ask Slurm whether it is still alive
        mine["slurm_job"] = job
    if claim:
        mine["claim"] = claim
    if queued_as is not None:
        mine["queued"] = True
    return mine


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's holder, ``None`` if there is none.

    Raises:
        MlcdfError: something else is at the lock's name (a folder, a file that is not a lock): a lock is
            written whole before it is linked into place, so this is not a lock being written.
    """
    try:
        holder = read_json_object(path, "a run lock")
    except FileNotFoundError:
        return None
    except (MlcdfError, OSError, ValueError) as error:
        reason = "a folder" if path.is_dir() else first_line(error)
        raise MlcdfError(f"{path}: not a run lock ({reason}); remove it if no launcher is running this run") from None
    if not isinstance(holder.get("host"), str) or not isinstance(holder.get("pid"), int):
        raise MlcdfError(f"{path}: not a run lock (no host and pid); remove it if no launcher is running this run")
    return holder


def _describe(holder: Mapping[str, Any]) -> str:
    job = f" (Slurm job {holder['slurm_job']}{', queued' if holder.get('queued') else ''})" if holder.get("slurm_job") else ""
    return f"{holder.get('host')}:{holder.get('pid')} since {holder.get('started')}{job}"


#: Slurm job states in which the job may still run (and hold its lock); any other, or a job Slurm no longer
#: lists, has ended.
_SLURM_LIVE_STATES = set(
    "PENDING RUNNING CONFIGURING COMPLETING SUSPENDED STOPPED REQUEUED REQUEUE_HOLD REQUEUE_FED RESIZING SIGNALING STAGE_OUT".split()
)


def slurm_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """The state of each job of ``job_ids`` that Slurm still lists (``squeue``), ``None`` if Slurm cannot be
    asked from here. Works without Slurm accounting (``sacct``), and from any host of the cluster."""
    try:
        listed = subprocess.run(
            ["squeue", "--noheader", "--states=all", "--format=%i %T", f"--jobs={','.join(job_ids)}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        # The one error that is an answer: a job id Slurm no longer knows (purged after it ended).
        return {} if "Invalid job id" in listed.stderr else None
    states = dict(line.split()[:2] for line in listed.stdout.splitlines() if len(line.split()) >= 2)
    return {job: state for job, state in states.items() if job in job_ids}


def _is_stale(holder: Mapping[str, Any]) -> bool:
    """Held by a run that has ended (killed, cancelled, past its time limit): safe to take over.

    A Slurm job's lock is judged by Slurm, from any host; any other by its process, from its own host only
    (a process id with the process's start time, so a reused process id is not mistaken for the holder).
    """
    job = holder.get("slurm_job")
    if job:
        states = slurm_states([str(job)])
        if states is not None:
            return states.get(str(job)) not in _SLURM_LIVE_STATES
    pid = holder["pid"]
    if holder["host"] != _this_host() or pid <= 0:
        return False
    if not _process_exists(pid):
        return True
    started = holder.get("process_start")
    return started is not None and _process_start(pid) not in (None, started)


def _is_claim(holder: Mapping[str, Any], claim: str) -> bool:
    """Whether ``holder`` is the claim ``claim`` that a launcher took for a job it queued."""
    return bool(claim) and bool(holder.get("queued")) and holder.get("claim") == claim


def _is_claims_job(holder: Mapping[str, Any], claim: str) -> bool:
    """Whether ``holder`` is the job queued under the claim ``claim``, started (and holding the lock)."""
    return bool(claim) and not holder.get("queued") and holder.get("claim") == claim


def live_holder(run_dir: Path) -> dict[str, Any] | None:
    """The holder of the run's lock, unless there is none or it has ended."""
    holder = _read_lock(lock_path(run_dir))
    return None if holder is None or _is_stale(holder) else holder


def try_lock(run_dir: Path, warn: Callable[[str], None], *, claim: str = "", queued_as: str | None = None) -> bool:
    """Take the run's lock for this process; ``False`` if a live process holds it.

    The lock's content is written to a temporary file first and hard-linked into place: the link is the
    atomic, exclusive create (``O_EXCL`` semantics, also over NFS), and a reader never sees it half-written,
    nor changed: whoever holds a lock never rewrites it.

    A launcher that queues a job takes the lock for it, as the claim ``claim``, marked queued, with the
    Slurm job id ``queued_as`` ("" if none), so that no other launcher queues the run too. The job, started,
    takes its claim over (its job file names ``claim``).
    """
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_json(temporary, _my_lock(claim, queued_as))
    try:
        for _ in range(2):  # the second time after taking over a stale lock
            try:
                os.link(temporary, path)
                return True
            except FileExistsError:
                holder = _read_lock(path)
                if holder is None:
                    continue  # released meanwhile
                mine = queued_as is None and _is_claim(holder, claim)
                if not mine and not _is_stale(holder):
                    return False
                if not _take_over(path, holder):
                    return False
                if not mine:
                    warn(f"{path}: taking over the lock of {_describe(holder)}, which has ended")
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
    try:
        moved = _read_lock(aside)
    except MlcdfError:
        moved = None
    if moved != dict(stale):
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def _holds(holder: Mapping[str, Any]) -> bool:
    return holder.get("host") == _this_host() and holder.get("pid") == os.getpid()


def unlock(run_dir: Path, *, claim: str = "") -> None:
    """Release the run's lock if this process holds it, or if it is still the claim ``claim`` (its job ended
    or was cancelled before it started)."""
    path = lock_path(run_dir)
    with contextlib.suppress(MlcdfError):  # not a lock: not ours to remove
        holder = _read_lock(path)
        if holder and (_is_claim(holder, claim) if claim else _holds(holder)):
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ one run


@dataclass(frozen=True)
class RunJob:
    """What it takes to run one run folder, in this process or another: JSON-able, see :meth:`to_json`."""

    label: str
    config: TrainConfig
    keep_last: bool = False
    gpus_per_run: int = 1
    #: The queued claim on the run's lock that this job takes over when it starts (Slurm), or none.
    claim: str = ""

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "train": dataclasses.asdict(self.config),
            "keep_last": self.keep_last,
            "gpus_per_run": self.gpus_per_run,
            "claim": self.claim,
        }

    @classmethod
    def from_json(cls, path: Path) -> RunJob:
        document = read_json_object(path, "a run job")
        try:
            config = TrainConfig.from_dict(document["train"], source=str(path))
            claim = str(document.get("claim", ""))
            return cls(document["label"], config, bool(document["keep_last"]), int(document["gpus_per_run"]), claim)
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
    if not try_lock(run_dir, log, claim=job.claim):
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
        metrics = _evaluate(job, progress)
        log(f"{job.label}: test mAP {metrics['mAP']:.2f}")
        if not job.keep_last:
            (run_dir / CHECKPOINTS / "last.pt").unlink(missing_ok=True)
        return TRAINED
    finally:
        unlock(run_dir)
        _release_memory()


def _evaluate(job: RunJob, progress: ProgressFn) -> dict[str, Any]:
    """The test metrics of the trained run, evaluated at its batch size (inference needs less memory than
    the training that fitted). CUDA running out of memory fails this run, not the plan."""
    batch_size = job.config.batch_size
    try:
        return evaluate_run(job.run_dir, device=job.config.device, batch_size=batch_size, progress=progress)[1]
    except torch.OutOfMemoryError:
        smaller = max(1, batch_size // 2)
        raise MlcdfError(
            f"CUDA ran out of memory evaluating {job.run_dir} at batch size {batch_size}; try --batch-size {smaller}"
        ) from None


#: The lines of a torchrun launch kept to find why it failed: its ranks' errors come before its own report.
_TORCHRUN_LINES_KEPT = 2000
#: How long torchrun gets to end its ranks after SIGTERM (it gives them 30 s, then kills them).
_TORCHRUN_GRACE_SECONDS = 45.0
#: ``prctl`` option: the signal a process gets when its parent ends (Linux).
_PR_SET_PDEATHSIG = 1


def _train_with_torchrun(job: RunJob, *, resume: bool) -> None:
    """DDP over ``gpus_per_run`` devices: ``torchrun -m mlcdf train`` on this process's visible GPUs (a
    rank per GPU), or ``gpus_per_run`` CPU processes (gloo) for a run on ``cpu``.

    What torchrun and its ranks print goes to this process's stderr (the run's launch log) as it comes; a
    failure raises with the ranks' own reason (:func:`torchrun_failure`). Interrupted (a
    :data:`STOP_SIGNALS` signal raises here), it returns only once every rank has ended; and torchrun ends
    its ranks if this process dies any other way (it gets SIGTERM when its parent ends).
    """
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
    printed: deque[str] = deque(maxlen=_TORCHRUN_LINES_KEPT)
    try:
        torchrun = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            preexec_fn=functools.partial(_end_with_parent, os.getpid()),
        )
        try:
            _forward(torchrun.stdout, printed)
            returncode = torchrun.wait()
        except BaseException:  # a stop signal: no rank may outlive this call
            # Read on while they end, so that none blocks writing to a full pipe.
            threading.Thread(target=_forward, args=(torchrun.stdout, deque(maxlen=1)), daemon=True).start()
            end_process_tree(torchrun)
            raise
    finally:
        options.unlink(missing_ok=True)
    if returncode != 0:
        raise MlcdfError(f"torchrun exited with {returncode}: {torchrun_failure(printed)}")


def _forward(stream: IO[str] | None, printed: deque[str]) -> None:
    """Copy torchrun's output to this process's stderr (the run's launch log) as it comes, keeping its end."""
    for line in stream or ():
        sys.stderr.write(line)
        sys.stderr.flush()
        printed.append(line.rstrip("\n"))


def _end_with_parent(parent: int) -> None:
    """Run in torchrun's process before it starts: SIGTERM when its parent ends, however it ends (torchrun
    passes SIGTERM on to its ranks and waits for them)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent ended before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def torchrun_failure(printed: Iterable[str]) -> str:
    """Why a torchrun launch failed, from what it and its ranks printed.

    The first rank's one-line ``error:`` (the error of ``mlcdf train``: a missing file, CUDA out of
    memory with the batch size to try), else the exception of the first traceback that is not torchrun's
    own (``ChildFailedError``), else torchrun's ``exitcode`` line (a rank killed by a signal). Never the
    ``====`` border of torchrun's report, which is its last line.
    """
    lines = list(printed)
    errors = [line.strip().removeprefix("error:").strip() for line in lines if line.strip().startswith("error:")]
    if errors:
        return errors[0]
    exceptions, in_traceback = [], False
    for line in lines:
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and line.strip() and not line[0].isspace():
            in_traceback = False
            exceptions.append(line.strip())
    own = [exception for exception in exceptions if "torch.distributed.elastic" not in exception]
    if own:
        return own[0]
    exit_codes = [" ".join(line.split()) for line in lines if line.strip().startswith("exitcode")]
    return f"a rank ended with {exit_codes[0]}" if exit_codes else "no reason printed; see the run's launch log"


def _descendants(root: int) -> dict[int, str]:
    """Every process under ``root`` (children, their children, ...), with its start time (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        fields = _stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            started[int(entry.name)] = fields[19]
    found: dict[int, str] = {}
    parents = [root]
    while parents:
        for child in children.get(parents.pop(), ()):
            if child not in found:
                found[child] = started[child]
                parents.append(child)
    return found


def _alive(pid: int, started: str) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (a zombie has ended)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def end_process_tree(root: subprocess.Popen, grace: float = _TORCHRUN_GRACE_SECONDS) -> None:
    """End ``root`` and every process under it; return once all are gone.

    torchrun starts each rank in a session of its own, so a signal to a process group never reaches them,
    and a torchrun that is killed leaves them running, holding their GPUs until NCCL times out. So the
    processes under ``root`` are noted first; ``root`` gets SIGTERM (torchrun passes it on to each rank's
    process group and waits for them) and ``grace`` seconds; then whatever is left is killed, each with
    its process group (a rank with its loader workers).
    """
    tree = _descendants(root.pid)
    with contextlib.suppress(ProcessLookupError):
        root.send_signal(signal.SIGTERM)
    try:
        root.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        tree.update(_descendants(root.pid))
        root.kill()
        root.wait()
    for pid, started in tree.items():
        if _alive(pid, started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                group = os.getpgid(pid)
                # Never this process's own group (a child that did not leave it).
                os.killpg(group, signal.SIGKILL) if group != os.getpgrp() else os.kill(pid, signal.SIGKILL)
    while any(_alive(pid, started) for pid, started in tree.items()):
        time.sleep(0.05)


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
    wanted = dataclasses.asdict(resolve_config(planned))
    changed = sorted(key for key in wanted if key not in _FREE_OPTIONS and saved[key] != wanted[key])
    if changed:
        details = ", ".join(f"{key} {saved[key]!r} -> {wanted[key]!r}" for key in changed)
        raise MlcdfError(f"{run_dir} was trained with other options ({details}); delete it or choose another output folder")


def _release_memory() -> None:
    # Two dozen large models in one process: free each one's memory before the next starts.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Stopped(KeyboardInterrupt):
    """A signal that ends a run before its time, raised where the run is so that it unwinds like a Ctrl-C:
    its lock released, its last finished epoch kept in ``last.pt``."""


#: The signals a run stops on: Ctrl-C, and Slurm's ``scancel``, time limit or shutdown (SIGTERM).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Ended by :data:`STOP_SIGNALS` (the reason names the signal); resumed by the next launch.
INTERRUPTED = "interrupted"


def _stop_on_signal(number: int, frame: Any) -> None:
    for other in STOP_SIGNALS:  # Slurm follows its warning with SIGTERM: one unwinding is enough
        signal.signal(other, signal.SIG_IGN)
    raise _Stopped(signal.Signals(number).name)


@contextlib.contextmanager
def _stopping_on_signals() -> Iterator[None]:
    """Within: SIGTERM (``kill``, a Slurm job's end) stops the launch as Ctrl-C does, so that the runs it
    started in other processes are stopped and waited for (:meth:`Launcher.stop`), not left running. A
    second signal meanwhile is ignored: one stop is under way. Only the main thread receives signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number in STOP_SIGNALS:
        signal.signal(number, _stop_on_signal)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def worker_main(job_file: str) -> int:
    """``python -m mlcdf.experiments.runner JOB.json``: run one job, write ``JOB.outcome.json``; exit 0 unless it
    failed or was stopped (:data:`STOP_SIGNALS`). Also what a Slurm job runs, in submitit's process."""
    path = Path(job_file)
    outcome_path = outcome_file(path)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    for number in STOP_SIGNALS:
        signal.signal(number, _stop_on_signal)
    # Slurm's warning before the time limit (submitit's --signal): Slurm may send it up to a minute early, so
    # the run goes on to the limit's SIGTERM, and the launcher submits it again.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        job = RunJob.from_json(path)
        outcome, reason = execute(job, log=say), ""
    except MlcdfError as error:
        outcome, reason = FAILED, first_line(error)
        say(f"FAILED: {reason}")
    except KeyboardInterrupt as stopped:
        outcome, reason = INTERRUPTED, str(stopped) or signal.SIGINT.name
        say(f"{INTERRUPTED_MESSAGE} ({reason})")
    write_json(outcome_path, {"outcome": outcome, "reason": reason})
    return 1 if outcome in (FAILED, INTERRUPTED) else 0


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


def _job_file(out: Path, label: str) -> Path:
    return out / "launch" / f"{label}.json"


def _is_run_job(path: Path) -> bool:
    try:
        RunJob.from_json(path)
    except (MlcdfError, OSError, ValueError):
        return False
    return True


def _is_outcome(path: Path) -> bool:
    try:
        ended = read_json_object(path)
    except (MlcdfError, OSError, ValueError):
        return False
    return "outcome" in ended and set(ended) <= {"outcome", "reason"}


def _check_launch_files(out: Path, label: str) -> None:
    """Refuse, before anything starts, to replace a file at a run's launch names that a launch did not write."""
    job_file = _job_file(out, label)
    check_file_replaceable(job_file, command="mlcdf reproduce", is_own=_is_run_job)
    check_file_replaceable(outcome_file(job_file), command="mlcdf reproduce", is_own=_is_outcome)
    # The output of the job of the job file beside it.
    check_file_replaceable(job_file.with_suffix(".log"), command="mlcdf reproduce", is_own=lambda _: _is_run_job(job_file))


def _read_outcome(job_file: Path) -> tuple[str, str] | None:
    """The outcome and reason a run launched in another process wrote, ``None`` if it wrote none."""
    try:
        ended = read_json_object(outcome_file(job_file))
        return str(ended["outcome"]), str(ended.get("reason", ""))
    except (MlcdfError, OSError, KeyError):
        return None


def _ended(job: RunJob, job_file: Path, how: str, log_file: Path) -> tuple[RunJob, str, str]:
    """How a run launched in another process ended, from the outcome file it wrote (``how``: what is known
    of its end otherwise, for a process that wrote none)."""
    ended = _read_outcome(job_file)
    if ended is None:
        return job, FAILED, f"its {how} without an outcome; see {log_file}"
    outcome, reason = ended
    if outcome == INTERRUPTED:
        return job, FAILED, f"{INTERRUPTED_MESSAGE} ({reason})"
    return job, outcome, reason


class LocalLauncher:
    """Runs in subprocesses of this machine, one per slot at once. A slot is ``cpu``, the GPUs of its run
    (the run's ``CUDA_VISIBLE_DEVICES``, from :func:`mlcdf.devices.device_slots`), or ``auto`` (the run's
    own device: no GPU is visible)."""

    def __init__(self, out: Path, slots: Sequence[str], gpus_per_run: int) -> None:
        self.out = out
        self.free = list(slots)
        self.gpus_per_run = gpus_per_run
        self.processes: dict[subprocess.Popen, tuple[Running, Path, Path]] = {}

    def free_slots(self) -> int:
        return len(self.free)

    def start(self, job: RunJob) -> None:
        device = self.free.pop(0)
        env = {**CUDA_ORDER, **os.environ}
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
            job = dataclasses.replace(job, config=dataclasses.replace(job.config, device="cpu"))
        elif device != "auto":
            env["CUDA_VISIBLE_DEVICES"] = device
            job = dataclasses.replace(job, config=dataclasses.replace(job.config, device="cuda"))
        job = dataclasses.replace(job, gpus_per_run=self.gpus_per_run)
        job_file = _job_file(self.out, job.label)
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
        shown = device if device in ("cpu", "auto") else f"GPU {device}"  # as nvidia-smi numbers them
        self.processes[process] = (Running(job, shown), job_file, log_file)

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
            results.append(_ended(running.job, job_file, f"process ended (exit code {process.returncode})", log_file))
        return results

    def running(self) -> list[Running]:
        return [running for running, _, _ in self.processes.values()]

    def stop(self) -> None:
        # Like Ctrl-C: each run ends its torchrun ranks, then releases its lock, and keeps its last epoch.
        for process in self.processes:
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
    """Each run a Slurm job through submitit; ``cluster="local"`` runs them as local processes (tests).

    A run is claimed (its lock taken, marked queued) before its job is submitted, so that a second launcher
    does not queue it too, and the job takes the claim over when it starts. The jobs are followed with
    ``squeue``, which needs no Slurm accounting, and a job Slurm no longer runs has ended, however it was
    killed. A job ended by its time limit is submitted again if it finished an epoch; it resumes from
    ``last.pt``.
    """

    def __init__(self, out: Path, jobs: int | None, options: Mapping[str, Any], gpus_per_run: int, log: Callable[[str], None]) -> None:
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
        self.cluster = options.get("cluster", "slurm")  # never submitit's silent fallback to local processes
        try:
            self.executor = submitit.AutoExecutor(folder=out / "launch" / "slurm", cluster=self.cluster)
        except RuntimeError as error:  # no sbatch/srun here
            raise MlcdfError(f"--launcher slurm: {first_line(error)} (--slurm-cluster local runs the jobs here)") from None
        parameters = {SLURM_OPTIONS[key]: value for key, value in options.items() if key in SLURM_OPTIONS and value is not None}
        parameters.setdefault("tasks_per_node", 1)
        self.executor.update_parameters(**parameters)
        self.gpus = options.get("gpus")
        self.cpus_per_task = options.get("cpus_per_task")
        self.gpus_per_run = gpus_per_run
        self.log = log
        self.jobs_running: dict[Any, tuple[Running, Path, int]] = {}
        self.done: list[tuple[RunJob, str, str]] = []

    def free_slots(self) -> int:
        return sys.maxsize if self.jobs is None else self.jobs - len(self.jobs_running)

    def start(self, job: RunJob) -> None:
        job = dataclasses.replace(job, gpus_per_run=self.gpus_per_run, claim=uuid.uuid4().hex)
        job_file = _job_file(self.out, job.label)
        job_file.parent.mkdir(parents=True, exist_ok=True)
        outcome_file(job_file).unlink(missing_ok=True)
        write_json(job_file, job.to_json())
        try:
            submitted = self._submit(job, job_file)
        except BaseException:
            job_file.unlink(missing_ok=True)
            raise
        # Claimed once the job id is known, so that Slurm tells any host whether the claim is alive. A
        # launcher that queued the run meanwhile wins: this job is cancelled (or, started, finds it locked).
        queued_as = str(submitted.job_id) if self.cluster == "slurm" else ""
        if not try_lock(job.run_dir, self.log, claim=job.claim, queued_as=queued_as):
            holder = _read_lock(lock_path(job.run_dir))
            if holder is None or not _is_claims_job(holder, job.claim):
                with contextlib.suppress(Exception):
                    submitted.cancel(check=False)
                self.done.append((job, LOCKED, ""))
                return
        running = Running(job, f"slurm {submitted.job_id}")
        self.jobs_running[submitted] = (running, job_file, running.progress()[0])

    def _submit(self, job: RunJob, job_file: Path) -> Any:
        # A CPU run asks for no GPU: a cluster without GPUs would refuse the job.
        gpus = self.gpus if self.gpus is not None else 0 if job.config.device == "cpu" else self.gpus_per_run
        # Without --cpus-per-task Slurm gives a job its default, often one CPU, and a GPU's loader workers
        # would starve: each GPU's rank and its workers get theirs (a CPU run keeps the usual one).
        cpus = self.cpus_per_task or (DEFAULT_LOADER_WORKERS + 1) * gpus or 1
        # Named after the run, its own name first: squeue shows the first 8 characters.
        self.executor.update_parameters(name=f"{job.run_dir.name}@{job.run_dir.parent.name}", gpus_per_node=gpus, cpus_per_task=cpus)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stderr(printed):  # submitit prints sbatch's complaint before raising it
                return self.executor.submit(worker_main, str(job_file))
        except self.submitit.core.utils.FailedJobError as error:
            lines = [line.removeprefix("sbatch: error: ").strip() for line in str(error).splitlines() if line.strip()]
            raise MlcdfError(f"sbatch refused the job of {job.label}: {'; '.join(lines) or 'no reason given'}") from None

    def finished(self, wait: float) -> list[tuple[RunJob, str, str]]:
        deadline = time.monotonic() + wait
        while True:
            ended = self._ended_jobs()
            if ended or self.done or not self.jobs_running or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        results, self.done = self.done, []
        for submitted, state in ended.items():
            running, job_file, epochs_before = self.jobs_running.pop(submitted)
            job = running.job
            unlock(job.run_dir, claim=job.claim)  # a job that never started leaves its claim
            stderr = Path(submitted.paths.stderr)
            if state == "TIMEOUT":  # stopped by SIGTERM (or, past KillWait, killed: no outcome), its epochs kept
                if running.progress()[0] > epochs_before:
                    self.log(f"{job.label}: stopped at its Slurm time limit; submitted again to resume")
                    self.start(job)
                    continue
                results.append(
                    (job, FAILED, "reached its Slurm time limit before an epoch ended; give a longer --time, then rerun the same command")
                )
                continue
            results.append(_ended(job, job_file, f"Slurm job {submitted.job_id} ended ({state})", stderr))
        return results

    def _ended_jobs(self) -> dict[Any, str]:
        """The jobs that ended, with their last state."""
        if self.cluster != "slurm":
            return {submitted: "done" for submitted in self.jobs_running if submitted.done()}
        if not self.jobs_running:
            return {}
        states = slurm_states([str(submitted.job_id) for submitted in self.jobs_running])
        if states is None:  # Slurm cannot be asked right now: nothing is known to have ended
            return {}
        ended = {submitted: states.get(str(submitted.job_id), "no longer listed by squeue") for submitted in self.jobs_running}
        return {submitted: state for submitted, state in ended.items() if state not in _SLURM_LIVE_STATES}

    def running(self) -> list[Running]:
        return [running for running, _, _ in self.jobs_running.values()]

    def stop(self) -> None:
        # A running job ends on SIGTERM, releasing its lock; the claims of jobs that never started are ours.
        for submitted, (running, _, _) in self.jobs_running.items():
            with contextlib.suppress(Exception):
                submitted.cancel(check=False)
            unlock(running.job.run_dir, claim=running.job.claim)


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
    otherwise each in its own process, on ``gpus_per_run`` devices of ``devices`` (GPU numbers counted in
    this process's visible GPUs, or ``cpu``: :func:`mlcdf.devices.device_slots`), or, without ``devices``,
    on a visible GPU each; ``monitor`` hears the running runs every ``poll_seconds``. Image-embedding
    graphs are built on the first of those devices.

    Raises:
        MlcdfError: bad options, no run selected, a prepared folder missing, a graph that cannot be
            built, or a file at a table's name in OUT that is not an earlier table. A failing run does
            not raise: it is an outcome.
    """
    out = Path(out)
    entries = _check(plan, out, jobs, devices, gpus_per_run, launcher, only, subsets)
    slots = _local_slots(plan, jobs, devices, gpus_per_run) if launcher == "local" else None
    if dry_run:
        return PlanResult([_planned(out, entry) for entry in entries])
    chosen = subsets if subsets is not None else plan.subsets
    _check_prepared(plan, chosen)
    if plan.tensorboard:
        require_tensorboard()  # here, not in each run: a missing extra would fail every run one by one
    if launcher == "slurm":
        runs: Launcher = SlurmLauncher(out, jobs, slurm or {}, gpus_per_run, log)
    elif slots is not None:
        runs = LocalLauncher(out, slots, gpus_per_run)
    else:
        runs = InProcessLauncher(log, callbacks, progress)
    with _stopping_on_signals():
        with file_lock(out / SETUP_LOCK):
            for subset in chosen:
                for embedding in plan.embeddings(only):
                    _build_graph(plan, out, subset, embedding, log, progress, slots[0] if slots else None)
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
    if launcher == "slurm" and given_devices:
        raise MlcdfError("--devices is for --launcher local; a Slurm job trains on the GPUs Slurm gives it (--gpus)")
    if launcher == "local" and gpus_per_run > 1 and len(given_devices) < gpus_per_run:
        example = ",".join(str(index) for index in range(gpus_per_run))
        raise MlcdfError(
            f"--gpus-per-run {gpus_per_run} needs --devices listing the GPUs of the runs, {gpus_per_run} per run "
            f"(e.g. --devices {example}); got {','.join(given_devices) or 'no --devices'}"
        )
    unknown = [name for name in subsets or () if name not in plan.subsets]
    if unknown:
        raise MlcdfError(f"{plan.source}: no subset {unknown[0]!r}; the plan's are {', '.join(plan.subsets)}")
    if not plan.select(only):
        raise MlcdfError(f"--only {' '.join(only)} matches no run; the runs are {', '.join(run.name for run in plan.runs)}")
    for table in [*(_report_path(out, s) for s in plan.subsets), _results_csv_path(out)]:  # before hours of work
        check_file_replaceable(table, command="mlcdf reproduce", is_own=is_report_file)
    for subset in plan.subsets:
        check_figure_replaceable(_figure_path(out, subset), command="mlcdf reproduce")
    entries = plan.entries(only, subsets)
    for entry in entries:
        _check_launch_files(out, entry.label)
        _read_lock(lock_path(run_dir(out, entry)))  # something at a lock's name that is no lock
    return entries


def _local_slots(plan: Plan, jobs: int | None, devices: Sequence[str] | None, gpus_per_run: int) -> list[str] | None:
    """The slots of the local launcher (see :class:`LocalLauncher`), ``None`` for runs in this process.

    Without ``devices``, ``jobs`` runs take a visible GPU each (never all GPU 0), or the CPU where the plan
    says ``cpu`` or no GPU is visible.
    """
    if devices:
        return device_slots(devices, gpus_per_run)[: jobs or None]
    if (jobs or 1) == 1:
        return None
    assert jobs is not None
    if plan.shared_options().device == "cpu":
        return ["cpu"] * jobs
    return default_slots(jobs) or ["auto"] * jobs


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
    except BaseException:  # Ctrl-C, or a job Slurm refused: stop what was started, release its locks
        runs.stop()
        raise
    return outcomes


def _build_graph(
    plan: Plan, out: Path, subset: str, embedding: str, log: Callable[[str], None], progress: ProgressFn, slot: str | None
) -> None:
    """Build the graph a run's ``embedding`` asks for, unless it is there. Image embeddings are computed on
    the first device of the runs' first slot (:class:`LocalLauncher`; ``None``: the plan's device): on a
    GPU in a process of their own (:func:`build_graph_apart`), so that no CUDA context or cached memory
    of this process stays on a GPU the runs train on."""
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
        warnings = build_graph(GraphConfig(prepared=prepared, out=path, embedding=plan.word_embedding), progress=progress).warnings
    else:
        # Mean ImageNet features of each label's training images, IML-GCN's image embeddings.
        defaults = plan.shared_options()
        graph_config = GraphConfig(
            prepared=prepared,
            out=path,
            embedding="image",
            pretrained=defaults.pretrained,
            image_size=defaults.image_size,
            device="cpu" if slot == "cpu" else defaults.device,
            cache=True,
            workers=defaults.workers if defaults.workers is not None else default_workers(),
        )
        if slot in (None, "auto", "cpu"):
            try:
                warnings = build_graph(graph_config, progress=progress).warnings
            finally:
                _release_memory()
        else:
            first_gpu = slot.split(",")[0]
            log(f"{subset}: image embeddings on GPU {first_gpu}, in a process of their own")
            on_gpu = dataclasses.replace(graph_config, device="cuda")
            warnings = build_graph_apart(on_gpu, {**CUDA_ORDER, **os.environ, "CUDA_VISIBLE_DEVICES": first_gpu})
    for message in warnings:
        log(f"{subset}: {message}")


def build_graph_apart(config: GraphConfig, environment: Mapping[str, str]) -> tuple[str, ...]:
    """:func:`~mlcdf.graph.build.build_graph` in a child process whose environment is ``environment``
    (``CUDA_VISIBLE_DEVICES``: the GPU it may use): its CUDA context and memory end with it. Returns its
    warnings.

    Raises:
        MlcdfError: the build's own error, or the child ended without an answer (its output is above).
    """
    context = multiprocessing.get_context("spawn")  # a fork would copy this process's CUDA state
    answers, answer = context.Pipe(duplex=False)
    child = context.Process(target=_build_graph_child, args=(config, dict(environment), answer), daemon=True)
    child.start()
    answer.close()
    try:
        outcome = answers.recv()
    except EOFError:
        outcome = None
    except BaseException:  # stopped: the child goes too (the graph file is written atomically)
        child.terminate()
        child.join()
        raise
    child.join()
    if outcome is None:
        raise MlcdfError(f"{config.out}: the process building it ended (exit code {child.exitcode}) without a graph; see its output above")
    failed, value = outcome
    if failed:
        raise MlcdfError(value)
    return tuple(value)


def _build_graph_child(config: GraphConfig, environment: dict[str, str], answer: Any) -> None:
    os.environ.clear()
    os.environ.update(environment)  # before CUDA starts in this process: it reads CUDA_VISIBLE_DEVICES once
    try:
        answer.send((False, build_graph(config).warnings))
    except MlcdfError as error:
        answer.send((True, str(error)))
    except KeyboardInterrupt:
        pass  # a Ctrl-C reaches the whole terminal's group; the launcher stops the build


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
        handle.write(results_table(rows, fmt="md", paper=plan.paper, columns=plan.report_columns))
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
