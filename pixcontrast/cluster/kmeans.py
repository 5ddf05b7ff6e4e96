"""K-means on any torch device, chunked, streaming and correct under ``torch.distributed``.

The torch backend runs Lloyd iterations where the data lives (CPU or CUDA) in float32: the assignment is
one matmul per chunk (``||x||^2 - 2 x c^T + ||c||^2``, then argmin), the update sums points per cluster with
``index_add_`` and ``bincount``. When a process group is initialised, every rank assigns its own points and
the per-cluster sums, counts and inertia are all-reduced, so every rank ends with identical centroids, equal
(up to float rounding) to one process fitting the concatenation of all ranks' data in rank order.

The faiss backend (``faiss-cpu``) runs the same algorithm on the CPU behind the same API.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pixcontrast.cluster.sampling import UniformSubsample, kmeans_plusplus
from pixcontrast.distributed import all_gather_cat, all_reduce_sum, broadcast_from_rank0, world_info

Metric = Literal["euclidean", "cosine"]
Chunks = Callable[[], Iterator[tuple[Tensor, Tensor]]]

_CPU_CHUNK_BYTES = 8 << 20  # working set per chunk on the CPU: small enough to stay in cache
_GPU_FREE_FRACTION = 4  # use at most 1/4 of the free GPU memory per chunk
_INIT_POINTS_PER_CLUSTER = 64
_MIN_INIT_POINTS = 10_000
_SPLIT_SCALE = 0.5  # empty-cluster split: offset in units of the donor cluster's per-dimension spread


class KMeans:
    """K-means clustering (Lloyd) with k-means++ initialisation.

    Args:
        n_clusters: number of clusters K.
        max_iter: number of Lloyd iterations (>= 1).
        tol: early stop when the relative inertia decrease of one iteration is at most ``tol``;
            ``0.0`` disables early stopping (always ``max_iter`` iterations). Torch backend only.
        metric: ``"euclidean"``, or ``"cosine"`` (spherical k-means: data and centroids are L2-normalised, points
            go to the centroid of largest dot product, centroids are re-normalised after every update).
        init: ``"k-means++"`` (greedy k-means++ on a uniform subsample of ``init_size`` points) or ``"random"``
            (K distinct points of that subsample).
        seed: seed of every random choice; results are deterministic for a given seed, device and world size.
        backend: ``"torch"`` (any device, distributed-aware) or ``"faiss"`` (``faiss-cpu``, one process, sees
            all points).
        chunk_size: points per assignment matmul; by default chosen from the free memory of the data's device.
        init_size: points of the initialisation subsample; default ``max(10_000, 64 * K)``.

    After fitting: ``centroids`` (K x D float32, on the data's device), ``inertia_`` (sum of squared distances
    of the points to their centroid at the last assignment step; for cosine the distances are between
    normalised vectors, ``2 - 2 cos``), ``counts_`` (K float32, the points of each cluster at that step, over all
    ranks) and ``n_iter_`` (iterations run).
    """

    def __init__(
        self,
        n_clusters: int,
        max_iter: int = 20,
        tol: float = 0.0,
        metric: Metric = "euclidean",
        init: Literal["k-means++", "random"] = "k-means++",
        seed: int = 0,
        backend: Literal["torch", "faiss"] = "torch",
        chunk_size: int | None = None,
        init_size: int | None = None,
    ) -> None:
        _check_choice("metric", metric, ("euclidean", "cosine"))
        _check_choice("init", init, ("k-means++", "random"))
        _check_choice("backend", backend, ("torch", "faiss"))
        for name, value in (("n_clusters", n_clusters), ("max_iter", max_iter)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, size in (("chunk_size", chunk_size), ("init_size", init_size)):
            if size is not None and (not isinstance(size, int) or size < 1):
                raise ValueError(f"{name} must be a positive int or None, got {size!r}")
        if tol < 0:
            raise ValueError(f"tol must be >= 0, got {tol}")
        if backend == "faiss" and tol > 0:
            raise ValueError(
                "tol is not supported by backend='faiss' (it always runs max_iter iterations); use tol=0.0"
            )
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.tol = tol
        self.metric = metric
        self.init = init
        self.seed = seed
        self.backend = backend
        self.chunk_size = chunk_size
        self.init_size = init_size
        self.centroids: Tensor | None = None
        self.inertia_: float | None = None
        self.n_iter_: int = 0

    # ------------------------------------------------------------------ public API
    def fit(self, x: Tensor, init_centroids: Tensor | None = None) -> KMeans:
        """Cluster ``x`` (N x D, any float dtype, any device); ``init_centroids`` (K x D) skips the initialisation.

        Under ``torch.distributed`` every rank passes its own points (N may differ per rank, even be 0).
        """
        x = _check_matrix(x, "x")
        device = x.device
        if self.backend == "faiss":
            if world_info()[1] > 1:
                raise ValueError("backend='faiss' runs in one process; use backend='torch' under torch.distributed")
            x = x.detach().cpu()
        keys = self._global_keys(x) if init_centroids is None else None
        chunks = self._chunker(lambda: iter((x,)), cache_norms=True)
        centroids = self._initialise(chunks, init_centroids, keys)
        if self.backend == "faiss":
            self._fit_faiss(x, centroids, device)
        else:
            self._lloyd(chunks, centroids)
        return self

    def fit_batches(
        self, batches: Iterable[Tensor] | Callable[[], Iterable[Tensor]], init_centroids: Tensor | None = None
    ) -> KMeans:
        """Cluster a stream of batches (each N_i x D) that need not fit in memory at once.

        ``batches`` is re-iterable (a list, a DataLoader-like object) or a callable returning a fresh iterable;
        it is read ``max_iter + 1`` times: one pass to count, validate and draw the initialisation subsample
        (uniform over the whole stream), then one per Lloyd iteration. Batches must come in the same order and
        with the same content on every pass. Memory: one batch plus ``init_size`` points plus the centroids.
        Under ``torch.distributed`` every rank streams its own batches.
        """
        if self.backend == "faiss":
            raise ValueError("fit_batches needs backend='torch'; the faiss backend clusters one in-memory tensor")
        if callable(batches):
            make_iter = lambda: iter(batches())  # noqa: E731
        elif iter(batches) is batches:
            raise ValueError(
                "batches is a one-shot iterator but is read once per iteration; pass a list, a re-iterable object "
                "or a callable that returns a fresh iterator"
            )
        else:
            make_iter = lambda: iter(batches)  # noqa: E731
        chunks = self._chunker(make_iter)
        self._lloyd(chunks, self._initialise(chunks, init_centroids, keys=None))
        return self

    def predict(self, x: Tensor, return_distances: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Index of the nearest centroid for each row of ``x`` (N x D) -> N int64, on ``x``'s device.

        With ``return_distances`` also the squared distances to it (N float32; ``2 - 2 cos`` for cosine), so
        ``predict(x, True)[1].sum()`` is the inertia of ``x`` under the fitted centroids.
        """
        if self.centroids is None:
            raise RuntimeError("KMeans.predict called before fit(); fit the model first")
        x = _check_matrix(x, "x")
        if x.shape[1] != self.centroids.shape[1]:
            raise ValueError(f"x has {x.shape[1]} features but the centroids have {self.centroids.shape[1]}")
        assign = _Assigner(self.centroids.to(x.device))
        labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        distances = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
        start = 0
        for xb, xb_sq in self._chunker(lambda: iter((x,)))():
            stop = start + xb.shape[0]
            labels[start:stop], distances[start:stop] = assign(xb, xb_sq)
            start = stop
        return (labels, distances) if return_distances else labels

    # ------------------------------------------------------------------ data passes
    def _chunker(self, make_iter: Callable[[], Iterator[Tensor]], cache_norms: bool = False) -> Chunks:
        """Turn a batch source into a source of (float32 chunk, squared row norms), normalised for cosine.

        With ``cache_norms`` (a source that yields the same tensors on every pass) the row norms of the first
        pass are kept (N floats) and reused.
        """
        cache: list[Tensor] = []

        def chunks() -> Iterator[tuple[Tensor, Tensor]]:
            position = 0
            for batch in make_iter():
                batch = _check_matrix(batch, "batch")
                size = self.chunk_size or _auto_chunk_size(batch.device, self.n_clusters, batch.shape[1])
                for start in range(0, max(batch.shape[0], 1), size):  # an empty batch gives one empty chunk
                    xb = batch[start : start + size].float()
                    if self.metric == "cosine":
                        xb = F.normalize(xb, dim=1)
                    if position < len(cache):
                        xb_sq = cache[position]
                    else:
                        xb_sq = torch.linalg.vector_norm(xb, dim=1).square_()
                        if cache_norms:
                            cache.append(xb_sq)
                    position += 1
                    yield xb, xb_sq

        return chunks

    def _global_keys(self, x: Tensor) -> Tensor:
        """Sampling keys of this rank's rows, drawn for the global row index so any split of the data agrees."""
        rank, _ = world_info()
        counts = all_gather_cat(torch.tensor([x.shape[0]], device=x.device)).tolist()
        generator = torch.Generator().manual_seed(self.seed)
        keys = torch.rand(sum(counts), generator=generator, dtype=torch.float64)
        offset = sum(counts[:rank])
        return keys[offset : offset + x.shape[0]].to(x.device)

    def _initialise(self, chunks: Chunks, init_centroids: Tensor | None, keys: Tensor | None) -> Tensor:
        """Scan the data once (count, validate, subsample) and return the starting centroids (K x D float32)."""
        rank, _ = world_info()
        sample_size = self.init_size or max(_MIN_INIT_POINTS, _INIT_POINTS_PER_CLUSTER * self.n_clusters)
        sampler = UniformSubsample(sample_size, seed=self.seed + rank) if init_centroids is None else None
        n_points, dim, device, non_finite = 0, 0, None, None
        for xb, xb_sq in chunks():
            if device is not None and xb.shape[1] != dim:
                raise ValueError(f"batches have different feature sizes: {dim} and {xb.shape[1]}")
            if sampler is not None:
                sampler.add(xb, None if keys is None else keys[n_points : n_points + xb.shape[0]])
            bad = (~xb_sq.isfinite()).sum()
            non_finite = bad if non_finite is None else non_finite + bad
            n_points, dim, device = n_points + xb.shape[0], xb.shape[1], xb.device
        if device is None:
            raise ValueError("KMeans got no data (empty input); pass at least n_clusters points")
        assert non_finite is not None  # counted with every chunk
        summary = all_gather_cat(
            torch.stack(
                [torch.tensor(n_points, device=device), torch.tensor(dim, device=device), non_finite.to(torch.long)]
            ).unsqueeze(0)
        )
        self._check_summary(summary.tolist(), init_centroids)
        if init_centroids is not None:
            centroids = init_centroids.detach().to(device=device, dtype=torch.float32).clone()
            if not centroids.isfinite().all():
                raise ValueError("init_centroids contains NaN or inf values")
        else:
            assert sampler is not None  # made when there are no init_centroids
            sample = sampler.result(across_processes=True)  # collective: every rank takes part
            centroids = self._seed_centroids(sample) if rank == 0 else sample.new_empty(self.n_clusters, dim)
        if self.metric == "cosine":
            centroids = F.normalize(centroids, dim=1)
        return broadcast_from_rank0(centroids.contiguous())

    def _check_summary(self, summary: list[list[int]], init_centroids: Tensor | None) -> None:
        """Raise one clear error, identically on every rank, for bad data (rows: points, dim, non-finite rows)."""
        n_total = sum(row[0] for row in summary)
        dims = sorted({row[1] for row in summary if row[0] > 0})
        if n_total == 0:
            raise ValueError("KMeans got no data (empty input); pass at least n_clusters points")
        if len(dims) > 1:
            raise ValueError(f"the processes passed data with different feature sizes {dims}")
        if sum(row[2] for row in summary):
            raise ValueError(
                f"x contains NaN or inf values (or values too large for float32) in {sum(r[2] for r in summary)} "
                "rows; clean the features before clustering"
            )
        if n_total < self.n_clusters:
            raise ValueError(
                f"n_clusters={self.n_clusters} is larger than the number of points ({n_total}); "
                "pass more points or fewer clusters"
            )
        expected = (self.n_clusters, dims[0])
        if init_centroids is not None and tuple(init_centroids.shape) != expected:
            raise ValueError(
                f"init_centroids has shape {tuple(init_centroids.shape)} but n_clusters x features is {expected}"
            )

    def _seed_centroids(self, sample: Tensor) -> Tensor:
        """Pick K starting centroids from the (randomly ordered) subsample ``sample`` (M x D, M >= K)."""
        if self.init == "random":
            return sample[: self.n_clusters].clone()
        generator = torch.Generator(device=sample.device).manual_seed(self.seed)
        return kmeans_plusplus(sample, self.n_clusters, generator)

    # ------------------------------------------------------------------ Lloyd iterations
    def _lloyd(self, chunks: Chunks, centroids: Tensor) -> None:
        k, dim = centroids.shape
        device = centroids.device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        direction = torch.randint(0, 2, (dim,), generator=generator, device=device).float() * 2 - 1
        previous = math.inf
        for iteration in range(1, self.max_iter + 1):  # noqa: B007 (read after the loop: n_iter_)
            assign = _Assigner(centroids)
            sums = torch.zeros(k, dim, device=device)
            sse = torch.zeros(k, device=device)
            counts = torch.zeros(k, dtype=torch.long, device=device)
            for xb, xb_sq in chunks():
                labels, distances = assign(xb, xb_sq)
                sums.index_add_(0, labels, xb)
                sse.index_add_(0, labels, distances)
                counts += torch.bincount(labels, minlength=k)
            stats = all_reduce_sum(torch.cat([sums, counts.unsqueeze(1).float(), sse.unsqueeze(1)], dim=1))
            inertia = stats[:, dim + 1].double().sum()
            centroids = stats[:, :dim] / stats[:, dim].clamp_min(1).unsqueeze(1)
            centroids = _split_empty(centroids, stats[:, dim], stats[:, dim + 1], direction)
            if self.metric == "cosine":
                centroids = F.normalize(centroids, dim=1)
            if self.tol > 0:
                current = inertia.item()
                if previous - current <= self.tol * current:
                    break
                previous = current
        self.centroids, self.inertia_, self.n_iter_ = centroids, inertia.item(), iteration
        self.counts_ = stats[:, dim]

    def _fit_faiss(self, x: Tensor, centroids: Tensor, device: torch.device) -> None:
        import faiss

        xs = torch.cat([xb for xb, _ in self._chunker(lambda: iter((x,)))()]).numpy()
        n, dim = xs.shape
        model = faiss.Kmeans(
            dim,
            self.n_clusters,
            niter=self.max_iter,
            spherical=self.metric == "cosine",
            seed=self.seed,
            max_points_per_centroid=n // self.n_clusters + 1,  # faiss would otherwise subsample to 256 per centroid
            min_points_per_centroid=1,
            verbose=False,
        )
        model.train(xs, init_centroids=centroids.cpu().numpy())
        assert model.obj is not None and model.centroids is not None  # set by train
        objective = float(model.obj[-1])
        # with spherical=True faiss searches by inner product and reports the sum of similarities
        self.inertia_ = objective if self.metric == "euclidean" else 2.0 * n - 2.0 * objective
        self.centroids = torch.from_numpy(model.centroids.copy()).to(device)
        self.n_iter_ = self.max_iter
        _, nearest = model.index.search(xs, 1)  # the trained index holds the final centroids
        self.counts_ = torch.bincount(torch.from_numpy(nearest[:, 0]), minlength=self.n_clusters).float().to(device)


