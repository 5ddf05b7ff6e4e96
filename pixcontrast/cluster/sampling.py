"""Row sampling for k-means: uniform subsampling of a stream with bounded memory, and k-means++ seeding."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pixcontrast.distributed import all_gather_cat, world_info


class UniformSubsample:
    """Keep a uniform random subset (without replacement) of at most ``capacity`` rows of a stream.

    Every row gets a random key and the rows with the smallest keys are kept ("bottom-k" sampling), so the
    subset is uniform over everything added so far, whatever the batch sizes. Memory holds at most
    ``capacity`` rows plus one incoming batch. Rows keep the dtype of the first batch.

    Args:
        capacity: the most rows kept.
        seed: seed of the key generator, created on the device of the first batch.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity}")
        self.capacity = capacity
        self.seed = seed
        self.seen = 0
        self._generator: torch.Generator | None = None
        self._rows: Tensor | None = None
        self._keys: Tensor | None = None

    def add(self, rows: Tensor, keys: Tensor | None = None) -> None:
        """Offer ``rows`` (N x D); ``keys`` (N, float64) replaces the generated random keys when given."""
        if keys is None:
            if self._generator is None:
                self._generator = torch.Generator(device=rows.device).manual_seed(self.seed)
            keys = torch.rand(rows.shape[0], generator=self._generator, dtype=torch.float64, device=rows.device)
        self.seen += rows.shape[0]
        rows = rows.detach()
        if self._rows is not None:
            assert self._keys is not None  # kept with the rows
            rows = torch.cat([self._rows, rows.to(self._rows.dtype)])
            keys = torch.cat([self._keys, keys])
        if rows.shape[0] > self.capacity:
            keys, index = keys.topk(self.capacity, largest=False, sorted=False)
            rows = rows[index]
        self._rows, self._keys = rows, keys

    def result(self, across_processes: bool = False) -> Tensor:
        """Return the kept rows (M x D, M <= capacity) in key order, i.e. in random order.

        With ``across_processes`` every process gets the same uniform subset of the union of all processes'
        rows (every process must have added at least one batch); the keys decide, so the result equals
        a single process that added all rows with the same keys.
        """
        if self._rows is None:
            raise RuntimeError("UniformSubsample.result() called before any rows were added")
        rows, keys = self._rows, self._keys
        assert keys is not None  # kept with the rows
        if across_processes and world_info()[1] > 1:
            pad = self.capacity - rows.shape[0]
            rows = all_gather_cat(torch.cat([rows, rows.new_zeros(pad, rows.shape[1])]))
            keys = all_gather_cat(torch.cat([keys, keys.new_full((pad,), float("inf"))]))
            keys, index = keys.topk(min(self.capacity, keys.shape[0]), largest=False, sorted=False)
            keep = keys.isfinite()
            rows, keys = rows[index[keep]], keys[keep]
        order = keys.argsort()
        return rows[order]


def kmeans_plusplus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding of ``k`` rows of ``x`` (N x D): K x D.

    Each step draws 2 + log K candidates and keeps the one that lowers the potential most.
    """
    n_trials = 2 + int(math.log(k))
    x_sq = x.square().sum(1)
    first = torch.randint(x.shape[0], (1,), generator=generator, device=x.device)
    chosen = [first]
    closest = (x_sq - 2 * (x @ x[first].T).squeeze(1) + x_sq[first]).clamp_min(0)
    for _ in range(1, k):
        weights = closest + torch.finfo(torch.float32).tiny  # all-zero potential falls back to uniform
        candidates = torch.multinomial(weights, n_trials, replacement=True, generator=generator)
        distances = (x_sq[candidates].unsqueeze(1) - 2 * x[candidates] @ x.T + x_sq).clamp_min(0)
        potentials = torch.minimum(closest, distances)
        best = potentials.sum(1).argmin()
        closest = potentials[best]
        chosen.append(candidates[best].reshape(1))
    return x[torch.cat(chosen)].clone()
