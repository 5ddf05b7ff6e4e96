"""SegmentationModule: the supervised Lightning module every pixcontrast segmenter builds on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from pixcontrast.inference import per_size_inference, predict_logits
from pixcontrast.models import Segmenter
from pixcontrast.modules.evaluation import StageEvaluation

EVAL_MODES = ("whole", "slide", "multiscale")
OPTIMIZERS = ("sgd", "adamw")


def hparams_of(module: L.LightningModule) -> AttributeDict:
    """``module.hparams`` as ``save_hyperparameters()`` stores them: an ``AttributeDict`` (Lightning types the
    property as a plain ``MutableMapping``, without the attribute access)."""
    hparams = module.hparams
    assert isinstance(hparams, AttributeDict)
    return hparams


def masked_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int, weight: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the pixels that are not ``ignore_index``, optionally class-weighted.

    ``logits`` B x K x h x w are bilinearly upsampled to the size of ``target`` (B x H x W) first. With
    ``weight`` (K positive floats) the mean is weighted, ``sum_i w[y_i] l_i / sum_i w[y_i]`` over the labelled
    pixels, as ``F.cross_entropy(weight=...)``. A batch without a single labelled pixel gives 0 (still
    connected to the graph) instead of NaN, with no host sync.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    weight = None if weight is None else weight.float()
    total = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="sum")
    labelled = target != ignore_index
    if weight is None:
        return total / labelled.sum().clamp_min(1)
    pixel_weights = weight[torch.where(labelled, target, 0)] * labelled
    return total / pixel_weights.sum().clamp_min(torch.finfo(torch.float32).tiny)


def check_class_weights(class_weights: Sequence[float], num_classes: int) -> Tensor:
    """``class_weights`` as a float32 tensor of ``num_classes`` positive finite values, or a ValueError."""
    weights = torch.as_tensor(class_weights, dtype=torch.float64)
    if weights.ndim != 1 or len(weights) != num_classes:
        raise ValueError(
            f"class_weights must hold one weight per class (num_classes={num_classes}), got shape "
            f"{tuple(weights.shape)}: {list(class_weights)}; give a list of {num_classes} floats or null (unweighted)"
        )
    bad = ~(torch.isfinite(weights) & (weights > 0))
    if bool(bad.any()):
        index = int(bad.nonzero()[0])
        raise ValueError(
            f"class_weights must be positive and finite, got {weights[index].item()} for class {index}; "
            "a class to leave out of the loss belongs in ignore_index, not a weight of 0"
        )
    return weights.float()


class SegmentationModule(StageEvaluation, L.LightningModule):
    """Supervised semantic segmentation: a :class:`~pixcontrast.models.Segmenter` trained with cross-entropy.

    Template hooks (override one instead of ``__init__``): :meth:`configure_models` builds ``self.model``,
    :meth:`configure_losses` the loss terms, :meth:`configure_metrics` the validation/test metrics. (They are
    named as in torchgeo; Lightning reserves ``configure_model`` for sharded initialisation.)

    ``forward(images)`` is the inference path: B x 3 x H x W -> logits B x K x H x W. Validation and test use
    ``eval_mode`` (``whole``, ``slide`` with ``eval_crop_size``/``eval_stride`` as (H, W), or ``multiscale``
    with ``eval_scales`` and ``eval_flip``), on each image at its own size and scored at its mask's size
    (:meth:`evaluation_logits`), so padded batches of images of different sizes give the metrics and
    predictions of batches of one. The optimiser is SGD with poly decay (the papers' default) or AdamW.
    ``class_weights`` (K positive floats, e.g. the official Cityscapes weights) weight the main and auxiliary
    cross-entropy and the validation loss per class; they are a buffer (``self.class_weights``), so they move
    with the module and are saved in its checkpoints. ``None`` (default) is the unweighted mean.
    Every ``check_finite_every_n_steps`` steps (0: never) the loss terms are checked for NaN/inf, one host sync
    per check; a bad step raises ``FloatingPointError`` naming the step and the offending terms.

    Args:
        num_classes: K, the classes scored (from the datamodule when run by the command).
        encoder: a timm model name (e.g. ``hrnet_w48.ms_in1k``, ``resnet101.tv_in1k``, ``vit_small_patch8_224.dino``).
        head: decode head: ``fcn``, ``aspp`` (DeepLabV3) or ``ocr`` (OCRNet, with its region head).
        aux_head: add the training-only FCN auxiliary head on the encoder's auxiliary map.
        aux_weight: weight of the auxiliary cross-entropy (the papers: 0.4).
        output_stride: the encoder's output stride (8, 16, 32); None: 8 where timm can dilate the model
            (ResNets, ConvNeXt), else the model's own (:class:`~pixcontrast.models.TimmEncoder`).
        head_channels: width of the decode and auxiliary heads.
        dropout: dropout before the classifiers.
        pretrained: start the encoder from timm's pretrained weights (Hugging Face cache, else downloaded once).
        weights_path: a local checkpoint for the encoder instead (offline use; with ``pretrained=False``).
        ignore_index: label of unlabelled pixels.
        class_weights: K positive per-class cross-entropy weights; None: unweighted.
        optimizer: ``sgd`` (momentum, poly decay) or ``adamw`` (poly decay).
        lr: base learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay of every parameter (decoupled for AdamW).
        poly_power: exponent of the per-step poly decay ``(1 - step / total) ** poly_power``.
        eval_mode: ``whole``, ``slide`` or ``multiscale`` evaluation.
        eval_crop_size: ``slide``: window (H, W).
        eval_stride: ``slide``: window stride (H, W); default the window (no overlap).
        eval_scales: ``multiscale``: image scales whose logits are averaged.
        eval_flip: ``multiscale``: also average each scale's horizontal flip.
        class_names: K names for logs and pictures (from the datamodule when run by the command).
        check_finite_every_n_steps: check the loss terms for NaN/inf every this many steps; 0: never.
    """

    class_weights: Tensor | None

    def __init__(
        self,
        num_classes: int,
        encoder: str = "resnet18",
        head: Literal["fcn", "aspp", "ocr"] = "fcn",
        aux_head: bool = False,
        aux_weight: float = 0.4,
        output_stride: int | None = None,
        head_channels: int = 256,
        dropout: float = 0.1,
        pretrained: bool = False,
        weights_path: str | None = None,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        poly_power: float = 0.9,
        eval_mode: Literal["whole", "slide", "multiscale"] = "whole",
        eval_crop_size: tuple[int, int] | None = None,
        eval_stride: tuple[int, int] | None = None,
        eval_scales: Sequence[float] = (1.0,),
        eval_flip: bool = False,
        class_names: Sequence[str] | None = None,
        check_finite_every_n_steps: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f"num_classes must be >= 2, got {num_classes}; a datamodule without classes (e.g. a folder of "
                "unlabelled images) needs class_names and masks for supervised training"
            )
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {EVAL_MODES}, got {eval_mode!r}")
        if eval_mode == "slide" and eval_crop_size is None:
            raise ValueError("eval_mode='slide' needs eval_crop_size=(H, W) (and optionally eval_stride)")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        weights = None if class_weights is None else check_class_weights(class_weights, num_classes)
        self.save_hyperparameters()
        self.register_buffer("class_weights", weights)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self._batches_checked: set[str] = set()
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    # ----------------------------------------------------------------------------------------- template hooks
    def segmenter_kwargs(self) -> dict[str, Any]:
        """The :class:`Segmenter` constructor arguments taken from the hyperparameters."""
        hp = hparams_of(self)
        return dict(
            num_classes=hp.num_classes,
            encoder=hp.encoder,
            head=hp.head,
            aux_head=hp.aux_head,
            output_stride=hp.output_stride,
            head_channels=hp.head_channels,
            dropout=hp.dropout,
            pretrained=hp.pretrained,
            weights_path=hp.weights_path,
        )

    def configure_models(self) -> None:
        """Build ``self.model``."""
        self.model = Segmenter(**self.segmenter_kwargs())

    def configure_losses(self) -> None:
        """Build the loss terms (cross-entropy needs no module; subclasses add theirs)."""

    def configure_metrics(self) -> None:
        """Build dataset-level mIoU, per-class IoU and pixel accuracy for validation and test."""
        hp = hparams_of(self)
        num_classes, ignore = hp.num_classes, hp.ignore_index
        metrics = MetricCollection(
            {
                "iou": MulticlassJaccardIndex(
                    num_classes, average="none", ignore_index=ignore, zero_division=float("nan"), validate_args=False
                ),
                "pixel_accuracy": MulticlassAccuracy(
                    num_classes, average="micro", ignore_index=ignore, validate_args=False
                ),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    # ------------------------------------------------------------------------------------------- inference
    def forward(self, images: Tensor) -> Tensor:
        """Inference: images B x 3 x H x W -> logits B x K x H x W (no training-only heads run)."""
        return self.model(images)

    def predict_logits(self, images: Tensor) -> Tensor:
        """Logits at input size with the configured evaluation mode (whole, sliding window, multi-scale)."""
        hp = hparams_of(self)
        return predict_logits(
            self.forward,
            images,
            mode=hp.eval_mode,
            crop_size=hp.eval_crop_size,
            stride=hp.eval_stride,
            scales=hp.eval_scales,
            flip=hp.eval_flip,
        )

    # -------------------------------------------------------------------------------------------- checks
    def setup(self, stage: str) -> None:
        """Refuse a datamodule without labels for fit, validate and test (predict needs none)."""
        # Lightning sets Trainer.datamodule at run time without declaring it
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]
        if stage != "predict" and not getattr(datamodule, "has_labels", True):
            raise ValueError(
                f"{type(self).__name__} is supervised, but {type(datamodule).__name__} has no labels (no masks "
                f"folder?), so there is nothing to {stage} on. Add the masks, or learn from unlabelled images with "
                "pixcontrast.modules.PiCIE wrapped around the datamodule by pixcontrast.data.PiCIEDataModule."
            )

    def check_batch(self, batch: Mapping[str, Any], stage: str) -> None:
        """Reject unusable batches with a clear message.

        Every batch: a missing key, an empty batch, as many masks as images; in training also masks of the
        images' size (evaluation scores logits resized to the masks' size). The first batch of each stage also
        has its label values checked (one host sync, once per stage), so a wrong label set fails early instead
        of deep inside the cross-entropy.
        """
        for key in ("image", "mask"):
            if key not in batch:
                raise KeyError(f"{stage} batch has no {key!r} entry; batches must be dicts with 'image' and 'mask'")
        images, masks = batch["image"], batch["mask"]
        if images.shape[0] == 0:
            raise ValueError(f"received an empty {stage} batch (0 images); check the dataset and its sampler")
        if masks.shape[0] != images.shape[0] or (stage == "train" and masks.shape[-2:] != images.shape[-2:]):
            raise ValueError(
                f"{stage} batch: mask shape {tuple(masks.shape)} does not match image shape {tuple(images.shape)}"
            )
        if stage in self._batches_checked:
            return
        self._batches_checked.add(stage)
        hp = hparams_of(self)
        ignore, num_classes = hp.ignore_index, hp.num_classes
        labelled = masks[masks != ignore]
        if labelled.numel() == 0:
            rank_zero_warn(
                f"the first {stage} batch has no labelled pixel (all masks are {ignore}); "
                "check the dataset's label set and label files"
            )
            return
        low, high = int(labelled.min()), int(labelled.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{stage} batch has label values in [{low}, {high}] but the model has num_classes={num_classes} "
                f"(valid: 0..{num_classes - 1} and ignore_index={ignore}); fix num_classes or the dataset's "
                "label set / label mapping"
            )

    # ------------------------------------------------------------------------------------------- training
    def compute_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Loss terms of one training batch; ``loss`` is the total that is back-propagated."""
        output = self.model.forward_train(batch["image"])
        return self.supervised_losses(output, batch["mask"])

    def supervised_losses(self, output: Any, masks: Tensor) -> dict[str, Tensor]:
        """Cross-entropy (+ ``aux_weight`` x auxiliary cross-entropy) of a :class:`SegmenterOutput`, both
        weighted by ``class_weights`` when given."""
        ignore, weight = hparams_of(self).ignore_index, self.class_weights
        losses = {"ce": masked_cross_entropy(output.logits, masks, ignore, weight)}
        total = losses["ce"]
        if output.aux_logits is not None:
            losses["aux_ce"] = masked_cross_entropy(output.aux_logits, masks, ignore, weight)
            total = total + hparams_of(self).aux_weight * losses["aux_ce"]
        losses["loss"] = total
        return losses

    def check_finite(self, losses: dict[str, Tensor], names: Sequence[str] | None = None) -> None:
        """Raise ``FloatingPointError`` naming the step and the terms when a loss term is NaN or inf."""
        every = hparams_of(self).check_finite_every_n_steps
        if every <= 0 or self.global_step % every:
            return
        finite = torch.isfinite(torch.stack([value.detach().float() for value in losses.values()]))
        if bool(finite.all()):
            return
        bad = {name: value.item() for name, value in losses.items() if not torch.isfinite(value).all()}
        images = list(names) if names is not None else "unnamed"
        raise FloatingPointError(
            f"non-finite loss at global step {self.global_step} (images {images}): {bad}. "
            "Lower the learning rate, check the inputs for NaN/inf, or use bf16 instead of fp16 mixed precision."
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self.check_batch(batch, "train")
        losses = self.compute_losses(batch)
        self.check_finite(losses, batch.get("name"))
        batch_size = batch["image"].shape[0]
        self.log_dict(
            {f"train/{name}": value.detach() for name, value in losses.items()},
            prog_bar=False,
            batch_size=batch_size,
        )
        self.log("loss", losses["loss"].detach(), prog_bar=True, logger=False, batch_size=batch_size)
        return losses["loss"]

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluation_logits(self, batch: Mapping[str, Any]) -> Tensor:
        """Logits B x K x H x W at the size of the batch's ``mask`` (of ``image`` in a batch without masks).

        Each image runs through :meth:`predict_logits` at its own size and its logits are resized (bilinear)
        to its mask's size: a padded evaluation batch (see :func:`~pixcontrast.data.pad_collate`) holds the
        unpadded sizes in ``image_size`` and ``mask_size`` (B x 2), and its images run once per group of equal
        sizes, so the logits of every image equal those of a batch of one; the padding holds zeros. Reading
        the sizes is a host sync; without them the images and masks are taken as unpadded (no sync).
        """
        images = batch["image"]
        count = images.shape[0]
        shape = tuple(batch["mask"].shape[-2:]) if "mask" in batch else tuple(images.shape[-2:])
        image_sizes = batch["image_size"].tolist() if "image_size" in batch else [tuple(images.shape[-2:])] * count
        mask_sizes = batch["mask_size"].tolist() if "mask_size" in batch else [shape] * count
        return per_size_inference(self.predict_logits, images, image_sizes, mask_sizes, shape)

    def evaluation_step(self, batch: Mapping[str, Any], stage: str) -> None:
        """Validation/test step: :meth:`evaluation_logits`, the stage's metrics and (weighted) loss at mask size."""
        self.check_batch(batch, stage)
        logits = self.evaluation_logits(batch)
        masks = batch["mask"]
        loss = masked_cross_entropy(logits, masks, hparams_of(self).ignore_index, self.class_weights)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(logits.argmax(dim=1), masks)
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=masks.shape[0])

    def compute_stage_metrics(self, stage: str) -> dict[str, Tensor]:
        """Dataset-level ``miou`` (mean over the classes present), ``pixel_accuracy`` and ``per_class_iou``."""
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        values = metrics.compute()
        metrics.reset()
        per_class = values[f"{stage}/iou"]
        return {
            "miou": per_class.nanmean(),
            "pixel_accuracy": values[f"{stage}/pixel_accuracy"],
            "per_class_iou": per_class,
        }

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Label maps B x H x W (int64, at the masks' size, see :meth:`evaluation_logits`) with the names and
        images, for :class:`SegmentationPredictionWriter`."""
        label_map = self.evaluation_logits(batch).argmax(dim=1)
        return {"label_map": label_map, "name": batch.get("name"), "image": batch["image"]}

    def visualization_outputs(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Hook for :class:`SegmentationVisualizer`: ``prediction`` B x H x W (int64, at the masks' size)."""
        return {"prediction": self.evaluation_logits(batch).argmax(dim=1)}

    # ------------------------------------------------------------------------------------------ optimiser
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimiser (override to give heads their own learning rate)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        hp = hparams_of(self)
        optimizer: torch.optim.Optimizer
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                self.parameter_groups(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        else:
            optimizer = torch.optim.AdamW(self.parameter_groups(), lr=hp.lr, weight_decay=hp.weight_decay)
        total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        power = hp.poly_power

        def poly(step: int) -> float:
            return max(1.0 - step / total_steps, 0.0) ** power

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
