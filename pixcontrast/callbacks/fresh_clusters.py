"""FreshClusterEvaluation: PiCIE's final evaluation with centroids fitted afresh on the training images.

The official code (``train_picie.py``, "Evaluate with fresh clusters"), after training: k-means on the trained
network's features of the training images through the evaluation transform (short side 320, center crop, no
augmentation), the network in train mode (batch statistics), features L2-normalised, Euclidean k-means with K =
``K_train``; then a frozen 1x1 convolution with the raw centroids (dot products) scores the evaluation images,
bilinearly upsampled to the labels, arg-max and Hungarian matching.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import lightning.pytorch as pl
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from pixcontrast.callbacks.feature_evaluation import (
    STAGES,
    FeatureEvaluation,
    evaluation_features,
    flatten_pixels,
    train_eval_batches,
)
from pixcontrast.callbacks.kmeans import collect_features
from pixcontrast.cluster import KMeans
from pixcontrast.losses.cluster_head import LOGITS, ClusterHead, check_choice
from pixcontrast.metrics import HungarianMatchedSegmentation


class FreshClusterEvaluation(FeatureEvaluation):
    """Fit k-means on the module's features of the training images before each validation/test epoch and score
    the evaluation images with those centroids, Hungarian-matched: ``{stage}/fresh_miou``,
    ``{stage}/fresh_pixel_accuracy``.

    The features come from ``evaluation_features`` over the datamodule's ``train_eval_dataloader()``, collected
    as :class:`KMeansRefresh` collects (the module's clustering mode, e.g. PiCIE's train mode with frozen
    running statistics; a uniform subsample of at most ``max_points`` points over all ranks); the evaluation
    images are scored in eval mode. The defaults are the official settings, except that the official code runs
    mini-batch k-means over every training image (faiss k-means on the first 20 batches of 256 images, 20
    iterations, then one centroid update per batch), where this fits Lloyd's k-means on the subsample.

    Args:
        num_clusters: K; default the module's ``hparams.num_clusters`` (official: ``K_train``, 27).
        max_batches: most batches of training images read (per rank); None reads them all.
        max_points: most points clustered over all ranks.
        max_iter, tol, metric, init, seed, chunk_size: passed to :class:`KMeans` (official: 20 iterations,
            Euclidean on the unit-norm features).
        logits: ``"dot"`` (official: dot products with the raw centroids) or ``"cosine"``.
        stages: the stages evaluated (``"val"``, ``"test"``).
        progress_bar: show a progress bar while collecting features.
    """

    name = "fresh"

    def __init__(
        self,
        num_clusters: int | None = None,
        max_batches: int | None = None,
        max_points: int = 1_000_000,
        max_iter: int = 20,
        tol: float = 0.0,
        metric: Literal["euclidean", "cosine"] = "euclidean",
        init: Literal["k-means++", "random"] = "k-means++",
        seed: int = 0,
        chunk_size: int | None = None,
        logits: Literal["dot", "cosine"] = "dot",
        stages: Iterable[str] = STAGES,
        progress_bar: bool = True,
    ) -> None:
        super().__init__(stages)
        check_choice("logits", logits, LOGITS)
        if num_clusters is not None and num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2 or None (the module's), got {num_clusters}")
        if not isinstance(max_points, int) or max_points < 1:
            raise ValueError(f"max_points must be a positive int, got {max_points!r}")
        if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
            raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
        self.kmeans_kwargs: dict[str, Any] = dict(
            max_iter=max_iter, tol=tol, metric=metric, init=init, seed=seed, chunk_size=chunk_size
        )
        KMeans(1, **self.kmeans_kwargs)  # validate early
        self.num_clusters = num_clusters
        self.max_batches = max_batches
        self.max_points = max_points
        self.seed = seed
        self.logits = logits
        self.progress_bar = progress_bar
        self.head: ClusterHead | None = None

    def fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Cluster the training images' features and keep the centroids in :attr:`head` (a :class:`ClusterHead`)."""
        k = self.num_clusters or pl_module.hparams.get("num_clusters")
        if k is None:
            raise ValueError(
                f"{type(pl_module).__name__} has no num_clusters: pass FreshClusterEvaluation(num_clusters=K)"
            )
        samples = collect_features(
            trainer,
            pl_module,
            train_eval_batches(trainer),
            lambda batch: flatten_pixels(evaluation_features(pl_module, batch["image"])),
            ["features"],
            max_points=self.max_points,
            max_batches=self.max_batches,
            seed=self.seed,
            progress_bar=self.progress_bar,
        )["features"]
        model = KMeans(k, **self.kmeans_kwargs).fit(samples)
        assert model.centroids is not None  # set by fit
        self.head = ClusterHead(k, samples.shape[1], logits=self.logits).to(pl_module.device)
        self.head.set_centroids(model.centroids.to(pl_module.device))

    def scores(self, features: Tensor) -> Tensor:
        assert self.head is not None  # fitted before the epoch's batches are scored
        return self.head.scores(features)

    def build_metric(self, num_classes: int, ignore_index: int) -> HungarianMatchedSegmentation:
        assert self.head is not None  # fitted before the metric is built
        return HungarianMatchedSegmentation(num_classes, self.head.num_clusters, ignore_index)

    def results(self, metric: Metric | MetricCollection) -> dict[str, Tensor]:
        values = metric.compute()
        return {"miou": values["miou"], "pixel_accuracy": values["pixel_accuracy"]}
