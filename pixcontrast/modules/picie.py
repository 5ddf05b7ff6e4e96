"""PiCIE: unsupervised semantic segmentation by clustering with invariance and equivariance (Cho et al., 2021).

Each epoch, :class:`~pixcontrast.callbacks.KMeansRefresh` clusters the pixel features of each view through the
hooks :meth:`PiCIE.cluster_features`, :meth:`PiCIE.cluster_counts` and :meth:`PiCIE.set_centroids`; the
centroids are frozen classifiers for the epoch. Pseudo-labels are the nearest centroids of the features of the
very forward pass that is trained (``label_source="live"``), or of a frozen copy of the network taken when the
centroids are set (``"epoch"``: the labels the official code fixes per epoch, recomputed per batch instead of
written to files). No label is ever written to disk. Training data comes from
:class:`~pixcontrast.data.picie_views.PiCIEDataModule` (two views and the geometric transform linking them).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from pixcontrast.losses.picie import (
    CLASS_WEIGHTS,
    LOGITS,
    assign_clusters,
    check_choice,
    cluster_scores,
    picie_loss,
    warp_features,
)
from pixcontrast.metrics import HungarianMatchedSegmentation
from pixcontrast.models.fpn import PiCIENetwork
from pixcontrast.modules.evaluation import StageEvaluation

TRAIN_KEYS = ("image1", "image2", "geometry")
LABEL_SOURCES = ("live", "epoch")


class PiCIE(StageEvaluation, L.LightningModule):
    """PiCIE on any timm encoder with the paper's light FPN.

    Args:
        num_classes: ground-truth classes of the evaluation label set (set from the datamodule by the CLI); 0 for
            unlabelled data, which is clustered and predicted but not evaluated.
        num_clusters: K of the main clustering (paper 27).
        over_clusters: K of the optional over-clustering head (PiCIE+H), trained jointly; ``None`` = off.
        encoder, feature_dim, pretrained, weights_path: see :class:`~pixcontrast.models.fpn.PiCIENetwork`.
        lr, weight_decay: Adam (paper: lr 1e-4 on COCO-Stuff, 1e-3 on Cityscapes, no decay, no schedule).
        temperature: divides the logits.
        class_weights: cross-entropy weights per cluster: ``"balanced"`` (default: inverse pixel count in the
            batch, so small clusters count as much as large ones), ``"official"`` (the official code's weights:
            the cluster's frequency over the epoch, here in the clustering pass's sample as ``KMeansRefresh``
            reports it through :meth:`set_cluster_sizes`; large clusters count more) or ``"none"``.
        logits: ``"cosine"`` (default: ``cos(z, mu) / temperature``, centroids normalised, labels by cosine)
            or ``"dot"`` (the official code: ``z . mu / temperature`` with the raw centroids, labels by
            Euclidean distance; pair it with ``KMeansRefresh(metric="euclidean")`` and ``temperature=1``).
        label_source: ``"live"`` (default: labels from the features being trained, detached) or ``"epoch"``
            (labels from a frozen copy of the network taken when the centroids are set, in eval mode: fixed for
            the epoch as in the official code; one extra forward pass per step, no files).
        ignore_index: unlabelled pixels in evaluation masks.
        class_names: names of the evaluation classes, for the per-class IoU logs.

    Centroids, cluster sizes, the "clustered" flag and the last cluster -> class matching are buffers, so they
    are saved in checkpoints. Batch-norm runs on batch statistics both in the clustering pass and in training (the
    labels come from the training forward pass); running statistics are not updated by the clustering pass.
    Evaluation classifies with the view-1 centroids; the over-clustering head is scored by many-to-one
    matching (``val/over_*``).
    """

    def __init__(
        self,
        num_classes: int,
        num_clusters: int = 27,
        over_clusters: int | None = None,
        encoder: str = "resnet18",
        feature_dim: int = 128,
        pretrained: bool = False,
        weights_path: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        temperature: float = 1.0,
        class_weights: Literal["balanced", "official", "none"] = "balanced",
        logits: Literal["cosine", "dot"] = "cosine",
        label_source: Literal["live", "epoch"] = "live",
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: unlabelled data, no evaluation), got {num_classes}")
        if num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, got {num_clusters}")
        if over_clusters is not None and over_clusters <= num_clusters:
            raise ValueError(
                f"over_clusters must exceed num_clusters={num_clusters} (or be None to disable), got {over_clusters}"
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        check_choice("class_weights", class_weights, CLASS_WEIGHTS)
        check_choice("logits", logits, LOGITS)
        check_choice("label_source", label_source, LABEL_SOURCES)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.save_hyperparameters()
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.network = PiCIENetwork(encoder, feature_dim, pretrained=pretrained, weights_path=weights_path)
        # The frozen copy that labels the epoch (label_source="epoch"); saved in checkpoints for exact resumes.
        self.label_network = None
        if label_source == "epoch":
            self.label_network = copy.deepcopy(self.network).requires_grad_(False).eval()
        for key, count in self.cluster_counts().items():
            self.register_buffer(f"centroids_{key}", torch.zeros(count, feature_dim))
            self.register_buffer(f"cluster_sizes_{key}", torch.zeros(count))
        self.register_buffer("clustered", torch.zeros((), dtype=torch.bool))
        self.register_buffer("assignment", torch.full((num_clusters,), -1, dtype=torch.int64))
        self._evaluate = num_classes > 0
        if self._evaluate:
            self.val_metric = HungarianMatchedSegmentation(num_classes, num_clusters, ignore_index)
            self.test_metric = self.val_metric.clone()
        if over_clusters is not None and self._evaluate:
            self.val_over_metric = HungarianMatchedSegmentation(
                num_classes, over_clusters, ignore_index, matching="majority"
            )
            self.test_over_metric = self.val_over_metric.clone()
        self._bn_momenta: dict[nn.Module, float | None] = {}
        self._has_centroids = False

    @property
    def has_centroids(self) -> bool:
        """Whether a clustering pass has set the centroids (read from the buffer once, then cached)."""
        if not self._has_centroids:
            self._has_centroids = bool(self.clustered)
        return self._has_centroids

    # ------------------------------------------------------------------------------------------ features
    def forward(self, images: Tensor) -> Tensor:
        """Unit-norm pixel features: ``B x 3 x H x W -> B x feature_dim x H / r x W / r``."""
        return self.network(images)

    def view_features(self, batch: Mapping[str, Tensor], network: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """Features of both views, aligned pixel to pixel: ``z1 = f(G(P1 x))`` and ``z2 = G(f(P2 x))``.

        Both views go through ``network`` (default: the trained one) as one batch (the same batch-norm
        statistics in clustering and in training). Returns two ``B x D x h x w`` maps.
        """
        missing = [key for key in TRAIN_KEYS if key not in batch]
        if missing:
            raise KeyError(
                f"PiCIE training batches need {TRAIN_KEYS}, missing {missing}; wrap the datamodule in "
                "pixcontrast.data.PiCIEDataModule"
            )
        image1, image2 = batch["image1"].to(self.device), batch["image2"].to(self.device)
        features1, features2 = (network or self.network)(torch.cat([image1, image2])).chunk(2)
        return features1, warp_features(features2, batch["geometry"], output_size=features1.shape[-2:])

    def centroids(self, key: str) -> Tensor:
        """The ``K x D`` centroids of feature set ``key`` (``view1``, ``view2``, ``view1_over``, ``view2_over``)."""
        return getattr(self, f"centroids_{key}")

    # -------------------------------------------------------------------------------- KMeansRefresh hooks
    def cluster_counts(self) -> dict[str, int]:
        """Number of clusters of every feature set."""
        counts = {"view1": self.hparams.num_clusters, "view2": self.hparams.num_clusters}
        if self.hparams.over_clusters is not None:
            counts.update(view1_over=self.hparams.over_clusters, view2_over=self.hparams.over_clusters)
        return counts

    @torch.no_grad()
    def cluster_features(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Pixel features to cluster, ``N x D`` per feature set (the over-clustering sets share the views')."""
        features1, features2 = self.view_features(batch)
        pixels = {"view1": _pixels(features1), "view2": _pixels(features2)}
        if self.hparams.over_clusters is not None:
            pixels.update(view1_over=pixels["view1"], view2_over=pixels["view2"])
        return pixels

    @torch.no_grad()
    def set_centroids(self, centroids: Mapping[str, Tensor]) -> None:
        """Store the fitted centroids (``K x D`` per feature set; normalised for cosine logits, raw for dot).

        With ``label_source="epoch"`` the frozen labelling copy of the network is refreshed here too.
        """
        expected = self.cluster_counts()
        if set(centroids) != set(expected):
            raise ValueError(f"set_centroids expects the keys {sorted(expected)}, got {sorted(centroids)}")
        for key, value in centroids.items():
            buffer = self.centroids(key)
            if value.shape != buffer.shape:
                raise ValueError(f"centroids {key!r} must be {tuple(buffer.shape)}, got {tuple(value.shape)}")
            value = value.to(buffer)
            buffer.copy_(F.normalize(value, dim=1) if self.hparams.logits == "cosine" else value)
        if self.label_network is not None:
            self.label_network.load_state_dict(self.network.state_dict())
        self.clustered.fill_(True)
        self._has_centroids = True

    @torch.no_grad()
    def set_cluster_sizes(self, sizes: Mapping[str, Tensor]) -> None:
        """Store the clustered points per cluster (``K`` per feature set), the epoch's cluster frequencies that
        ``class_weights="official"`` weighs by."""
        expected = self.cluster_counts()
        if set(sizes) != set(expected):
            raise ValueError(f"set_cluster_sizes expects the keys {sorted(expected)}, got {sorted(sizes)}")
        for key, value in sizes.items():
            buffer = getattr(self, f"cluster_sizes_{key}")
            if value.shape != buffer.shape:
                raise ValueError(f"cluster sizes {key!r} must be {tuple(buffer.shape)}, got {tuple(value.shape)}")
            buffer.copy_(value)

    def on_cluster_start(self) -> None:
        """Select this epoch's views; batch statistics on, running statistics frozen while clustering."""
        self.select_views()
        self.train()
        self._bn_momenta = {m: m.momentum for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        for module in self._bn_momenta:
            module.momentum = 0.0

    def on_cluster_end(self) -> None:
        for module, momentum in self._bn_momenta.items():
            module.momentum = momentum
        self._bn_momenta = {}

    def select_views(self) -> None:
        """Tell the two-view data the current epoch (``set_epoch`` of the datamodule or the training dataset)."""
        trainer = self.trainer
        for owner in (trainer.datamodule, getattr(trainer.train_dataloader, "dataset", None)):
            if callable(getattr(owner, "set_epoch", None)):
                owner.set_epoch(trainer.current_epoch)
                return

    def on_train_epoch_start(self) -> None:
        self.select_views()

    def train(self, mode: bool = True) -> PiCIE:
        """Set the training mode; the frozen labelling copy (``label_source="epoch"``) always stays in eval mode."""
        super().train(mode)
        if self.label_network is not None:
            self.label_network.eval()
        return self

    # ------------------------------------------------------------------------------------------ training
    def compute_losses(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Loss terms of one two-view batch; ``loss`` is the total (main + over-clustering head)."""
        if not self.has_centroids:
            raise RuntimeError(
                "PiCIE has no centroids yet: add pixcontrast.callbacks.KMeansRefresh to the trainer's callbacks "
                "(it clusters the features at the start of every epoch)"
            )
        features1, features2 = self.view_features(batch)
        frozen = None
        if self.label_network is not None:
            with torch.no_grad():
                frozen = self.view_features(batch, self.label_network)
        heads = ["main"] + (["over"] if self.hparams.over_clusters is not None else [])
        outputs = {}
        for head in heads:
            suffix = "" if head == "main" else "_over"
            centroids1, centroids2 = self.centroids(f"view1{suffix}"), self.centroids(f"view2{suffix}")
            labels = None
            if frozen is not None:
                labels = (
                    assign_clusters(frozen[0], centroids1, self.hparams.logits),
                    assign_clusters(frozen[1], centroids2, self.hparams.logits),
                )
            sizes = None
            if self.hparams.class_weights == "official":
                sizes = (getattr(self, f"cluster_sizes_view1{suffix}"), getattr(self, f"cluster_sizes_view2{suffix}"))
            outputs[head] = picie_loss(
                features1,
                features2,
                centroids1,
                centroids2,
                self.hparams.temperature,
                self.hparams.class_weights,
                self.hparams.logits,
                labels,
                sizes,
            )
        main = outputs["main"]
        losses = {
            "loss": main.loss,
            "within_view": main.within_view,
            "across_view": main.across_view,
            "clusters_used": _clusters_used(main.labels1, self.hparams.num_clusters),
        }
        if "over" in outputs:
            losses.update(over_loss=outputs["over"].loss, loss=main.loss + outputs["over"].loss)
        return losses

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        losses = self.compute_losses(batch)
        batch_size = batch["image1"].shape[0]
        self.log_dict({f"train/{k}": v.detach().float() for k, v in losses.items()}, batch_size=batch_size)
        self.log("loss", losses["loss"].detach(), prog_bar=True, logger=False, batch_size=batch_size)
        return losses["loss"]

    # ---------------------------------------------------------------------------------------- evaluation
    def setup(self, stage: str) -> None:
        """Skip the evaluation metrics, with one log line, when the data has no labels."""
        self._evaluate = self.hparams.num_classes > 0 and getattr(self.trainer.datamodule, "has_labels", True)
        if not self._evaluate and stage != "predict":
            rank_zero_info(
                "PiCIE: the data has no labels, so the evaluation metrics (val/miou, ...) are skipped; "
                "clustering, training and prediction run as usual"
            )

    def cluster_logits(self, images: Tensor, key: str = "view1", features: Tensor | None = None) -> Tensor:
        """Scores (cosine or dot, as ``logits``) of every pixel against the centroids ``key``, at input size:
        ``B x K x H x W``.

        ``features`` (``B x D x h x w``) are the network's features of ``images`` when already computed.
        """
        features = self(images) if features is None else features
        scores = cluster_scores(features, self.centroids(key), self.hparams.logits)
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def evaluation_step(self, batch: Mapping[str, Any], stage: str) -> None:
        """Update the Hungarian-matched metrics (and the over-clustering ones) of ``stage`` with one batch."""
        if not self._evaluate or not self.has_centroids:
            return  # e.g. the sanity check before the first clustering pass
        images, masks = batch["image"], batch["mask"]
        features = self(images)  # one forward pass for both heads
        getattr(self, f"{stage}_metric").update(self.cluster_logits(images, features=features), masks)
        if self.hparams.over_clusters is not None:
            over_logits = self.cluster_logits(images, "view1_over", features=features)
            getattr(self, f"{stage}_over_metric").update(over_logits, masks)

    def compute_stage_metrics(self, stage: str) -> dict[str, Tensor] | None:
        """Matched ``miou``, ``pixel_accuracy``, ``per_class_iou`` (+ ``over_*``); validation keeps the matching."""
        if not self._evaluate:
            return None
        if not self.has_centroids:
            rank_zero_warn(f"PiCIE: no centroids yet, {stage} metrics skipped (they need a clustering pass)")
            return None
        metric = getattr(self, f"{stage}_metric")
        result = metric.compute()
        metric.reset()
        if stage == "val":
            self.assignment.copy_(result["assignment"])
        values = {key: result[key] for key in ("miou", "pixel_accuracy", "per_class_iou")}
        if self.hparams.over_clusters is not None:
            over_metric = getattr(self, f"{stage}_over_metric")
            over = over_metric.compute()
            over_metric.reset()
            values.update(over_miou=over["miou"], over_pixel_accuracy=over["pixel_accuracy"])
        return values

    def predict_maps(self, images: Tensor, features: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(cluster_map, label_map)``, both ``B x H x W`` int64.

        ``label_map`` maps clusters to classes by the last validation matching (``ignore_index`` for unmatched
        clusters); before any validation it equals ``cluster_map``.
        """
        cluster_map = self.cluster_logits(images, features=features).argmax(dim=1)
        matched = self.assignment >= 0
        lookup = torch.where(matched, self.assignment, self.hparams.ignore_index)
        return cluster_map, torch.where(matched.any(), lookup[cluster_map], cluster_map)  # no host sync

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """``label_map`` and ``cluster_map`` (``B x H x W``) with ``name`` and ``image``, for the prediction writer."""
        if not self.has_centroids:
            raise RuntimeError("PiCIE has no centroids: predict with a trained checkpoint (fit runs the clustering)")
        cluster_map, label_map = self.predict_maps(batch["image"])
        return {"label_map": label_map, "cluster_map": cluster_map, "name": batch.get("name"), "image": batch["image"]}

    def visualization_outputs(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Hook for :class:`SegmentationVisualizer`: matched ``prediction``, raw ``cluster_map`` (``B x H x W``) and
        the features as ``embeddings``; empty before the first clustering."""
        if not self.has_centroids:
            return {}
        features = self(batch["image"])
        cluster_map, label_map = self.predict_maps(batch["image"], features)
        return {"prediction": label_map, "cluster_map": cluster_map, "embeddings": features}

    # ---------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.network.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def _pixels(features: Tensor) -> Tensor:
    """``B x D x h x w -> (B h w) x D``."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def _clusters_used(labels: Tensor, num_clusters: int) -> Tensor:
    """Number of distinct clusters among ``labels`` (a collapse indicator), computed on the device."""
    present = torch.zeros(num_clusters, dtype=torch.bool, device=labels.device)
    present[labels.reshape(-1)] = True
    return present.sum()
