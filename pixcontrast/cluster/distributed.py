"""Thin wrappers over ``torch.distributed`` that fall back to no-ops in a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_info() -> tuple[int, int]:
    """Return ``(rank, world_size)``; ``(0, 1)`` when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` in place over all processes (no-op in a single process)."""
    if world_info()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate equally shaped ``tensor`` from all processes along dim 0, in rank order."""
    world = world_info()[1]
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def broadcast_from_rank0(tensor: Tensor) -> Tensor:
    """Overwrite ``tensor`` on every process with rank 0's copy (no-op in a single process)."""
    if world_info()[1] > 1:
        dist.broadcast(tensor, src=0)
    return tensor
