"""LinearProbe: a linear classifier (1x1 convolution) trained on frozen pixel features, scored like supervision."""

from __future__ import annotations

from collections.abc import Iterable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from pixcontrast.callbacks.feature_evaluation import STAGES, FeatureEvaluation, evaluation_features, train_eval_batches
from pixcontrast.distributed import all_reduce_sum, world_info
from pixcontrast.modules.base import hparams_of


class LinearProbe(FeatureEvaluation):
    """Train a 1x1 convolution on the module's detached features of the labelled training images before each
    validation/test epoch and log ``{stage}/probe_miou`` and ``{stage}/probe_pixel_accuracy`` (the supervised
    metrics: torchmetrics' mIoU and micro pixel accuracy, summed across ranks).

    The features come from ``evaluation_features`` (in eval mode) over the datamodule's
    ``train_eval_dataloader()``; the probe's logits are bilinearly upsampled to the labels' resolution before
    the cross-entropy (the same as upsampling the features: a 1x1 convolution commutes with the interpolation),
    so it is trained at label resolution. The probe starts afresh each time (zero weights), for ``epochs``
    passes of Adam; under DDP its gradients are averaged across ranks, so every rank holds the same probe.

    Args:
        epochs: passes over the training images per fit.
        lr: Adam's learning rate.
        max_batches: most batches read per pass (per rank); None reads them all.
        stages: the stages evaluated (``"val"``, ``"test"``).
    """

    name = "probe"

    def __init__(
        self, epochs: int = 1, lr: float = 1e-2, max_batches: int | None = None, stages: Iterable[str] = STAGES
    ) -> None:
        super().__init__(stages)
        if epochs < 1 or lr <= 0:
            raise ValueError(f"epochs must be >= 1 and lr > 0, got epochs={epochs}, lr={lr}")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
        self.epochs = epochs
        self.lr = lr
        self.max_batches = max_batches
        self.head: nn.Conv2d | None = None

    def fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Train :attr:`head` (``D -> num_classes`` 1x1 convolution) on the training images' features."""
        ignore_index = hparams_of(pl_module).ignore_index
        loader = train_eval_batches(trainer)
        was_training = pl_module.training
        pl_module.eval()
        # The evaluation loop runs in inference mode; the probe's own training needs autograd.
        with torch.inference_mode(False), torch.enable_grad():
            self.head = None
            for _ in range(self.epochs):
                for index, batch in enumerate(loader):
                    if self.max_batches is not None and index >= self.max_batches:
                        break
                    batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                    with torch.no_grad():
                        features = evaluation_features(pl_module, batch["image"]).float()
                    if self.head is None:
                        self.head, optimizer = self._new_head(features.shape[1], pl_module)
                    masks = batch["mask"]
                    logits = F.interpolate(self.head(features), masks.shape[-2:], mode="bilinear", align_corners=False)
                    loss = F.cross_entropy(logits, masks, ignore_index=ignore_index)
                    optimizer.zero_grad()
                    loss.backward()
                    _average_gradients(self.head)
                    optimizer.step()
        pl_module.train(was_training)
        if self.head is None:
            raise RuntimeError("LinearProbe read no batches: the datamodule's train_eval_dataloader() is empty")
        self.head.requires_grad_(False)

    def _new_head(self, dim: int, pl_module: pl.LightningModule) -> tuple[nn.Conv2d, torch.optim.Optimizer]:
        head = nn.Conv2d(dim, hparams_of(pl_module).num_classes, kernel_size=1).to(pl_module.device)
        assert head.bias is not None  # a Conv2d has a bias by default
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head, torch.optim.Adam(head.parameters(), lr=self.lr)

    def scores(self, features: Tensor) -> Tensor:
        assert self.head is not None  # fitted before the epoch's batches are scored
        return self.head(features.float())

    def build_metric(self, num_classes: int, ignore_index: int) -> MetricCollection:
        return MetricCollection(
            {
                "iou": MulticlassJaccardIndex(
                    num_classes, average="none", ignore_index=ignore_index, zero_division=float("nan")
                ),
                "pixel_accuracy": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
            }
        )

    def results(self, metric: Metric | MetricCollection) -> dict[str, Tensor]:
        values = metric.compute()
        return {"miou": values["iou"].nanmean(), "pixel_accuracy": values["pixel_accuracy"]}


def _average_gradients(module: nn.Module) -> None:
    """Average the gradients of ``module`` across ranks (no-op in one process)."""
    world = world_info()[1]
    if world > 1:
        for parameter in module.parameters():
            assert parameter.grad is not None  # every parameter of the probe is in the loss
            parameter.grad = all_reduce_sum(parameter.grad) / world
