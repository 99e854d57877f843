"""The GPU and distributed code paths, checked on the CPU where the logic allows (issue 14).

What only a GPU can show (speed, NCCL, fp16 on a real device) is checked by ``make gpu-check``.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("native", "expected"), [(True, (torch.bfloat16, False)), (False, (torch.float16, True))])
def test_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, native, expected):
    from mlcdf.train.stage import mixed_precision

    # A V100 or T4 reports bf16 only when emulation counts; there fp16 with a grad scaler is the fast choice.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native)
    assert mixed_precision(torch.device("cuda"), None) == expected
    assert mixed_precision(torch.device("cpu"), None) == (None, False)
    assert mixed_precision(torch.device("cuda"), False) == (None, False)


def tiny_graph(num_labels: int = 5, dim: int = 8):
    import numpy as np

    from mlcdf.models import GraphTensors

    rng = np.random.default_rng(0)
    adjacency = rng.random((num_labels, num_labels)).astype(np.float32) + np.eye(num_labels, dtype=np.float32)
    return GraphTensors(adjacency / adjacency.sum(1, keepdims=True), rng.standard_normal((num_labels, dim)))


@pytest.mark.parametrize("name", ["timm:test_resnet", "ml_gcn"])
def test_scores_under_autocast_come_from_a_float32_head(name):
    from mlcdf.models import create_model
    from mlcdf.tasks import MultiLabelTask
    from mlcdf.train.engine import predict

    torch.manual_seed(0)
    model = create_model(
        name, 5, graph=tiny_graph() if name == "ml_gcn" else None, **({"backbone": "test_resnet"} if name == "ml_gcn" else {})
    ).eval()
    images = torch.randn(96, 3, 32, 32)
    batches = [{"x": images[i : i + 32], "targets": torch.zeros(32, 5), "indices": torch.arange(i, i + 32)} for i in range(0, 96, 32)]
    scores, _, _ = predict(
        model,
        batches,
        torch.device("cpu"),
        to_scores=MultiLabelTask().scores,
        prepare_input=lambda batch: batch["x"],
        autocast_dtype=torch.bfloat16,
    )
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = model.forward_features(images)
        assert features.dtype == torch.bfloat16  # the backbone did run in bf16
        expected = torch.sigmoid(model.forward_head(features.float())).double().numpy()
    assert (scores == expected).all()
    # bf16 logits leave 30 to 90 distinct scores of 96 per label here (ties that move the mAP); float32 ones
    # are distinct but for a rare coincidence.
    assert all(len(set(scores[:, j])) >= len(images) - 1 for j in range(5)), [len(set(scores[:, j])) for j in range(5)]


def test_a_cuda_device_becomes_the_current_one(monkeypatch):
    from mlcdf.devices import resolve_device

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert current == [torch.device("cuda", 1), torch.device("cuda", 3)]
    assert resolve_device("cpu") == torch.device("cpu") and len(current) == 2


def test_the_schedule_does_not_advance_when_the_grad_scaler_skips_a_step():
    from mlcdf.train.engine import train_one_epoch

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    # A scale near float32's limit overflows the first gradients: the scaler skips those steps and halves
    # its scale until the gradients are finite again.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    # get_scale() waits for the GPU; the skipped steps are learnt without it (one sync per step, the scaler's own).
    scaler.get_scale = lambda: pytest.fail("get_scale() synchronises with the GPU")
    batches = [{"x": 100 * torch.randn(8, 4), "targets": (torch.rand(8, 5) < 0.5).float()} for _ in range(10)]
    train_one_epoch(
        model,
        torch.nn.BCEWithLogitsLoss(),
        optimizer,
        batches,
        torch.device("cpu"),
        0,
        prepare_input=lambda batch: batch["x"],
        scheduler=scheduler,
        scaler=scaler,
    )
    optimizer_steps = int(optimizer.state[model.weight]["step"])
    assert 0 < optimizer_steps < len(batches)
    assert scheduler.last_epoch == optimizer_steps


def _two_ranks(rank: int, port: int, out: str) -> None:
    """One rank of test_collectives_over_two_gloo_processes; writes what it saw to ``out/<rank>.json``."""
    import datetime
    import json
    import os

    import torch.distributed as dist

    from mlcdf.tasks import MultiLabelTask
    from mlcdf.train.distributed import broadcast_buffers
    from mlcdf.train.engine import NonFiniteLossError, predict, train_one_epoch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    seen = {}
    cpu = torch.device("cpu")
    # A rank without validation rows (fewer rows than ranks) still gathers the others' rows.
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 5)
    images = torch.randn(3, 4)
    batches = [{"x": images, "targets": torch.ones(3, 5), "indices": torch.arange(3)}] if rank == 0 else []
    scores, targets, indices = predict(model, batches, cpu, to_scores=MultiLabelTask().scores, prepare_input=lambda batch: batch["x"])
    seen["predict"] = {"scores": scores.tolist(), "targets": targets.tolist(), "indices": indices.tolist()}
    seen["expected_scores"] = torch.sigmoid(model(images)).double().tolist()

    # The logged loss is the mean over ranks, and a non-finite loss on one rank stops both.
    def constant_loss(value: float):
        return lambda logits, y: logits.sum() * 0 + value

    class NoStep:  # a torch.optim optimizer would import torch._dynamo, seconds per process; unneeded here
        param_groups = [{"lr": 0.0}]

        def zero_grad(self, set_to_none: bool = True) -> None:
            pass

        def step(self) -> None:
            pass

    batch = {"x": torch.randn(2, 4), "targets": torch.zeros(2, 5)}
    optimizer = NoStep()
    stats = train_one_epoch(model, constant_loss(1.0 + rank), optimizer, [batch] * 3, cpu, 0, prepare_input=lambda b: b["x"])
    seen["loss"] = stats.loss
    try:
        poisoned = constant_loss(float("nan") if rank == 1 else 1.0)
        train_one_epoch(model, poisoned, optimizer, [batch] * 3, cpu, 4, prepare_input=lambda b: b["x"])
        seen["stopped"] = None
    except NonFiniteLossError as error:
        seen["stopped"] = str(error)

    # Every rank validates with rank 0's BatchNorm statistics (the ones saved).
    norm = torch.nn.BatchNorm1d(3)
    norm.running_mean.fill_(rank + 1.0)
    broadcast_buffers(norm)
    seen["running_mean"] = norm.running_mean.tolist()
    dist.destroy_process_group()
    with open(os.path.join(out, f"{rank}.json"), "w") as handle:
        json.dump(seen, handle)


def test_collectives_over_two_gloo_processes(tmp_path):
    import json
    import socket

    import numpy as np
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_two_ranks, args=(port, str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    for seen in ranks:
        assert seen["predict"]["indices"] == [0, 1, 2] and seen["predict"]["targets"] == [[1.0] * 5] * 3
        np.testing.assert_allclose(seen["predict"]["scores"], ranks[0]["expected_scores"], rtol=1e-6)
        assert seen["loss"] == pytest.approx(1.5)
        assert seen["stopped"] is not None and "loss became nan at epoch 5, step 3" in seen["stopped"]
        assert seen["running_mean"] == [1.0, 1.0, 1.0]


def test_sync_batchnorm_keeps_the_activation_of_batchnorm_act_layers():
    from timm.layers import BatchNormAct2d

    from mlcdf.errors import MlcdfError
    from mlcdf.models import create_model
    from mlcdf.train.stage import sync_batchnorm

    torch.manual_seed(0)
    model = create_model("timm:test_efficientnet", 5).eval()  # BatchNormAct2d layers, as in TResNet
    assert any(isinstance(module, BatchNormAct2d) for module in model.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        converted = sync_batchnorm(model, torch.device("cuda")).eval()  # converting needs no GPU
        assert any(isinstance(module, torch.nn.SyncBatchNorm) for module in converted.modules())
        torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)
    with pytest.raises(MlcdfError, match="--sync-bn needs CUDA"):
        sync_batchnorm(model, torch.device("cpu"))


def test_caches_are_built_once_under_a_lock_before_the_process_group(tmp_path, monkeypatch):
    import threading

    from toy import write_toy_prepared

    import mlcdf.data.dataset as dataset
    import mlcdf.train.stage as training
    from mlcdf.data.dataset import cache_path
    from mlcdf.data.prepared import load_prepared
    from mlcdf.progress import silent
    from mlcdf.tasks import create_task
    from mlcdf.train.distributed import DistInfo

    prepared = load_prepared(write_toy_prepared(tmp_path, {"train": 12, "val": 4}))
    config = training.TrainConfig(
        prepared=str(prepared.path), model="timm:test_resnet", out=str(tmp_path / "run"), image_size=16, workers=1
    ).resolve()
    decoded = []
    real_load = dataset.load_rgb
    monkeypatch.setattr(dataset, "load_rgb", lambda path, size: decoded.append(path) or real_load(path, size))
    # Two processes of one run (here: threads) start together; the second waits for the first's cache.
    threads = [
        threading.Thread(target=training._build_data, args=(prepared, config, create_task(config), DistInfo(rank, 2), silent))
        for rank in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(decoded) == 16  # each image once
    # train() builds them before it joins the process group (whose collectives time out).
    order = []
    monkeypatch.setattr(training, "_build_data", lambda *args: order.append("caches") or (_ for _ in ()).throw(KeyboardInterrupt))
    monkeypatch.setattr(training, "init_distributed", lambda device_type: order.append("process group"))
    with pytest.raises(KeyboardInterrupt):
        training.train(config)
    assert order == ["caches"]
    assert cache_path(prepared, "train", 16).is_file()


@pytest.mark.parametrize("name", ["ml_gcn", "iml_gcn", "ml_agcn"])
def test_graph_models_over_a_backbone_with_head_parameters_use_every_parameter(name):
    # DDP stops ("Expected to have finished reduction in the prior iteration") on a parameter without a
    # gradient; ConvNeXt's head holds a norm that the graph head must go through.
    from mlcdf.models import create_model

    torch.manual_seed(0)
    model = create_model(name, 5, graph=tiny_graph(), backbone="convnext_atto")
    assert any(name.startswith("backbone.head.norm") for name, _ in model.named_parameters())
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.fixture
def gpu_check(monkeypatch):
    """benchmarks/gpu_check.py as a module (benchmarks/ is not a package: the script imports its neighbours)."""
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    return importlib.import_module("gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU report; on a GPU run make gpu-check")
def test_gpu_check_on_the_cpu_skips_what_needs_a_gpu_and_exits_0(gpu_check, tmp_path):
    import json

    out = tmp_path / "check.json"
    two_gpus = ["ddp_sync_bn", "reproduce_devices", "reproduce_gpus_per_run"]
    assert gpu_check.main(["--checks", ",".join(["fp16", *two_gpus, "reproduce_smoke"]), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "gpu_check" and report["device"].startswith("cpu") and report["gpus"] == 0
    assert [check["status"] for check in report["checks"].values()] == ["skipped"] * 5
    for name in two_gpus:
        assert report["summary"][name].startswith("skipped: needs 2 GPUs (0 found)")
    assert report["summary"]["fp16"] == "skipped: fp16 with a GradScaler is the CUDA path of GPUs without native bf16"
    assert report["figures"]["images_per_s"] == dict.fromkeys(
        ("plain_fp32_eager", "mlcdf_train_eager", "mlcdf_train_compiled", "mlcdf_train_fp16", "input_pipeline")
    )
    # Compiling on the CPU takes minutes: only when asked for by name.
    (compile_result,) = gpu_check.run_checks(["compile"], 60, compile_on_cpu=False).values()
    assert compile_result["status"] == "skipped" and "name it in --checks" in compile_result["summary"]
    # A check that would start after the budget is spent is skipped, saying so.
    assert gpu_check.main(["--checks", "fp16", "--budget", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["summary"]["fp16"].startswith("skipped: the time budget (1 s) was spent")
    with pytest.raises(SystemExit):
        gpu_check.main(["--checks", "amp,warp-drive"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU sizes; on a GPU run make gpu-check")
def test_a_compile_failure_is_reported_in_one_line_and_the_eager_figures_stay(gpu_check, tmp_path, monkeypatch):
    import functools
    import json

    from torch._dynamo.exc import BackendCompilerFailed

    def inductor():
        pass

    class FailsToCompile(torch.nn.Module):
        """What torch.compile gives in a container without a working Triton: a model whose first call fails."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *args, **kwargs):
            missing = RuntimeError("Cannot find a working triton installation. Either the package is not installed or it is too old.")
            raise BackendCompilerFailed(inductor, missing, None)

    monkeypatch.setattr(torch, "compile", lambda model, **options: FailsToCompile(model))
    # DataLoader workers hand batches over through a socket, which the tests' no_network fixture refuses.
    monkeypatch.setattr(gpu_check, "measure_training", functools.partial(gpu_check.measure_training, workers=0))
    out = tmp_path / "check.json"
    assert gpu_check.main(["--checks", "amp,compile", "--out", str(out)]) == 1  # a failed check
    report = json.loads(out.read_text())
    amp, compiled = report["checks"]["amp"], report["checks"]["compile"]
    assert amp["status"] == "ok" and amp["mlcdf_train"]["images_per_s"] > 0 and amp["plain_fp32_eager_images_per_s"] > 0
    assert compiled["status"] == "failed" and "BackendCompilerFailed" in compiled["traceback"]
    # The cause, not the wrapper's first line ("backend='inductor' raised:").
    assert report["summary"]["compile"] == (
        "failed: RuntimeError: Cannot find a working triton installation. Either the package is not installed or it is too old."
    )
    assert report["figures"]["images_per_s"]["mlcdf_train_eager"] == amp["mlcdf_train"]["images_per_s"]
    assert report["figures"]["images_per_s"]["mlcdf_train_compiled"] is None