# ---------------------------------------------------------------------- helpers
class _Assigner:
    """Nearest-centroid search for a fixed set of centroids (K x D float32), chunk by chunk.

    Centroids are padded with zero rows to a multiple of 16 (BLAS kernels run faster) whose squared norm is
    ``inf``, so they never win; the score buffer is reused across chunks (no fresh allocation per chunk).
    """

    def __init__(self, centroids: Tensor) -> None:
        pad = -centroids.shape[0] % 16
        c_sq = torch.linalg.vector_norm(centroids, dim=1).square()
        self.centroids_t = torch.cat([centroids, centroids.new_zeros(pad, centroids.shape[1])]).T
        self.c_sq = torch.cat([c_sq, c_sq.new_full((pad,), math.inf)])
        self.buffer = centroids.new_empty(0, self.c_sq.shape[0])

    def __call__(self, xb: Tensor, xb_sq: Tensor) -> tuple[Tensor, Tensor]:
        """Labels (n int64) and squared distances (n float32) of the rows of ``xb`` (n x D, norms ``xb_sq``)."""
        if self.buffer.shape[0] < xb.shape[0]:
            self.buffer = xb.new_empty(xb.shape[0], self.c_sq.shape[0])
        scores = torch.addmm(self.c_sq, xb, self.centroids_t, alpha=-2.0, out=self.buffer[: xb.shape[0]])
        best, labels = scores.min(dim=1)
        return labels, (best + xb_sq).clamp_min_(0)


