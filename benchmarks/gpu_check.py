"""``make gpu-check``: the CUDA and distributed paths of mlcdf, run and measured in a few minutes; writes JSON.

    python benchmarks/gpu_check.py                # on one CUDA GPU: about 3 to 5 minutes
    python benchmarks/gpu_check.py --checks fp16  # a subset

Checks (each reports ``ok``, ``failed`` with the reason, or ``skipped`` with the reason):

- ``amp``: ResNet-50 training images/s at 224 px as ``mlcdf train`` runs it (bf16 or fp16, channels_last,
  cache + DataLoader + device augmentation, EMA, schedule), eager and with ``--compile``, against a plain
  fp32 eager loop of the same model and batch on tensors already on the GPU; the ratios.
- ``data_path``: the input pipeline alone (cache, DataLoader, augmentation and normalisation on the device)
  in images/s against the model's training rate; it must be at least twice as fast, or the GPU waits.
- ``torchrun``: a one-process ``torchrun`` run (NCCL on CUDA) with EMA; its checkpoints load on the CPU with
  ``torch.load(weights_only=True)`` and hold only CPU tensors.
- ``fp16``: a run on the fp16 + GradScaler path that GPUs without native bf16 (V100, T4) take.
- ``reproduce_smoke``: ``mlcdf reproduce --smoke --device cuda``.

Without a GPU the same checks run small on the CPU (a tiny model at 32 px) where they mean something, and
the others say why they were skipped; the JSON is then ``gpu_check-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from unittest import mock

import torch
from train_throughput import measure_training, synthetic_prepared  # benchmarks/ is this script's folder

from mlcdf.io import write_json
from mlcdf.train.checkpoint import load_checkpoint

CHECKS = ("amp", "data_path", "torchrun", "fp16", "reproduce_smoke")
#: (model, batch size, image size, steps per epoch) on a GPU and on the CPU.
SIZES = {"cuda": ("resnet50", 64, 224, 20), "cpu": ("timm:test_resnet", 16, 32, 4)}


class Skipped(Exception):
    """A check that cannot run here; the message says why."""


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    images, start = 0, None
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


def run_command(command: list[str], timeout: int = 600) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... exited {done.returncode}: {done.stderr.strip()[-1500:]}")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/gpu_check[-cpu].json)")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.checks.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(CHECKS))
    if unknown:
        parser.error(f"unknown check(s) {unknown}; expected some of {', '.join(CHECKS)}")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model, batch_size, image_size, steps = SIZES[device.type]
    out = args.out or Path(f"benchmarks/results/gpu_check{'' if cuda else '-cpu'}.json")
    results: dict[str, dict] = {}
    state: dict = {}

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)

        def prepared() -> Path:
            if "prepared" not in state:
                state["prepared"] = synthetic_prepared(tmp / "data", steps * batch_size, image_size)
            return state["prepared"]

        def training_rate() -> float:
            if "train" not in state:
                state["train"] = measure_training(
                    prepared(), tmp / "run-amp", model=model, batch_size=batch_size, image_size=image_size, device=device.type
                )
            return state["train"]["images_per_s"]

        def amp() -> dict:
            result = {"model": model, "batch_size": batch_size, "image_size": image_size}
            training_rate()
            result["mlcdf_train"] = dict(state["train"])
            result["plain_fp32_eager_images_per_s"] = plain_fp32_loop(model, batch_size, image_size, steps, device)
            result["speedup_vs_plain_fp32"] = result["mlcdf_train"]["images_per_s"] / result["plain_fp32_eager_images_per_s"]
            if cuda:
                compiled = measure_training(
                    prepared(), tmp / "run-compile", model=model, batch_size=batch_size, image_size=image_size, device="cuda", compile=True
                )
                result["mlcdf_train_compile"] = compiled
                result["compile_speedup_vs_plain_fp32"] = compiled["images_per_s"] / result["plain_fp32_eager_images_per_s"]
            else:
                result["skipped"] = "--compile: on the CPU compiling takes minutes and says nothing about a GPU"
            return result

        def data_path() -> dict:
            rate = data_path_rate(prepared(), batch_size, image_size, device)
            ratio = rate / training_rate()
            result = {"data_images_per_s": rate, "training_images_per_s": training_rate(), "ratio": ratio}
            if cuda and ratio < 2:
                raise RuntimeError(
                    f"the input pipeline feeds {rate:.0f} images/s, under twice the training rate ({training_rate():.0f}): the GPU waits ({json.dumps(result)})"
                )
            return result

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
                "timm:test_resnet" if not cuda else "resnet18",
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
            run_command(command)
            config = json.loads((run / "config.json").read_text())
            last = load_checkpoint(run / "checkpoints" / "last.pt")
            if config["world_size"] != 1 or not last.get("ema"):
                raise RuntimeError(f"expected a 1-process run with EMA, got world_size {config['world_size']}, ema {bool(last.get('ema'))}")
            for name in ("last.pt", "best.pt"):
                check_cpu_checkpoint(run / "checkpoints" / name)
            return {
                "backend": "nccl" if cuda else "gloo",
                "device": config["device"],
                "val_mAP": json.loads((run / "log.jsonl").read_text().splitlines()[-1])["val_mAP"],
            }

        def fp16() -> dict:
            if not cuda:
                raise Skipped("fp16 with a GradScaler is the CUDA path of GPUs without native bf16")
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
            return result

        def reproduce_smoke() -> dict:
            if not cuda:
                raise Skipped("on the CPU tests/test_reproduce.py runs the smoke reproduction (a slow test)")
            start = time.perf_counter()
            run_command(
                [sys.executable, "-m", "mlcdf", "reproduce", "--smoke", "--device", "cuda", "--out", str(tmp / "reproduce"), "--quiet"]
            )
            return {"seconds": time.perf_counter() - start}

        functions = {"amp": amp, "data_path": data_path, "torchrun": torchrun, "fp16": fp16, "reproduce_smoke": reproduce_smoke}
        for name in wanted:
            start = time.perf_counter()
            try:
                results[name] = {"status": "ok", **functions[name]()}
            except Skipped as reason:
                results[name] = {"status": "skipped", "reason": str(reason)}
            except Exception as error:  # noqa: BLE001  (a failed check is reported, and the others still run)
                results[name] = {
                    "status": "failed",
                    "reason": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc()[-2000:],
                }
            results[name]["seconds"] = round(time.perf_counter() - start, 1)
            print(f"{name}: {results[name]['status']} ({results[name]['seconds']} s) {results[name].get('reason', '')}", flush=True)

    report = {
        "benchmark": "gpu_check",
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or 'unknown'})",
        "torch": torch.__version__,
        "sizes": dict(zip(("model", "batch_size", "image_size", "steps"), SIZES[device.type])),
        "checks": results,
    }
    write_json(out, report)
    print(json.dumps({name: {k: v for k, v in result.items() if k != "traceback"} for name, result in results.items()}, indent=2))
    return 1 if any(result["status"] == "failed" for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