@pytest.mark.parametrize("gpus", [1, 2])
def test_the_two_gpu_checks_run_ddp_and_the_runner_on_gpus_0_and_1(gpu_check, monkeypatch, gpus):
    import signal

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    commands = []

    def record(command, log, *, stop_signal=signal.SIGTERM, env=None, watch=None):
        commands.append((command, stop_signal, env, watch is not None))
        if "synth" not in command and "prepare" not in command:  # each check stops at its main command
            raise gpu_check.CommandFailed("recorded")

    monkeypatch.setattr(gpu_check, "run_command", record)
    names = ["ddp_sync_bn", "reproduce_devices", "reproduce_gpus_per_run"]
    results = gpu_check.run_checks(names, 600, compile_on_cpu=False)
    if gpus == 1:
        assert [results[name]["summary"] for name in names] == ["needs 2 GPUs (1 found)"] * 3 and commands == []
        return
    assert [results[name]["summary"] for name in names] == ["CommandFailed: recorded"] * 3
    (synth, _, _, _), (prepare, _, _, _), ddp, devices, gpus_per_run = commands
    assert synth[2:4] == ["mlcdf", "synth"] and prepare[2:4] == ["mlcdf", "prepare"]
    command, stop_signal, env, watched = ddp
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert command[5:8] == ["-m", "mlcdf", "train"] and "--sync-bn" in command
    assert command[command.index("--device") + 1] == "cuda"
    assert command[command.index("--prepared") + 1] == prepare[prepare.index("--out") + 1] + "/facial_components"
    assert (stop_signal, env, watched) == (signal.SIGTERM, {"NCCL_DEBUG": "VERSION"}, True)
    smoke = ["mlcdf", "reproduce", "--smoke", "--subset", "facial_components"]
    command, stop_signal, env, watched = devices
    only = ["--only", "resnet50-bce", "--only", "iml_gcn-asl-image"]
    assert command[2:] == [*smoke, *only, "--jobs", "2", "--devices", "0,1", "--out", command[-2], "--quiet"]
    assert (stop_signal, watched) == (signal.SIGINT, True)  # like a Ctrl-C: each run releases its lock
    command, stop_signal, env, watched = gpus_per_run
    assert command[2:] == [*smoke, *only[:2], "--gpus-per-run", "2", "--devices", "0,1", "--out", command[-2], "--quiet"]
    assert (stop_signal, watched) == (signal.SIGINT, True)


