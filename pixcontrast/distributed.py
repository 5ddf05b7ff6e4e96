"""The one vocabulary for ``torch.distributed`` in pixcontrast: every helper is a no-op in a single process.

Used by the losses (anchor gathering, memory bank), the k-means (sums, broadcast), the models (SyncBatchNorm
check) and the callbacks. Nothing else in the package calls ``torch.distributed`` directly.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "all_gather_cat",
    "all_gather_padded",
    "all_reduce_sum",
    "broadcast_from_rank0",
    "is_distributed",
    "is_synchronised",
    "world_info",
]


def world_info() -> tuple[int, int]:
    """Return ``(rank, world_size)``; ``(0, 1)`` when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """Whether more than one process takes part (an initialised process group with world size > 1)."""
    return world_info()[1] > 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` in place over all processes (no-op in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate equally shaped ``tensor`` from all processes along dim 0, in rank order (no gradient)."""
    world = world_info()[1]
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_gather_padded(tensors: list[Tensor], fill: list[float]) -> tuple[list[Tensor], int]:
    """All-gather tensors whose first dimension may differ between ranks (no gradient).

    Each tensor is padded along dim 0 to the largest size over ranks with its ``fill`` value, gathered and
    concatenated in rank order (bool tensors travel as uint8). Returns the gathered tensors and the padded
    per-rank size. Costs one size exchange (a host sync) plus one all-gather per tensor. In a single process
    the tensors come back detached and unpadded.
    """
    if not is_distributed():
        return [tensor.detach() for tensor in tensors], tensors[0].shape[0]
    sizes = all_gather_cat(torch.tensor([tensors[0].shape[0]], device=tensors[0].device))
    padded_size = int(sizes.max())
    gathered = []
    for tensor, value in zip(tensors, fill, strict=True):
        as_int = tensor.dtype == torch.bool
        local = tensor.to(torch.uint8) if as_int else tensor.detach()
        pad = local.new_full((padded_size - local.shape[0], *local.shape[1:]), value)
        out = all_gather_cat(torch.cat([local, pad]))
        gathered.append(out.bool() if as_int else out)
    return gathered, padded_size


def broadcast_from_rank0(tensor: Tensor) -> Tensor:
    """Overwrite ``tensor`` on every process with rank 0's copy (no-op in a single process)."""
    if is_distributed():
        dist.broadcast(tensor, src=0)
    return tensor


def is_synchronised(norm: nn.Module) -> bool:
    """Whether ``norm`` is a SyncBatchNorm that computes its statistics over more than one process."""
    if not (isinstance(norm, nn.SyncBatchNorm) and dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(norm.process_group or dist.group.WORLD) > 1