def _split_empty(centroids: Tensor, counts: Tensor, sse: Tensor, direction: Tensor) -> Tensor:
    """Re-seed empty clusters by splitting the largest ones, without host syncs.

    The j-th empty cluster takes the j-th largest cluster as donor: the two centroids become ``mean +/- delta``
    with ``delta = direction * spread / 2``, where ``spread`` is the donor's per-dimension RMS deviation, so the
    next assignment halves the donor along ``direction`` (a fixed random +/-1 vector). Each donor splits at most
    once per iteration; empty clusters beyond the number of non-empty ones keep their centroid and wait.
    """
    empty = counts == 0
    rank = torch.cumsum(empty, 0) - 1  # position of each empty cluster among the empty ones
    split = empty & (rank < (~empty).sum())
    donor = torch.argsort(counts, descending=True, stable=True)[rank.clamp(0, counts.shape[0] - 1)]
    spread = (sse[donor] / (counts[donor].clamp_min(1) * centroids.shape[1])).sqrt()
    delta = (direction * _SPLIT_SCALE) * spread.unsqueeze(1) * split.unsqueeze(1)
    moved = centroids.index_add(0, donor, -delta)
    return torch.where(split.unsqueeze(1), centroids[donor] + delta, moved)


def _auto_chunk_size(device: torch.device, n_clusters: int, dim: int) -> int:
    """Points per chunk so one chunk's scores, float32 copy and norms fit the memory budget of ``device``."""
    row_bytes = 4 * (n_clusters + 2 * dim + 4)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // _GPU_FREE_FRACTION
    else:
        budget = min(_CPU_CHUNK_BYTES, _available_host_memory() // 4)
    return max(1, budget // row_bytes)


def _available_host_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 34


def _check_matrix(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N x D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {x.dtype}")
    return x


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