FAKE_NVIDIA_SMI = """#!/bin/sh
case "$1" in
  --query-gpu=index,uuid) printf '0, GPU-aaa\\n1, GPU-bbb\\n' ;;
  --query-gpu=index,memory.used) printf '0, 1000\\n1, 2000\\n' ;;
  --query-compute-apps=pid,gpu_uuid) cat "$FAKE_APPS" ;;
esac
"""

#: One run as the runner starts it: a process holding its run's lock (OUT/runs/SUBSET/RUN.lock, {"pid": ...})
#: while it works on a GPU, which it lists for the fake nvidia-smi when told to.
FAKE_RUN = """
import json, os, sys, time
lock, apps, uuid, listed = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
with open(lock, "w") as handle:
    json.dump({"host": "here", "pid": os.getpid()}, handle)
if listed:
    with open(apps, "a") as handle:
        handle.write(f"{os.getpid()}, {uuid}\\n")
time.sleep(2)
os.remove(lock)
"""

#: Two runs at once, each with the CUDA_VISIBLE_DEVICES of the plan.
FAKE_LAUNCHER = """
import json, os, subprocess, sys
run, out, apps, plan = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
os.makedirs(os.path.join(out, "runs", "sub"))
children = [
    subprocess.Popen(
        [sys.executable, run, os.path.join(out, "runs", "sub", name + ".lock"), apps, uuid, listed],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": given},
    )
    for name, (given, uuid, listed) in plan.items()
]
for child in children:
    child.wait()
"""


