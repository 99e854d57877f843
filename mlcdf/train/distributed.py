"""The distributed runtime (torchrun): who am I, and gathering results without padded duplicates.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them everything here is a
single-process no-op, so the same code runs on a laptop and on eight GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_info() -> DistInfo:
    """This process's rank and the world size as torchrun set them, before any process group exists."""
    if not launched_by_torchrun():
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo on CPU)."""
    info = launch_info()
    if not launched_by_torchrun():
        return info
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (ranks may hold different counts, none included) in rank order.

    Tensors are padded to the largest count for ``all_gather`` and trimmed afterwards, so no row is
    duplicated. A rank without rows may not know the row shape (no batch told it the label count): it
    takes the shape of the ranks that have rows, since ``all_gather`` needs equal shapes everywhere.
    Single-process: returns ``tensor`` unchanged.
    """
    if not _distributed():
        return tensor
    world = dist.get_world_size()
    shape = torch.zeros(8, dtype=torch.int64, device=tensor.device)
    shape[: tensor.ndim] = torch.tensor(tensor.shape, dtype=torch.int64)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    counts = [int(s[0]) for s in shapes]
    filled = [s for s in shapes if s[0] > 0]
    row_shape = tuple(int(n) for n in filled[0][1 : tensor.ndim]) if filled else tuple(tensor.shape[1:])
    padded = torch.zeros((max(counts), *row_shape), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor.reshape(tensor.shape[0], *row_shape)
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:count] for part, count in zip(gathered, counts)])


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all ranks (a copy; ``value`` itself single-process)."""
    if not _distributed():
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP keeps parameters equal, but each rank updates its buffers on its own part of the last batch;
    rank 0's are the ones saved, so validating with them scores the model that is saved.
    """
    if not _distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
