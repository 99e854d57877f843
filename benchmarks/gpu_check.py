"""``make gpu-check``: the CUDA and distributed paths of mlcdf, run and measured in a few minutes; writes JSON.

    python benchmarks/gpu_check.py                     # all (estimated 4 to 6 minutes on one H100/H200; not yet run there)
    python benchmarks/gpu_check.py --checks fp16,ddp_sync_bn   # a subset
    python benchmarks/gpu_check.py --budget 300        # stop starting checks after 5 minutes

Checks, in this order (each reports ``ok``, ``failed`` with its one-line reason, or ``skipped`` with why;
one failing, or running past its own time limit, never loses the others' results):

- ``amp``: ResNet-50 training images/s at 224 px as ``mlcdf train`` runs it (bf16 or fp16, channels_last,
  cache + DataLoader + device augmentation, EMA, schedule), against a plain fp32 eager loop of the same
  model and batch on tensors already on the GPU; the ratio; peak memory.
- ``data_path``: the input pipeline alone (cache, DataLoader, augmentation and normalisation on the device)
  in images/s against the model's training rate; it must be at least twice as fast, or the GPU waits.
- ``fp16``: a run on the fp16 + GradScaler path that GPUs without native bf16 (V100, T4) take; the
  schedule advanced once per optimizer step that ran (the scaler skips steps with inf/NaN gradients).
- ``torchrun``: a one-process ``torchrun`` run (NCCL on CUDA) with EMA; its checkpoints load on the CPU with
  ``torch.load(weights_only=True)`` and hold only CPU tensors.
- ``ddp_sync_bn`` (2 GPUs): a 2-rank ``torchrun`` run with ``--sync-bn`` over NCCL; the validation mAP that
  chose ``best.pt`` is the one ``mlcdf evaluate --split val`` finds for it (validated = saved).
- ``reproduce_devices`` (2 GPUs): ``mlcdf reproduce --smoke --jobs 2 --devices 0,1`` (two runs); each run
  on its own GPU, from the ``CUDA_VISIBLE_DEVICES`` its process was given and, where ``nvidia-smi``
  lists the processes, from the GPU it used.
- ``reproduce_gpus_per_run`` (2 GPUs): ``mlcdf reproduce --smoke --gpus-per-run 2 --devices 0,1`` (one run
  through the runner's ``torchrun``): a 2-process run on both GPUs.
- ``compile``: ``amp``'s training with ``--compile``, against the eager figures (which a compile
  failure, such as a container without a working Triton toolchain, leaves in ``amp``).
- ``reproduce_smoke``: ``mlcdf reproduce --smoke --device cuda`` on one subset (every model family).

Without a GPU the checks that mean something on the CPU run small there (a tiny model at 32 px;
``compile`` only when named in ``--checks``, as compiling on a CPU takes minutes), the others say why
they were skipped, and the JSON is ``gpu_check-cpu.json``. docs/development.md says how to read the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from train_throughput import measure_training, synthetic_prepared  # benchmarks/ is this script's folder

from mlcdf.errors import first_line
from mlcdf.io import write_json
from mlcdf.train.checkpoint import load_checkpoint

CHECKS = (
    "amp",
    "data_path",
    "fp16",
    "torchrun",
    "ddp_sync_bn",
    "reproduce_devices",
    "reproduce_gpus_per_run",
    "compile",
    "reproduce_smoke",
)
#: Seconds each check may run on one H200 before it is stopped: a hung NCCL rendezvous or a compile that
#: never ends must not use up the device time of the checks after it.
TIME_LIMITS = {
    "amp": 150,
    "data_path": 60,
    "fp16": 120,
    "torchrun": 120,
    "ddp_sync_bn": 180,
    "reproduce_devices": 180,
    "reproduce_gpus_per_run": 150,
    "compile": 300,
    "reproduce_smoke": 240,
}
#: Default seconds for all the checks together (--budget): the device machines lend 15 minutes in all,
#: start-up included, and a rerun must fit.
BUDGET = 540
#: A check is not started with less time left than this; it is skipped, saying so.
MIN_START = 30
#: Seconds a stopped command has to end what it started (torchrun its ranks, reproduce its runs, each run
#: releasing its lock) before whatever is left of it is killed.
GRACE = 20
#: Seconds between two looks at nvidia-smi and at the runs' processes.
SAMPLE_EVERY = 0.25
#: (model, batch size, image size, steps per epoch) on a GPU and on the CPU.
SIZES = {"cuda": ("resnet50", 64, 224, 20), "cpu": ("timm:test_resnet", 16, 32, 4)}
#: The two-GPU DDP run: model (with BatchNorm, for --sync-bn), global batch, image size, epochs, and the
#: synthetic subset's train and val images.
DDP_RUN: dict[str, Any] = {"model": "resnet18", "batch_size": 64, "image_size": 64, "epochs": 2, "train": 512, "val": 128}
#: Largest gap (mAP as a fraction) between the validation that chose best.pt and `evaluate --split val` of it:
#: both run in bf16, at other batchings (cuDNN may pick other kernels), which moves near-tied scores; rows
#: read twice or missed, or each rank's own BatchNorm statistics, move it by far more.
VALIDATION_GAP = 0.005
#: Runs of the paper's smoke plan that the device checks launch: a direct model, and a graph model whose
#: image-embedding graph the launcher builds first.
DEVICE_RUNS = ("resnet50-bce", "iml_gcn-asl-image")
SMOKE_SUBSET = "facial_components"
#: The line of a failed command's output that says why: a Python error (as torchrun's ranks print it,
#: "[rank0]: RuntimeError: ..."), mlcdf's one-line "error: ...", or reproduce's "failed: RUN: reason".
#: torchrun's own ChildFailedError and the borders of its error box say nothing.
ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?(?:error: |failed: |FAILED: |(?!.*ChildFailedError)[\w.]*(?:Error|Exception): )")


class Skipped(Exception):
    """A check that cannot run here; the message says why."""


class TimeLimit(Exception):
    """A check ran past its time limit and was stopped."""


class CommandFailed(Exception):
    """A command exited with an error; the message is its one-line reason."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_fp32_loop(model_name: str, batch_size: int, image_size: int, steps: int, device: torch.device) -> float:
    """Images/s of the textbook loop: fp32, eager, NCHW, inputs already on the device, no EMA or schedule."""
    from mlcdf.models import create_model

    model = create_model(model_name, 5).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = torch.nn.BCEWithLogitsLoss()
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    y = (torch.rand(batch_size, 5, device=device) < 0.5).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()

    for _ in range(3):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def data_path_rate(prepared: Path, batch_size: int, image_size: int, device: torch.device, epochs: int = 2) -> float:
    """Images/s of the training input pipeline alone, as train() builds it (cache, loader, device augmentation)."""
    from mlcdf.config import TrainConfig
    from mlcdf.data.dataset import EpochSampler, to_model_input
    from mlcdf.data.prepared import load_prepared
    from mlcdf.progress import silent
    from mlcdf.tasks import create_task
    from mlcdf.train.distributed import DistInfo
    from mlcdf.train.stage import _build_data, _loader

    config = TrainConfig(prepared=str(prepared), model="resnet50", out="unused", image_size=image_size, val_fraction=0.05).resolve()
    data = _build_data(load_prepared(prepared), config, create_task(config), DistInfo(), silent)
    sampler = EpochSampler(len(data.train), shuffle=True)
    workers = min(4, os.cpu_count() or 1)
    loader = _loader(data.train, sampler, batch_size, workers, device, train=True)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images, start = 0, time.perf_counter()
    for epoch in range(epochs + 1):  # the first epoch starts the workers and is not counted
        sampler.set_epoch(epoch)
        if epoch == 1:
            synchronize(device)
            start = time.perf_counter()
        for batch in loader:
            x = to_model_input(batch, device, mean, std, channels_last=device.type == "cuda")
            images += x.shape[0] if epoch else 0
    synchronize(device)
    return images / (time.perf_counter() - start)


