"""DDP helpers: the same training code runs single-process or under ``torchrun --nproc_per_node=N``.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; :func:`init` reads them
and starts the process group with NCCL on CUDA and Gloo on CPU. Each rank trains on its own shard
of every epoch's permutation (see :class:`ccpcsa.data.BatchLoader`); gradients are averaged by DDP,
so all ranks hold identical weights after every step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..placement import resolve_device

__all__ = ["DistInfo", "all_reduce_sum", "cleanup", "init", "resolve_device", "sync_buffers"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Initialise the process group if launched by torchrun; return (info, device for this rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local), dev


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of floats over all ranks (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def cleanup() -> None:
    """Destroy the process group if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sync_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank.

    DDP broadcasts buffers at the *start* of each forward, so after the last training step each rank
    holds running statistics updated with its own shard; syncing at epoch end makes all ranks identical.
    """
    if dist.is_available() and dist.is_initialized():
        for b in model.buffers():
            dist.broadcast(b, src=0)
