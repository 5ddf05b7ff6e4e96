"""The frame of the evaluations of frozen pixel features: fit a head before the validation/test epoch, score it.

Hooks a LightningModule implements: ``evaluation_features(images) -> Tensor``, the pixel features ``B x D x h x w``
of evaluation-format images ``B x 3 x H x W`` (PiCIE: its unit-norm features), and ``hparams.num_classes`` /
``hparams.ignore_index``. The datamodule provides ``train_eval_dataloader()``: the training images with their
masks through the evaluation transform (:class:`~pixcontrast.data.PiCIEDataModule` has it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler
from torchmetrics import Metric, MetricCollection

from pixcontrast.modules.base import hparams_of

STAGES = ("val", "test")


class FeatureEvaluation(pl.Callback):
    """Before each validation/test epoch of ``stages`` :meth:`fit` a head on the module's frozen features of the
    training images; every evaluation batch is then scored by :meth:`scores` (one extra forward pass of the
    batch through ``evaluation_features``) and ``{stage}/{name}_miou`` and ``{stage}/{name}_pixel_accuracy`` are
    logged at the epoch's end. Not run in the sanity check, nor for data without labels (``num_classes`` 0).

    Subclasses set ``name`` and implement :meth:`fit`, :meth:`scores`, :meth:`build_metric` and :meth:`results`.
    """

    name: str

    def __init__(self, stages: Iterable[str] = STAGES) -> None:
        self.stages = tuple(stages)
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise ValueError(f"stages must be among {STAGES}, got {unknown}")
        self._metric: Metric | MetricCollection | None = None

    def fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fit the head on the training images' features (called before the epoch, gradients off)."""
        raise NotImplementedError

    def scores(self, features: Tensor) -> Tensor:
        """Per-pixel scores of the fitted head: ``B x D x h x w -> B x C x h x w``."""
        raise NotImplementedError

    def build_metric(self, num_classes: int, ignore_index: int) -> Metric | MetricCollection:
        """The epoch's metric, updated with ``(B x H x W predictions, B x H x W masks)``."""
        raise NotImplementedError

    def results(self, metric: Metric | MetricCollection) -> dict[str, Tensor]:
        """``miou`` and ``pixel_accuracy`` (scalars) of the computed metric."""
        raise NotImplementedError

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "evaluation_features", None)):
            raise RuntimeError(
                f"{type(self).__name__} needs the module hook evaluation_features(images) -> B x D x h x w; "
                f"{type(pl_module).__name__} lacks it"
            )

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update(pl_module, batch)

    on_test_batch_end = on_validation_batch_end  # the same update in both stages: _start built the stage's metric

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module, "test")

    # ------------------------------------------------------------------ the evaluation
    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._metric = None
        num_classes = hparams_of(pl_module).num_classes
        if stage not in self.stages or trainer.sanity_checking or num_classes < 1:
            return
        self.fit(trainer, pl_module)
        self._metric = self.build_metric(num_classes, hparams_of(pl_module).ignore_index).to(pl_module.device)

    @torch.no_grad()
    def _update(self, pl_module: pl.LightningModule, batch: Mapping[str, Tensor]) -> None:
        if self._metric is None:
            return
        masks = batch["mask"]
        scores = self.scores(evaluation_features(pl_module, batch["image"]))
        scores = F.interpolate(scores.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
        self._metric.update(scores.argmax(dim=1), masks)

    def _log(self, pl_module: pl.LightningModule, stage: str) -> None:
        if self._metric is None:
            return
        values = self.results(self._metric)
        self._metric.reset()
        for key, value in values.items():
            pl_module.log(f"{stage}/{self.name}_{key}", value, sync_dist=False)


def evaluation_features(pl_module: pl.LightningModule, images: Tensor) -> Tensor:
    """The module's ``evaluation_features(images)`` hook (checked in ``setup``): ``B x 3 x H x W -> B x D x h x w``."""
    # a hook of the module; nn.Module's __getattr__ types it Tensor | Module
    return pl_module.evaluation_features(images)  # type: ignore[operator]


def train_eval_batches(trainer: pl.Trainer) -> Iterable:
    """The datamodule's ``train_eval_dataloader()``: training images and masks through the evaluation transform
    (under DDP each rank reads its shard; the sampler pads the shards to equal lengths)."""
    # Lightning sets Trainer.datamodule at run time without declaring it
    hook = getattr(trainer.datamodule, "train_eval_dataloader", None)  # type: ignore[attr-defined]
    if not callable(hook):
        raise RuntimeError(
            "the frozen-feature evaluations need a datamodule with train_eval_dataloader() (the training images "
            "through the evaluation transform), e.g. pixcontrast.data.PiCIEDataModule"
        )
    loader = hook()
    if trainer.world_size > 1 and isinstance(loader, DataLoader) and not isinstance(loader.sampler, DistributedSampler):
        loader = DataLoader(  # each rank reads its own shard, as the trainer's loaders do
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=DistributedSampler(loader.dataset, shuffle=False),
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
        )
    return loader


def flatten_pixels(features: Tensor) -> Tensor:
    """``B x D x h x w -> (B h w) x D``."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