def check_cpu_checkpoint(path: Path) -> None:
    """A checkpoint must load without remapping on a machine without CUDA: only CPU tensors in it."""
    state = torch.load(path, weights_only=True)  # no map_location on purpose
    devices = set()

    def walk(value) -> None:
        if isinstance(value, torch.Tensor):
            devices.add(value.device.type)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(state)
    if devices != {"cpu"}:
        raise RuntimeError(f"{path.name} holds tensors on {sorted(devices)}")


def peak_memory_gib() -> float | None:
    """The most GPU memory this process's tensors took since the last reset, in GiB (None on the CPU)."""
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def peak_text(gib: float | None) -> str:
    return f"; peak {gib} GiB" if gib is not None else ""


# ----------------------------------------------------------------------------- reasons, limits, processes


def one_line_cause(error: BaseException) -> str:
    """The innermost cause of ``error``, in one line.

    torch.compile wraps the real failure ("Cannot find a working triton installation") in errors whose
    first line names only the backend that raised it.
    """
    while True:
        inner = error.__cause__ or getattr(error, "inner_exception", None)
        if not isinstance(inner, BaseException) or inner is error:
            break
        error = inner
    return f"{type(error).__name__}: {first_line(error)}"


def error_line(output: str) -> str:
    """The line of a failed command's output that says why (see :data:`ERROR_LINE`); else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip(" =-─\t")]
    named = [line for line in lines if ERROR_LINE.match(line)]
    return (named or lines or ["no output"])[-1][:400]


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeLimit` in this (the main) thread after ``seconds``, wherever the check is then."""

    def expire(signum, frame) -> None:
        raise TimeLimit(f"stopped after its time limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a process, from /proc; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count the fields after the last ')'.
    fields = text.rpartition(")")[2].split()
    return int(fields[1]), int(fields[19])


def process_table() -> tuple[dict[int, list[int]], dict[int, int]]:
    """Every process's children and start time, from /proc (empty without it)."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            started[int(entry.name)] = stat[1]
    return children, started


def process_tree(root: int, table: tuple[dict[int, list[int]], dict[int, int]] | None = None) -> dict[int, int]:
    """``root`` and every process below it, each with its start time (empty once it ended)."""
    children, started = table or process_table()
    tree: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in started and pid not in tree:
            tree[pid] = started[pid]
            todo.extend(children.get(pid, ()))
    return tree


def stop_tree(process: subprocess.Popen, stop_signal: int) -> None:
    """Stop a command and all it started: ``stop_signal`` first (torchrun ends its ranks on SIGTERM;
    reproduce its runs on SIGINT, like a Ctrl-C), then SIGKILL for what is left after :data:`GRACE` seconds.

    torchrun starts each rank in its own session, so a signal to the command's process group would miss
    them; the processes are found from /proc instead, and one is killed only if it is still the process
    seen (same start time: its number was not reused meanwhile).
    """
    tree = process_tree(process.pid)
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(stop_signal)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(GRACE)
    tree.update(process_tree(process.pid))
    for pid, started in tree.items():
        stat = _proc_stat(pid)
        if stat is not None and stat[1] == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    process.wait()


def nvidia_smi(query: str, kind: str = "gpu") -> list[list[str]] | None:
    """Rows of ``nvidia-smi --query-KIND=QUERY`` (values only); None without nvidia-smi or when it fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-{kind}={query}", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    width = len(query.split(","))
    rows = [[value.strip() for value in line.split(",")] for line in done.stdout.splitlines()]
    return [row for row in rows if len(row) == width]


def visible_devices(pid: int) -> str | None:
    """The CUDA_VISIBLE_DEVICES a process was started with ("all" when unset); None when unreadable."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(b"CUDA_VISIBLE_DEVICES="):
            return item.partition(b"=")[2].decode()
    return "all"


class GpuMonitor:
    """Follows process trees while a command runs (a thread samples every :data:`SAMPLE_EVERY` s).

    ``groups()`` names the trees' roots, e.g. the process of each run training now, or torchrun. For each
    tree it records the CUDA_VISIBLE_DEVICES its root was given and the GPUs (nvidia-smi indices) on which
    nvidia-smi listed one of its processes; for each GPU the most memory used (MiB).
    """

    def __init__(self, groups: Callable[[], dict[str, int]]) -> None:
        self.groups = groups
        self.index_of = {uuid: index for index, uuid in nvidia_smi("index,uuid") or []}
        self.visible: dict[str, str | None] = {}
        self.gpus: dict[str, set[str]] = {}
        self.memory_mib: dict[str, int] = {}
        self.listed_any = False  # nvidia-smi listed a process of a followed tree (not so in a PID namespace of its own)
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as error:  # noqa: BLE001  (reported with the check's result; the command goes on)
                self.error = one_line_cause(error)
            self._stop.wait(SAMPLE_EVERY)

    def sample(self) -> None:
        on_gpu: dict[int, set[str]] = {}
        for pid, uuid in nvidia_smi("pid,gpu_uuid", "compute-apps") or []:
            if pid.isdigit():
                on_gpu.setdefault(int(pid), set()).add(self.index_of.get(uuid, uuid))
        for index, used in nvidia_smi("index,memory.used") or []:
            if used.isdigit():
                self.memory_mib[index] = max(self.memory_mib.get(index, 0), int(used))
        table = process_table()
        for name, root in self.groups().items():
            if self.visible.get(name) is None:
                self.visible[name] = visible_devices(root)
            seen = self.gpus.setdefault(name, set())
            for process in process_tree(root, table):
                if process in on_gpu:
                    seen |= on_gpu[process]
                    self.listed_any = True

    def physical(self, visible: str | None) -> list[str]:
        """The nvidia-smi indices of a CUDA_VISIBLE_DEVICES value (numbers, or GPU-... UUIDs)."""
        if visible is None or visible == "all":
            return []
        return [self.index_of.get(item, item) for item in visible.split(",") if item]


def gpu_assignment(monitor: GpuMonitor, runs: list[str], gpus_per_run: int) -> dict:
    """Which GPUs each run was given and used; raises when a run shared a GPU, used another one than it was
    given, or was never seen running."""
    problems, taken, per_run = [], [], {}
    for run in runs:
        if run not in monitor.visible:
            problems.append(f"{run} was never seen running")
            continue
        given = monitor.physical(monitor.visible[run])
        used = sorted(monitor.gpus.get(run, ()))
        per_run[run] = {"CUDA_VISIBLE_DEVICES": monitor.visible[run], "gpus_given": given, "gpus_seen_by_nvidia_smi": used}
        if len(given) != gpus_per_run:
            problems.append(f"{run} was given CUDA_VISIBLE_DEVICES={monitor.visible[run]!r}, not {gpus_per_run} GPU(s)")
        if set(used) - set(given):
            problems.append(f"{run} was given GPU(s) {','.join(given)} but nvidia-smi saw it on {','.join(used)}")
        taken += given
    if len(taken) != len(set(taken)):
        problems.append(f"runs shared a GPU: {json.dumps({run: seen['gpus_given'] for run, seen in per_run.items()})}")
    if problems:
        raise RuntimeError("; ".join(problems))
    evidence = (
        "CUDA_VISIBLE_DEVICES of each run's process, and nvidia-smi's list of processes per GPU"
        if monitor.listed_any
        else "CUDA_VISIBLE_DEVICES of each run's process only: nvidia-smi listed none of the runs' processes "
        "(absent, or the container has its own PID namespace); see the memory used per GPU"
    )
    return {"runs": per_run, "evidence": evidence, "gpu_memory_used_mib_max": monitor.memory_mib, "monitor_error": monitor.error}


def run_command(
    command: list[str],
    log: Path,
    *,
    stop_signal: int = signal.SIGTERM,
    env: dict[str, str] | None = None,
    watch: Callable[[int], dict[str, int]] | None = None,
) -> GpuMonitor | None:
    """Run ``command`` with its output in ``log``; the :class:`GpuMonitor` of ``watch(pid)`` when given.

    Stopped with all it started (:func:`stop_tree`) when the check's time runs out.

    Raises:
        CommandFailed: it exited with an error; the message is the line of its output that says why.
    """
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    with open(log, "w", encoding="utf-8") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    monitor = GpuMonitor(lambda: watch(process.pid)) if watch is not None else None
    try:
        with monitor if monitor is not None else contextlib.nullcontext():
            process.wait()
    finally:
        if process.returncode is None:
            stop_tree(process, stop_signal)
    if process.returncode != 0:
        name = " ".join(command[2:4]) if command[:2] == [sys.executable, "-m"] else command[0]
        raise CommandFailed(f"{name} exited with {process.returncode}: {error_line(log.read_text(errors='replace'))}")
    return monitor


def run_workers(out: Path) -> dict[str, int]:
    """The process of each run training now in a plan's ``OUT``, from its lock (``OUT/runs/SUBSET/RUN.lock``,
    whose ``pid`` is the process that trains and evaluates it)."""
    found = {}
    for lock in (out / "runs").glob("*/*.lock"):
        if lock.name.startswith("."):
            continue
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # being written, or gone
            holder = json.loads(lock.read_text())
            if not holder.get("queued"):  # a Slurm launcher's claim names the launcher, not the run's process
                found[f"{lock.parent.name}/{lock.stem}"] = int(holder["pid"])
    return found


def need_gpus(count: int, cpu_note: str = "") -> None:
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < count:
        raise Skipped(f"needs {count} GPUs ({found} found){cpu_note if not found else ''}")


# ------------------------------------------------------------------------------------------- commands


def mlcdf_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlcdf", *args]


def ddp_command(prepared: Path, run: Path) -> list[str]:
    """The 2-rank ``--sync-bn`` run of ``ddp_sync_bn``: torchrun, NCCL (one GPU per rank)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mlcdf",
        "train",
        "--prepared",
        str(prepared),
        "--model",
        DDP_RUN["model"],
        "--out",
        str(run),
        "--epochs",
        str(DDP_RUN["epochs"]),
        "--batch-size",
        str(DDP_RUN["batch_size"]),
        "--image-size",
        str(DDP_RUN["image_size"]),
        "--device",
        "cuda",
        "--sync-bn",
        "--ema-decay",
        "0.99",
        "--patience",
        "0",
        "--quiet",
    ]


