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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU report; on a GPU run make gpu-check")
def test_gpu_check_reports_each_check_and_writes_json(tmp_path, monkeypatch):
    import importlib
    import json
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    gpu_check = importlib.import_module("gpu_check")
    out = tmp_path / "check.json"
    assert gpu_check.main(["--checks", "fp16,reproduce_smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "gpu_check" and report["device"].startswith("cpu")
    assert [report["checks"][name]["status"] for name in ("fp16", "reproduce_smoke")] == ["skipped", "skipped"]
    assert all(report["checks"][name]["reason"] for name in ("fp16", "reproduce_smoke"))
    with pytest.raises(SystemExit):
        gpu_check.main(["--checks", "amp,warp-drive"])
