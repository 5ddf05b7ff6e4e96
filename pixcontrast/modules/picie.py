"""PiCIE: unsupervised semantic segmentation by clustering with invariance and equivariance (Cho et al., 2021).

Each epoch, :class:`~pixcontrast.callbacks.KMeansRefresh` clusters the pixel features of each view through the
hooks :meth:`PiCIE.cluster_features`, :meth:`PiCIE.cluster_counts` and :meth:`PiCIE.set_centroids`; the
centroids are frozen classifiers for the epoch. Pseudo-labels are the nearest centroids of the features of the
very forward pass that is trained (``label_source="live"``), or of a frozen copy of the network taken when the
centroids are set (``"epoch"``: the labels the official code fixes per epoch, recomputed per batch instead of
written to files). No label is ever written to disk. Each clustered feature set has its
:class:`~pixcontrast.losses.cluster_head.ClusterHead` (centroids, cluster sizes, clustered flag): ``heads`` for
views 1 and 2, ``over_heads`` for the over-clustering. Training data comes from
:class:`~pixcontrast.data.picie_views.PiCIEDataModule` (two views and the geometric transform linking them).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from pixcontrast.losses.cluster_head import CLASS_WEIGHTS, LOGITS, ClusterHead, check_choice
from pixcontrast.losses.picie import picie_loss, warp_features
from pixcontrast.metrics import HungarianMatchedSegmentation
from pixcontrast.models.fpn import PiCIENetwork
from pixcontrast.modules.base import hparams_of
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

    The cluster heads' state (centroids, cluster sizes, clustered flag) and the last cluster -> class matching
    are buffers, so they are saved in checkpoints; checkpoints of earlier versions (``centroids_view1``, ...) load
    too. Batch-norm runs on batch statistics both in the clustering pass and in training (the labels come from
    the training forward pass); running statistics are not updated by the clustering pass. Evaluation
    classifies with view 1's head; the over-clustering head is scored by many-to-one matching (``val/over_*``).
    """

    assignment: Tensor

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

        def view_heads(count: int) -> nn.ModuleList:
            return nn.ModuleList(ClusterHead(count, feature_dim, logits, class_weights) for _ in range(2))

        self.heads = view_heads(num_clusters)  # views 1 and 2
        self.over_heads = None if over_clusters is None else view_heads(over_clusters)
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
        self._before_clustering: tuple[bool, dict[nn.modules.batchnorm._BatchNorm, float | None]] = (True, {})

    @property
    def has_centroids(self) -> bool:
        """Whether a clustering pass has set the centroids (view 1's ``clustered`` buffer; a host sync on GPU)."""
        return bool(self.heads[0].clustered)

    # ------------------------------------------------------------------------------------------ features
    def forward(self, images: Tensor) -> Tensor:
        """Unit-norm pixel features: ``B x 3 x H x W -> B x feature_dim x H / r x W / r``."""
        return self.network(images)

    def evaluation_features(self, images: Tensor) -> Tensor:
        """Hook of the frozen-feature evaluations (``FreshClusterEvaluation``, ``LinearProbe``): the pixel features
        ``B x feature_dim x H / r x W / r`` of evaluation-format images ``B x 3 x H x W``."""
        return self(images)

    def view_features(self, batch: Mapping[str, Any], network: nn.Module | None = None) -> tuple[Tensor, Tensor]:
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

    def _head_pairs(self) -> list[tuple[ClusterHead, ClusterHead]]:
        """The heads of views 1 and 2 of each clustering: the main one, then the over-clustering one if any."""
        pairs = [self.heads] if self.over_heads is None else [self.heads, self.over_heads]
        return [_view_heads(heads) for heads in pairs]

    def feature_sets(self) -> Iterator[tuple[str, int, ClusterHead]]:
        """``(name, view index, head)`` of every head, with the feature-set names of the KMeansRefresh hooks
        (``view1``, ``view2``, then ``view1_over``, ``view2_over``): the one place those names meet the heads."""
        for heads, suffix in zip(self._head_pairs(), ("", "_over"), strict=False):
            for view, head in enumerate(heads):
                yield f"view{view + 1}{suffix}", view, head

    # -------------------------------------------------------------------------------- KMeansRefresh hooks
    def cluster_counts(self) -> dict[str, int]:
        """Number of clusters of every feature set."""
        return {name: head.num_clusters for name, _, head in self.feature_sets()}

    @torch.no_grad()
    def cluster_features(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Pixel features to cluster, ``N x D`` per feature set (the over-clustering sets share the views')."""
        pixels = [_pixels(features) for features in self.view_features(batch)]
        return {name: pixels[view] for name, view, _ in self.feature_sets()}

    def set_centroids(self, centroids: Mapping[str, Tensor]) -> None:
        """Store the fitted centroids (``K x D`` per feature set; normalised for cosine logits, raw for dot).

        With ``label_source="epoch"`` the frozen labelling copy of the network is refreshed here too.
        """
        self._set_heads("set_centroids", ClusterHead.set_centroids, centroids)
        if self.label_network is not None:
            self.label_network.load_state_dict(self.network.state_dict())

    def set_cluster_sizes(self, sizes: Mapping[str, Tensor]) -> None:
        """Store the clustered points per cluster (``K`` per feature set), the epoch's cluster frequencies that
        ``class_weights="official"`` weighs by."""
        self._set_heads("set_cluster_sizes", ClusterHead.set_sizes, sizes)

    def _set_heads(
        self, hook: str, setter: Callable[[ClusterHead, Tensor], None], values: Mapping[str, Tensor]
    ) -> None:
        """``setter(head, value)`` for the head of every named value; errors name the hook and the key."""
        heads = {name: head for name, _, head in self.feature_sets()}
        if set(values) != set(heads):
            raise ValueError(f"{hook} expects the keys {sorted(heads)}, got {sorted(values)}")
        for name, value in values.items():
            try:
                setter(heads[name], value)
            except ValueError as error:
                raise ValueError(f"{hook} {name!r}: {error}") from None

    def on_cluster_start(self) -> None:
        """Set the clustering pass's mode: train mode (batch statistics, as in training) with the batch-norm
        running statistics frozen; :meth:`on_cluster_end` restores the previous mode and the momenta."""
        batch_norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._before_clustering = (self.training, {m: m.momentum for m in batch_norms})
        self.train()
        for module in batch_norms:
            module.momentum = 0.0

    def on_cluster_end(self) -> None:
        """Restore the mode and the batch-norm momenta that :meth:`on_cluster_start` found."""
        training, momenta = self._before_clustering
        for module, momentum in momenta.items():
            module.momentum = momentum
        self.train(training)
        self._before_clustering = (training, {})

    def on_train_epoch_start(self) -> None:
        """Fail early (one check per epoch, not per step) when no clustering pass has set the centroids."""
        if not self.has_centroids:
            raise RuntimeError(
                "PiCIE has no centroids yet: add pixcontrast.callbacks.KMeansRefresh to the trainer's callbacks "
                "(it clusters the features at the start of every epoch)"
            )

    def train(self, mode: bool = True) -> PiCIE:
        """Set the training mode; the frozen labelling copy (``label_source="epoch"``) always stays in eval mode."""
        super().train(mode)
        if self.label_network is not None:
            self.label_network.eval()
        return self

    # ------------------------------------------------------------------------------------------ training
    def compute_losses(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Loss terms of one two-view batch; ``loss`` is the total (main + over-clustering head).

        The pseudo-labels are each head's assignment of the labelling features: the trained ones (detached,
        ``label_source="live"``) or the frozen copy's (``"epoch"``).
        """
        features = self.view_features(batch)
        labelling = features
        if self.label_network is not None:
            with torch.no_grad():
                labelling = self.view_features(batch, self.label_network)
        outputs, labels = [], []
        for heads in self._head_pairs():
            labels.append((heads[0].assign(labelling[0]), heads[1].assign(labelling[1])))
            outputs.append(picie_loss(*features, *heads, labels[-1], hparams_of(self).temperature))
        main = outputs[0]
        losses = {
            "loss": main.loss,
            "within_view": main.within_view,
            "across_view": main.across_view,
            "clusters_used": _clusters_used(labels[0][0], hparams_of(self).num_clusters),
        }
        if len(outputs) > 1:
            losses.update(over_loss=outputs[1].loss, loss=main.loss + outputs[1].loss)
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
        # Lightning sets Trainer.datamodule at run time without declaring it
        self._evaluate = hparams_of(self).num_classes > 0 and getattr(self.trainer.datamodule, "has_labels", True)  # type: ignore[attr-defined]
        if not self._evaluate and stage != "predict":
            rank_zero_info(
                "PiCIE: the data has no labels, so the evaluation metrics (val/miou, ...) are skipped; "
                "clustering, training and prediction run as usual"
            )

    def cluster_logits(self, images: Tensor, head: ClusterHead | None = None, features: Tensor | None = None) -> Tensor:
        """Scores (cosine or dot, as ``logits``) of every pixel against the centroids of ``head`` (default: view
        1's, ``heads[0]``), at input size: ``B x K x H x W``.

        ``features`` (``B x D x h x w``) are the network's features of ``images`` when already computed.
        """
        features = self(images) if features is None else features
        scores = (_view_heads(self.heads)[0] if head is None else head).scores(features)
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def evaluation_step(self, batch: Mapping[str, Any], stage: str) -> None:
        """Update the Hungarian-matched metrics (and the over-clustering ones) of ``stage`` with one batch."""
        if not self._evaluate or not self.has_centroids:
            return  # e.g. the sanity check before the first clustering pass
        images, masks = batch["image"], batch["mask"]
        features = self(images)  # one forward pass for both heads
        getattr(self, f"{stage}_metric").update(self.cluster_logits(images, features=features), masks)
        if self.over_heads is not None:
            over_logits = self.cluster_logits(images, _view_heads(self.over_heads)[0], features)
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
        if self.over_heads is not None:
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
        lookup = torch.where(matched, self.assignment, hparams_of(self).ignore_index)
        return cluster_map, torch.where(matched.any(), lookup[cluster_map], cluster_map)  # no host sync

    def on_predict_start(self) -> None:
        """Fail early (once, not per batch) when there are no centroids to predict with."""
        if not self.has_centroids:
            raise RuntimeError("PiCIE has no centroids: predict with a trained checkpoint (fit runs the clustering)")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """``label_map`` and ``cluster_map`` (``B x H x W``) with ``name`` and ``image``, for the prediction writer."""
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
        hp = hparams_of(self)
        return torch.optim.Adam(self.network.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)

    # ---------------------------------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Rename the cluster state of checkpoints written before the cluster heads (``centroids_view1``,
        ``cluster_sizes_view1``, ..., one ``clustered``) to the heads' keys, then load as usual: ``load_state_dict``,
        ``PiCIE.load_from_checkpoint`` and ``--ckpt_path`` resumes all read them."""
        legacy_clustered = state_dict.pop(prefix + "clustered", None)
        if legacy_clustered is not None:
            names = {head: name for name, head in self.named_modules()}
            for feature_set, _, head in self.feature_sets():
                path = f"{prefix}{names[head]}."
                for old, new in ((f"centroids_{feature_set}", "centroids"), (f"cluster_sizes_{feature_set}", "sizes")):
                    if prefix + old in state_dict:
                        state_dict[path + new] = state_dict.pop(prefix + old)
                state_dict[path + "clustered"] = legacy_clustered
        super()._load_from_state_dict(state_dict, prefix, *args)


def _view_heads(heads: nn.ModuleList) -> tuple[ClusterHead, ClusterHead]:
    """The two heads (views 1 and 2) of a ``view_heads`` list, typed."""
    head1, head2 = heads
    assert isinstance(head1, ClusterHead) and isinstance(head2, ClusterHead)
    return head1, head2


def _pixels(features: Tensor) -> Tensor:
    """``B x D x h x w -> (B h w) x D``."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def _clusters_used(labels: Tensor, num_clusters: int) -> Tensor:
    """Number of distinct clusters among ``labels`` (a collapse indicator), computed on the device."""
    present = torch.zeros(num_clusters, dtype=torch.bool, device=labels.device)
    present[labels.reshape(-1)] = True
    return present.sum()