@pytest.mark.parametrize(
    ("plan", "problem"),
    [
        ({"r0": ("0", "GPU-aaa", "1"), "r1": ("1", "GPU-bbb", "1")}, None),
        ({"r0": ("0", "GPU-aaa", "0"), "r1": ("GPU-bbb", "GPU-bbb", "0")}, None),  # nvidia-smi lists no process
        ({"r0": ("0", "GPU-aaa", "1"), "r1": ("1", "GPU-aaa", "1")}, "sub/r1 was given GPU(s) 1 but nvidia-smi saw it on 0"),
        ({"r0": ("0", "GPU-aaa", "1"), "r1": ("0", "GPU-aaa", "1")}, 'runs shared a GPU: {"sub/r0": ["0"], "sub/r1": ["0"]}'),
    ],
)
def test_each_run_on_its_own_gpu_from_its_process_and_nvidia_smi(gpu_check, tmp_path, monkeypatch, plan, problem):
    import json
    import os
    import sys

    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (tools / "nvidia-smi").chmod(0o755)
    apps = tmp_path / "apps.csv"
    apps.write_text("")
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_APPS", str(apps))
    (tmp_path / "run.py").write_text(FAKE_RUN)
    out = tmp_path / "out"
    command = [sys.executable, "-c", FAKE_LAUNCHER, str(tmp_path / "run.py"), str(out), str(apps), json.dumps(plan)]
    monitor = gpu_check.run_command(command, tmp_path / "log", watch=lambda pid: gpu_check.run_workers(out))
    listed = any(listed == "1" for _, _, listed in plan.values())
    assert monitor.listed_any is listed and monitor.memory_mib == {"0": 1000, "1": 2000} and monitor.error is None
    if problem is not None:
        with pytest.raises(RuntimeError) as raised:
            gpu_check.gpu_assignment(monitor, ["sub/r0", "sub/r1"], 1)
        assert str(raised.value) == problem
        return
    assignment = gpu_check.gpu_assignment(monitor, ["sub/r0", "sub/r1"], 1)
    assert {run: seen["gpus_given"] for run, seen in assignment["runs"].items()} == {"sub/r0": ["0"], "sub/r1": ["1"]}
    assert [seen["gpus_seen_by_nvidia_smi"] for seen in assignment["runs"].values()] == ([["0"], ["1"]] if listed else [[], []])
    assert assignment["evidence"].startswith("CUDA_VISIBLE_DEVICES of each run's process" + ("," if listed else " only"))
    with pytest.raises(RuntimeError, match="sub/r2 was never seen running"):
        gpu_check.gpu_assignment(monitor, ["sub/r0", "sub/r1", "sub/r2"], 1)


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_command_past_its_time_limit_is_stopped_with_all_it_started(gpu_check, tmp_path, monkeypatch):
    import sys
    import time

    # Like torchrun's ranks: a process in a session of its own, out of reach of a signal to the command's
    # process group; this one also ignores SIGTERM, so only the kill after the grace period ends it.
    rank = (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(os.environ['PID_FILE'], 'w').write(str(os.getpid())); time.sleep(60)"
    )
    launcher = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {rank!r}], start_new_session=True); time.sleep(60)"
    monkeypatch.setenv("PID_FILE", str(tmp_path / "rank.pid"))
    monkeypatch.setattr(gpu_check, "GRACE", 1)
    start = time.monotonic()
    with pytest.raises(gpu_check.TimeLimit, match="time limit of 5 s"):
        with gpu_check.time_limit(5):
            gpu_check.run_command([sys.executable, "-c", launcher], tmp_path / "log")
    assert time.monotonic() - start < 20
    rank_pid = int((tmp_path / "rank.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(rank_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(rank_pid)


def test_the_reason_of_a_failed_command_is_the_line_that_says_why(gpu_check):
    torchrun_output = """[rank1]: Traceback (most recent call last):
[rank1]:   File "train.py", line 3, in <module>
[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB
E1203 12:00:00 api.py:900] failed (exitcode: 1) local_rank: 1 (pid: 42) of binary: python
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
mlcdf FAILED
------------------------------------------------------------
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""
    assert gpu_check.error_line(torchrun_output) == "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert gpu_check.error_line("loading\nerror: runs/x/config.json: not a run folder\n") == "error: runs/x/config.json: not a run folder"
    assert gpu_check.error_line("1 trained, 1 failed\nfailed: sub/r0: out of memory\n") == "failed: sub/r0: out of memory"
    assert gpu_check.error_line("something odd\n=====\n") == "something odd"
    assert gpu_check.error_line("") == "no output"
