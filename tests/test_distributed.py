"""pixcontrast.distributed in one process: every helper is a no-op that returns its input (the multi-process
behaviour is exercised by the memory-bank, k-means and metric DDP tests)."""

import torch
from torch import nn

from pixcontrast.distributed import (
    all_gather_cat,
    all_gather_padded,
    all_reduce_sum,
    broadcast_from_rank0,
    is_distributed,
    is_synchronised,
    world_info,
)


def test_single_process_helpers_return_their_input():
    assert world_info() == (0, 1) and not is_distributed()
    values = torch.arange(6.0).view(3, 2)
    assert torch.equal(all_reduce_sum(values.clone()), values)
    assert torch.equal(all_gather_cat(values), values)
    assert torch.equal(broadcast_from_rank0(values.clone()), values)
    rows = values.clone().requires_grad_()
    (gathered, flags), padded = all_gather_padded([rows, torch.tensor([True, False, True])], [0.0, 0])
    assert padded == 3 and torch.equal(gathered, values) and not gathered.requires_grad
    assert flags.dtype == torch.bool and flags.tolist() == [True, False, True]


def test_sync_batchnorm_check_needs_a_process_group():
    assert not is_synchronised(nn.BatchNorm1d(4))
    assert not is_synchronised(nn.SyncBatchNorm(4))  # no process group: plain batch statistics
