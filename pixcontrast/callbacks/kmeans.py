"""KMeansRefresh: re-fit k-means centroids on the module's own features before training epochs.

Hooks a LightningModule implements (all called by the callback, never by the trainer):

- ``cluster_features(batch) -> Tensor | Mapping[str, Tensor]``: features to cluster for one batch (already on
  the module's device), ``N x D`` per named feature set (e.g. PiCIE's ``"view1"``/``"view2"``).
- ``cluster_counts() -> int | Mapping[str, int]``: number of clusters K per feature set (same keys).
- ``set_centroids(centroids: Tensor | Mapping[str, Tensor]) -> None``: receives the fitted ``K x D`` float32
  centroids (on the module's device) per feature set. The module owns them from then on: keep them in its
  state (e.g. buffers), so checkpoints restore them; the callback keeps no copy.
- optional ``set_cluster_sizes(sizes: Tensor | Mapping[str, Tensor]) -> None``: called right after
  ``set_centroids`` with the number of clustered points in each cluster (``K`` float32 per feature set, over all
  ranks, at k-means' last assignment step): the clusters' frequencies in the refresh's sample.
- optional ``cluster_dataloader() -> Iterable``: batches to cluster; default: the trainer's train dataloader.
  Under DDP it must yield each rank's own shard (the trainer's train dataloader already does).
- optional ``on_cluster_start()`` / ``on_cluster_end()``: called right before and right after feature collection
  (``on_cluster_end`` also when it fails). A module with either hook owns its mode during clustering: the hooks
  set it and restore it (e.g. PiCIE: train mode for batch statistics, running statistics frozen), the callback
  leaves it alone. A module with neither is collected in eval mode and gets its previous mode back.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor
from tqdm.auto import tqdm

from pixcontrast.cluster import KMeans, UniformSubsample
from pixcontrast.distributed import all_reduce_sum

_SINGLE = "features"  # key (also in logged names) when the hooks work with plain tensors
_HOOKS = ("cluster_features", "cluster_counts", "set_centroids")
_MODE_HOOKS = ("on_cluster_start", "on_cluster_end")


class KMeansRefresh(pl.Callback):
    """Fit k-means on features collected from the module and hand the centroids to it, before training epochs.

    Before every ``every_n_epochs``-th training epoch (epochs 0, n, 2n, ...) the callback runs the module (no
    gradients; in the mode its ``on_cluster_start`` hook sets, else in eval mode) over up to ``max_batches``
    batches, keeps a uniform random subsample of at most ``max_points`` points per feature set (each of W ranks
    keeps ``ceil(max_points / W)``, so memory per rank is bounded by ``ceil(max_points / W) x D`` values per
    feature set, in the features' dtype), fits :class:`KMeans` on the module's device (distributed over all ranks
    under DDP) and calls ``set_centroids``. When no subsampling happens, the DDP result equals one process
    clustering all points.

    It logs ``{log_prefix}/inertia_{key}`` (mean squared distance per point), ``{log_prefix}/points_{key}`` and
    ``{log_prefix}/seconds`` and shows a progress bar on rank 0 while collecting. Its checkpoint state is its own
    progress only (the last refreshed epoch): the centroids live in the module, so a run resumed inside an
    epoch that was already refreshed keeps the module's restored centroids. Batches are moved to the device with
    the module's ``transfer_batch_to_device``. The sanity-check validation runs before the first refresh, so the
    module needs usable default centroids (e.g. random buffers).

    Args:
        every_n_epochs: refresh period in epochs.
        max_batches: most batches read per refresh (per rank); None reads the whole dataloader.
        max_points: most points kept per feature set over all ranks.
        max_iter, tol, metric, init, seed, chunk_size: passed to :class:`KMeans` (``metric="cosine"`` suits
            L2-normalised features as in PiCIE).
        progress_bar: show a progress bar while collecting features.
        log_prefix: prefix of the logged metric names.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        max_batches: int | None = None,
        max_points: int = 1_000_000,
        max_iter: int = 20,
        tol: float = 0.0,
        metric: Literal["euclidean", "cosine"] = "cosine",
        init: Literal["k-means++", "random"] = "k-means++",
        seed: int = 0,
        chunk_size: int | None = None,
        progress_bar: bool = True,
        log_prefix: str = "kmeans",
    ) -> None:
        for name, value in (("every_n_epochs", every_n_epochs), ("max_points", max_points)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
            raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
        KMeans(1, max_iter=max_iter, tol=tol, metric=metric, init=init, chunk_size=chunk_size)  # validate early
        self.every_n_epochs = every_n_epochs
        self.max_batches = max_batches
        self.max_points = max_points
        self.kmeans_kwargs: dict[str, Any] = dict(
            max_iter=max_iter, tol=tol, metric=metric, init=init, chunk_size=chunk_size
        )
        self.seed = seed
        self.progress_bar = progress_bar
        self.log_prefix = log_prefix
        self.refreshed_epoch = -1

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        missing = [hook for hook in _HOOKS if not callable(getattr(pl_module, hook, None))]
        if missing:
            raise RuntimeError(
                f"KMeansRefresh needs the module hooks {list(_HOOKS)}; {type(pl_module).__name__} lacks {missing} "
                "(see pixcontrast.callbacks.kmeans for their contract)"
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch % self.every_n_epochs == 0 and epoch != self.refreshed_epoch:
            self.refresh(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"refreshed_epoch": self.refreshed_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.refreshed_epoch = int(state_dict.get("refreshed_epoch", -1))

    # ------------------------------------------------------------------ the refresh
    def refresh(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Collect features, fit one KMeans per feature set and hand the centroids to the module."""
        start = time.perf_counter()
        # the module's hooks (checked in setup) are its own methods; nn.Module's __getattr__ types them Tensor | Module
        counts = pl_module.cluster_counts()  # type: ignore[operator]
        single = not isinstance(counts, Mapping)
        counts = {_SINGLE: counts} if single else dict(counts)
        samples = self._collect(trainer, pl_module, counts)
        centroids, sizes = {}, {}
        for offset, (key, k) in enumerate(counts.items()):
            model = KMeans(k, seed=self.seed + offset, **self.kmeans_kwargs).fit(samples[key])
            assert model.centroids is not None and model.inertia_ is not None  # set by fit
            centroids[key] = model.centroids.to(pl_module.device)
            sizes[key] = model.counts_.to(pl_module.device)
            points = all_reduce_sum(torch.tensor([samples[key].shape[0]], device=pl_module.device)).item()
            pl_module.log(f"{self.log_prefix}/inertia_{key}", model.inertia_ / points, batch_size=1)
            pl_module.log(f"{self.log_prefix}/points_{key}", float(points), batch_size=1)
        pl_module.set_centroids(centroids[_SINGLE] if single else centroids)  # type: ignore[operator]
        if callable(getattr(pl_module, "set_cluster_sizes", None)):
            pl_module.set_cluster_sizes(sizes[_SINGLE] if single else sizes)  # type: ignore[operator]
        self.refreshed_epoch = trainer.current_epoch
        pl_module.log(f"{self.log_prefix}/seconds", time.perf_counter() - start, batch_size=1)

    def _collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule, counts: dict[str, int]) -> dict[str, Tensor]:
        """Run the module over the clustering batches and subsample the features: key -> N_key x D."""
        return collect_features(
            trainer,
            pl_module,
            _cluster_batches(trainer, pl_module),
            pl_module.cluster_features,  # type: ignore[arg-type]  # a hook, see refresh
            list(counts),
            max_points=self.max_points,
            max_batches=self.max_batches,
            seed=self.seed + 7919 * trainer.current_epoch,
            progress_bar=self.progress_bar,
        )


def collect_features(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    loader: Iterable,
    features_of: Callable[[Any], Tensor | Mapping[str, Tensor]],
    keys: list[str],
    max_points: int,
    max_batches: int | None = None,
    seed: int = 0,
    progress_bar: bool = True,
) -> dict[str, Tensor]:
    """Run ``features_of`` (``N x D``, or a dict of them with ``keys``) over up to ``max_batches`` batches of
    ``loader`` in the module's clustering mode without gradients and keep a uniform subsample of at most
    ``max_points`` rows per key over all ranks (``ceil(max_points / W)`` per rank): key -> ``N_key x D``.

    Batches are moved with the module's ``transfer_batch_to_device``; a plain tensor is stored under
    ``"features"``. The mode is set by the module's ``on_cluster_start`` / ``on_cluster_end`` (else eval mode).
    """
    capacity = math.ceil(max_points / trainer.world_size)
    seed = seed + trainer.global_rank
    samplers = {key: UniformSubsample(capacity, seed=seed + i) for i, key in enumerate(keys)}
    total = _length(loader)
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    bar = tqdm(total=total, desc="k-means features", leave=False, disable=not (progress_bar and trainer.is_global_zero))
    try:
        with _clustering_mode(pl_module), torch.no_grad():
            for index, batch in enumerate(loader):
                if max_batches is not None and index >= max_batches:
                    break
                batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                features = features_of(batch)
                features = {_SINGLE: features} if isinstance(features, Tensor) else features
                for key, sampler in samplers.items():
                    if key not in features:
                        raise ValueError(f"the features have keys {sorted(features)} but the clustering needs {key!r}")
                    sampler.add(features[key])
                bar.update()
    finally:
        bar.close()
    if any(sampler.seen == 0 for sampler in samplers.values()):
        raise RuntimeError("no features collected: the clustering dataloader yielded no batches")
    return {key: sampler.result() for key, sampler in samplers.items()}


def _cluster_batches(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterable:
    hook = getattr(pl_module, "cluster_dataloader", None)
    if callable(hook):
        return hook()
    loader = trainer.train_dataloader
    if loader is None:
        raise RuntimeError("KMeansRefresh found no train dataloader; define cluster_dataloader() on the module")
    return loader


def _length(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


@contextlib.contextmanager
def _clustering_mode(pl_module: pl.LightningModule) -> Iterator[None]:
    """The module's mode during feature collection: set and restored by its ``on_cluster_start`` /
    ``on_cluster_end`` hooks when it has either, else eval mode and the previous mode restored."""
    start, end = (getattr(pl_module, name, None) for name in _MODE_HOOKS)
    if not callable(start) and not callable(end):
        was_training = pl_module.training
        pl_module.eval()
        try:
            yield
        finally:
            pl_module.train(was_training)
        return
    if callable(start):
        start()
    try:
        yield
    finally:
        if callable(end):
            end()