def reproduce_command(out: Path, *device_options: str) -> list[str]:
    """``mlcdf reproduce --smoke`` of :data:`DEVICE_RUNS` (or its first only, with ``--gpus-per-run``)."""
    runs = DEVICE_RUNS[:1] if "--gpus-per-run" in device_options else DEVICE_RUNS
    only = [option for run in runs for option in ("--only", run)]
    return mlcdf_command("reproduce", "--smoke", "--subset", SMOKE_SUBSET, *only, *device_options, "--out", str(out), "--quiet")


# ---------------------------------------------------------------------------------------------- checks


def run_checks(wanted: list[str], budget: float, compile_on_cpu: bool) -> dict[str, dict]:
    """Each check's result: ``status`` (ok, failed, skipped), ``summary`` (one line), ``seconds``, figures."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model, batch_size, image_size, steps = SIZES[device.type]
    results: dict[str, dict] = {}
    state: dict = {}
    deadline = time.monotonic() + budget

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)

        def prepared() -> Path:
            if "prepared" not in state:
                state["prepared"] = synthetic_prepared(tmp / "data", steps * batch_size, image_size)
            return state["prepared"]

        def eager_training() -> dict:
            """``mlcdf train`` measured once, eager; the checks after the first that asks reuse it."""
            if "train" not in state:
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                try:
                    state["train"] = measure_training(
                        prepared(), tmp / "run-amp", model=model, batch_size=batch_size, image_size=image_size, device=device.type
                    )
                except Exception as error:
                    state["train"] = error
                    raise
                state["train"]["peak_memory_gib"] = peak_memory_gib()
            elif isinstance(state["train"], Exception):
                raise Skipped(f"needs the eager training figures, which failed: {one_line_cause(state['train'])}")
            return state["train"]

        def amp() -> dict:
            eager = eager_training()
            plain = plain_fp32_loop(model, batch_size, image_size, steps, device)
            speedup = eager["images_per_s"] / plain
            return {
                "summary": f"{eager['images_per_s']:.0f} images/s ({eager['autocast'] or 'fp32'}), plain fp32 eager {plain:.0f}: "
                f"x{speedup:.2f}{peak_text(eager['peak_memory_gib'])}",
                "mlcdf_train": eager,
                "plain_fp32_eager_images_per_s": plain,
                "speedup_vs_plain_fp32": speedup,
            }

        def data_path() -> dict:
            training = eager_training()["images_per_s"]
            rate = data_path_rate(prepared(), batch_size, image_size, device)
            result = {"data_images_per_s": rate, "training_images_per_s": training, "ratio": rate / training}
            if cuda and rate < 2 * training:
                raise RuntimeError(
                    f"the input pipeline feeds {rate:.0f} images/s, under twice the training rate ({training:.0f}): the GPU waits"
                )
            return {"summary": f"{rate:.0f} images/s, x{rate / training:.1f} the training rate", **result}

        def fp16() -> dict:
            if not cuda:
                raise Skipped("fp16 with a GradScaler is the CUDA path of GPUs without native bf16")
            torch.cuda.reset_peak_memory_stats()
            # As on a V100 or T4: the GPU says it has no native bf16, so mlcdf picks fp16 + GradScaler.
            with mock.patch.object(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False):
                result = measure_training(
                    prepared(), tmp / "run-fp16", model=model, batch_size=batch_size, image_size=image_size, device="cuda"
                )
            if result["autocast"] != "float16":
                raise RuntimeError(f"expected the fp16 path, got autocast {result['autocast']}")
            last = load_checkpoint(tmp / "run-fp16" / "checkpoints" / "last.pt")
            if not last.get("scaler"):
                raise RuntimeError("the fp16 run saved no GradScaler state")
            # The schedule advances once per optimizer step that ran; steps the scaler skipped do not count.
            optimizer_steps = max(int(param["step"]) for param in last["optimizer"]["state"].values())
            schedule_steps = int(last["scheduler"]["last_epoch"])
            if schedule_steps != optimizer_steps:
                raise RuntimeError(f"the schedule took {schedule_steps} steps for {optimizer_steps} optimizer steps")
            peak = peak_memory_gib()
            return {
                "summary": f"{result['images_per_s']:.0f} images/s (fp16 + GradScaler), schedule and optimizer both at "
                f"{optimizer_steps} steps{peak_text(peak)}",
                **result,
                "optimizer_steps": optimizer_steps,
                "peak_memory_gib": peak,
            }

        def torchrun() -> dict:
            run = tmp / "run-torchrun"
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=1",
                "-m",
                "mlcdf",
                "train",
                "--prepared",
                str(prepared()),
                "--model",
                "resnet18" if cuda else "timm:test_resnet",
                "--out",
                str(run),
                "--epochs",
                "1",
                "--batch-size",
                str(batch_size),
                "--image-size",
                str(image_size),
                "--device",
                device.type,
                "--ema-decay",
                "0.99",
                "--patience",
                "0",
                "--quiet",
            ]
            run_command(command, tmp / "torchrun.log")
            config = json.loads((run / "config.json").read_text())
            last = load_checkpoint(run / "checkpoints" / "last.pt")
            if config["world_size"] != 1 or not last.get("ema"):
                raise RuntimeError(f"expected a 1-process run with EMA, got world_size {config['world_size']}, ema {bool(last.get('ema'))}")
            for name in ("last.pt", "best.pt"):
                check_cpu_checkpoint(run / "checkpoints" / name)
            backend = "nccl" if cuda else "gloo"
            return {"summary": f"1 process over {backend}, EMA, CPU-only checkpoints", "backend": backend, "device": config["device"]}

        def ddp_sync_bn() -> dict:
            need_gpus(2, "; on the CPU tests/test_train.py checks DDP over gloo (a slow test)")
            data, run = tmp / "ddp-data", tmp / "ddp-run"
            sizes = ("--train", str(DDP_RUN["train"]), "--val", str(DDP_RUN["val"]), "--test", "16", "--size", str(DDP_RUN["image_size"]))
            run_command(
                mlcdf_command("synth", "--out", str(data / "root"), "--subset", SMOKE_SUBSET, *sizes, "--format", "jpg", "--quiet"),
                tmp / "ddp-synth.log",
            )
            run_command(
                mlcdf_command(
                    "prepare", "--root", str(data / "root"), "--out", str(data / "prepared"), "--subset", SMOKE_SUBSET, "--quiet"
                ),
                tmp / "ddp-prepare.log",
            )
            log = tmp / "ddp.log"
            # NCCL_DEBUG=VERSION: NCCL prints its version when a communicator starts, the proof it was used.
            monitor = run_command(
                ddp_command(data / "prepared" / SMOKE_SUBSET, run), log, env={"NCCL_DEBUG": "VERSION"}, watch=lambda pid: {"ranks": pid}
            )
            config = json.loads((run / "config.json").read_text())
            if config["world_size"] != 2 or not config["train"]["sync_bn"]:
                raise RuntimeError(
                    f"expected 2 processes with --sync-bn, got world_size {config['world_size']}, sync_bn {config['train']['sync_bn']}"
                )
            nccl = re.search(r"NCCL version \S+", log.read_text(errors="replace"))
            if nccl is None:
                raise RuntimeError("no 'NCCL version' line in the output although NCCL_DEBUG=VERSION: was NCCL used?")
            for name in ("last.pt", "best.pt"):
                check_cpu_checkpoint(run / "checkpoints" / name)
            best = load_checkpoint(run / "checkpoints" / "best.pt")
            evaluate = ("evaluate", "--run", str(run), "--split", "val", "--checkpoint", "best", "--device", "cuda")
            run_command(mlcdf_command(*evaluate, "--batch-size", str(DDP_RUN["batch_size"] // 2), "--quiet"), tmp / "ddp-evaluate.log")
            evaluated = json.loads((run / "eval" / "val" / "metrics.json").read_text())["mAP"] / 100
            gap = abs(evaluated - best["val_mAP"])
            if gap > VALIDATION_GAP:
                raise RuntimeError(f"best.pt was chosen at val mAP {best['val_mAP']:.4f}, but evaluate --split val finds {evaluated:.4f}")
            assert monitor is not None
            gpus = sorted(monitor.gpus.get("ranks", ()))
            if monitor.listed_any and len(gpus) != 2:
                raise RuntimeError(f"nvidia-smi saw the 2 ranks on GPU(s) {','.join(gpus)}")
            return {
                "summary": f"2 ranks, --sync-bn, {nccl.group(0)}; val mAP {best['val_mAP']:.4f} saved, {evaluated:.4f} evaluated",
                "nccl": nccl.group(0),
                "val_mAP_saved": best["val_mAP"],
                "val_mAP_evaluated": evaluated,
                "gap": gap,
                "gpus_seen_by_nvidia_smi": gpus,
                "gpu_memory_used_mib_max": monitor.memory_mib,
            }

        def reproduce_on_devices(name: str, gpus_per_run: int, *device_options: str) -> dict:
            need_gpus(2)
            out = tmp / name
            monitor = run_command(
                reproduce_command(out, *device_options), tmp / f"{name}.log", stop_signal=signal.SIGINT, watch=lambda pid: run_workers(out)
            )
            runs = [f"{SMOKE_SUBSET}/{run}" for run in (DEVICE_RUNS[:1] if gpus_per_run > 1 else DEVICE_RUNS)]
            for run in runs:
                config = json.loads((out / "runs" / run / "config.json").read_text())
                if not config["device"].startswith("cuda") or config["world_size"] != gpus_per_run:
                    raise RuntimeError(f"{run} trained on {config['device']} with world_size {config['world_size']}")
                if not (out / "runs" / run / "eval" / "test" / "metrics.json").is_file():
                    raise RuntimeError(f"{run} was not evaluated")
            assert monitor is not None
            assignment = gpu_assignment(monitor, runs, gpus_per_run)
            given = ", ".join(f"{run.rpartition('/')[2]} on GPU {','.join(seen['gpus_given'])}" for run, seen in assignment["runs"].items())
            return {"summary": f"{given} ({'nvidia-smi agrees' if monitor.listed_any else 'nvidia-smi saw no run'})", **assignment}

        def reproduce_devices() -> dict:
            return reproduce_on_devices("reproduce_devices", 1, "--jobs", "2", "--devices", "0,1")

        def reproduce_gpus_per_run() -> dict:
            return reproduce_on_devices("reproduce_gpus_per_run", 2, "--gpus-per-run", "2", "--devices", "0,1")

        def torch_compile() -> dict:
            if not cuda and not compile_on_cpu:
                raise Skipped("on the CPU compiling takes minutes and says nothing about a GPU (name it in --checks to run it)")
            eager = eager_training()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            compiled = measure_training(
                prepared(), tmp / "run-compile", model=model, batch_size=batch_size, image_size=image_size, device=device.type, compile=True
            )
            compiled["peak_memory_gib"] = peak_memory_gib()
            speedup = compiled["images_per_s"] / eager["images_per_s"]
            return {
                "summary": f"{compiled['images_per_s']:.0f} images/s compiled, {eager['images_per_s']:.0f} eager: x{speedup:.2f}"
                f"{peak_text(compiled['peak_memory_gib'])}",
                "mlcdf_train_compile": compiled,
                "speedup_vs_eager": speedup,
            }

        def reproduce_smoke() -> dict:
            if not cuda:
                raise Skipped("on the CPU tests/test_reproduce.py runs the smoke reproduction (a slow test)")
            out = tmp / "reproduce"
            command = mlcdf_command("reproduce", "--smoke", "--subset", SMOKE_SUBSET, "--device", "cuda", "--out", str(out), "--quiet")
            run_command(command, tmp / "reproduce.log", stop_signal=signal.SIGINT)
            runs = len(list((out / "runs" / SMOKE_SUBSET).glob("*/eval/test/metrics.json")))
            return {"summary": f"{runs} runs trained and evaluated on one GPU", "runs_evaluated": runs}

        functions = {
            "amp": amp,
            "data_path": data_path,
            "fp16": fp16,
            "torchrun": torchrun,
            "ddp_sync_bn": ddp_sync_bn,
            "reproduce_devices": reproduce_devices,
            "reproduce_gpus_per_run": reproduce_gpus_per_run,
            "compile": torch_compile,
            "reproduce_smoke": reproduce_smoke,
        }
        for name in wanted:
            left = deadline - time.monotonic()
            start = time.perf_counter()
            try:
                if left < MIN_START:
                    raise Skipped(f"the time budget ({budget:.0f} s) was spent; run it alone with --checks {name}")
                with time_limit(min(TIME_LIMITS[name], left)):
                    results[name] = {"status": "ok", **functions[name]()}
            except Skipped as reason:
                results[name] = {"status": "skipped", "summary": str(reason)}
            except Exception as error:  # noqa: BLE001  (a failed check is reported, and the others still run)
                results[name] = {"status": "failed", "summary": one_line_cause(error), "traceback": traceback.format_exc()[-3000:]}
            results[name]["seconds"] = round(time.perf_counter() - start, 1)
            if cuda:  # what this process's checks cached on GPU 0 is free for the runs of the next
                gc.collect()
                torch.cuda.empty_cache()
            print(f"{name}: {results[name]['status']} ({results[name]['seconds']} s) {results[name]['summary']}", flush=True)
    return results


def figures(results: dict[str, dict]) -> dict:
    """The numbers a reader looks for first, gathered from the checks that measured them."""

    def pick(check: str, *keys: str):
        value = results.get(check, {})
        for key in keys:
            value = value.get(key, {}) if isinstance(value, dict) else {}
        return value if value != {} else None

    return {
        "images_per_s": {
            "plain_fp32_eager": pick("amp", "plain_fp32_eager_images_per_s"),
            "mlcdf_train_eager": pick("amp", "mlcdf_train", "images_per_s"),
            "mlcdf_train_compiled": pick("compile", "mlcdf_train_compile", "images_per_s"),
            "mlcdf_train_fp16": pick("fp16", "images_per_s"),
            "input_pipeline": pick("data_path", "data_images_per_s"),
        },
        "autocast": pick("amp", "mlcdf_train", "autocast"),
        "peak_memory_gib": {
            "eager": pick("amp", "mlcdf_train", "peak_memory_gib"),
            "compiled": pick("compile", "mlcdf_train_compile", "peak_memory_gib"),
            "fp16": pick("fp16", "peak_memory_gib"),
        },
    }


def nccl_version() -> str:
    version = torch.cuda.nccl.version()  # a tuple; an int in older releases
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def environment() -> dict:
    cuda = torch.cuda.is_available()
    try:
        triton: str | None = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton = None
    return {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or 'unknown'})",
        "gpus": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": nccl_version() if cuda else None,
        "triton": triton,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", default=None, help=f"comma-separated subset of {', '.join(CHECKS)} (default: all)")
    parser.add_argument("--budget", type=float, default=BUDGET, help=f"seconds for all checks; later ones are skipped (default: {BUDGET})")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/gpu_check[-cpu].json)")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in (args.checks or ",".join(CHECKS)).split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(CHECKS))
    if unknown:
        parser.error(f"unknown check(s) {unknown}; expected some of {', '.join(CHECKS)}")
    if not 0 < args.budget <= 3600:
        parser.error("--budget must be between 0 and 3600 seconds")
    cuda = torch.cuda.is_available()
    out = args.out or Path(f"benchmarks/results/gpu_check{'' if cuda else '-cpu'}.json")
    start = time.perf_counter()
    results = run_checks(wanted, args.budget, compile_on_cpu=args.checks is not None)
    report = {
        "benchmark": "gpu_check",
        **environment(),
        "seconds": round(time.perf_counter() - start, 1),
        "summary": {name: f"{result['status']}: {result['summary']}" for name, result in results.items()},
        "figures": figures(results),
        "sizes": dict(zip(("model", "batch_size", "image_size", "steps"), SIZES["cuda" if cuda else "cpu"])),
        "checks": results,
    }
    write_json(out, report)
    print(f"\ngpu_check on {report['device']} ({report['gpus']} GPUs), {report['seconds']:.0f} s; details in {out}")
    for name, result in results.items():
        print(f"  {result['status']:<8} {name:<23} {result['summary']}")
    return 1 if any(result["status"] == "failed" for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
