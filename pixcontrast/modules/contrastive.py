"""ContrastiveSegmenter: cross-entropy plus supervised pixel contrast (Wang et al., ICCV 2021)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any, TypedDict

import torch.nn.functional as F
from torch import Tensor

from pixcontrast.losses import PixelContrast, PixelContrastSettings
from pixcontrast.models import SegmenterOutput
from pixcontrast.modules.base import SegmentationModule, hparams_of

DEFAULT_CONTRAST = PixelContrastSettings(warmup_steps=5000)
"""The term's settings when none are given: :class:`PixelContrastSettings`' defaults with the papers' warm-up."""

FLAT_OPTIONS = tuple(field.name for field in dataclasses.fields(PixelContrastSettings) if field.name != "ignore_index")
"""Contrast options given flat, as pixcontrast 0.1 took them (``ignore_index`` is the module's own argument)."""


class ContrastInputs(TypedDict):
    """What :meth:`ContrastiveSegmenter.contrast_inputs` gives the term: keywords of ``PixelContrast.terms``."""

    features: Tensor
    masks: Tensor
    logits: Tensor


class ContrastiveSegmenter(SegmentationModule):
    """A :class:`SegmentationModule` trained with CE + ``loss_weight`` x pixel contrast.

    The term is a :class:`~pixcontrast.losses.PixelContrast` (``self.contrast``) built from ``contrast`` on the
    map the decode head reads (``model.encoder.head_channels`` channels): its projection head runs in training
    only, so ``forward``, validation, test, predict and export never touch it. It switches on once
    ``global_step >= warmup_steps``, in every run (single-process too); before that the head does not run and
    gets zero gradients (DDP needs no ``find_unused_parameters``). ``memory_size > 0`` turns on the memory
    variant: the loss contrasts with the bank as it was before the batch, then enqueues the batch (in training
    mode). The term's ``ignore_index`` is the module's (the labels are the same).

    Override :meth:`contrast_inputs` to change what the term sees (another feature map, other masks) without
    copying :meth:`compute_losses`; when the features have another channel count, also build ``self.contrast``
    for it in :meth:`configure_losses`.

    Args:
        num_classes: ``K``.
        contrast: the term's options (``model.init_args.contrast.<option>`` in a config); the defaults of
            :class:`~pixcontrast.losses.PixelContrastSettings` with ``warmup_steps=5000`` when not given. A
            mapping of its fields is taken too (what checkpoints hold).
        **kwargs: the arguments of :class:`SegmentationModule`.
    """

    def __init__(self, num_classes: int, *, contrast: PixelContrastSettings = DEFAULT_CONTRAST, **kwargs: Any) -> None:
        settings = contrast_settings(contrast).replace(**flat_options(kwargs))
        # save_hyperparameters() in super().__init__ records the arguments as they are here: ``contrast`` as a plain
        # dict (checkpoints load with weights_only=True), the flat options of 0.1 folded into it.
        contrast = dataclasses.asdict(settings)  # type: ignore[assignment]
        super().__init__(num_classes, **kwargs)
        self.hparams["contrast"] = contrast  # a subclass forwarding **kwargs had its own ``contrast`` recorded

    def configure_losses(self) -> None:
        """The pixel-contrast term on the map the decode head reads, from the ``contrast`` hyper-parameters."""
        hp = hparams_of(self)
        settings = contrast_settings(hp.contrast)
        if settings.ignore_index not in (PixelContrastSettings.ignore_index, hp.ignore_index):
            raise ValueError(
                f"contrast.ignore_index={settings.ignore_index} differs from ignore_index={hp.ignore_index}: the "
                "cross-entropy and the contrast term read the same labels; set the module's ignore_index alone"
            )
        self.contrast = PixelContrast(
            self.model.encoder.head_channels, hp.num_classes, settings, ignore_index=hp.ignore_index
        )

    def contrast_inputs(self, batch: dict[str, Any], output: SegmenterOutput) -> ContrastInputs:
        """What the contrast term sees: ``features`` B x C x h x w, ``masks`` B x H x W, ``logits`` B x K x h x w.

        Default: the map the decode head reads, the batch's masks and the decode head's logits.
        """
        return {"features": output.features, "masks": batch["mask"], "logits": output.logits}

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        output = self.model.forward_train(batch["image"])
        losses = self.supervised_losses(output, batch["mask"])
        contrast = self.contrast.terms(**self.contrast_inputs(batch, output), step=self.global_step)
        if contrast.loss is not None:  # None during the warm-up, where ``weighted`` is the idle head's zero
            losses["contrast"] = contrast.loss
        losses["loss"] = losses["loss"] + contrast.weighted
        return losses

    def visualization_outputs(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Hook for :class:`SegmentationVisualizer`: ``prediction`` B x H x W and the ``embeddings`` B x D x h x w."""
        output = self.model.forward_train(batch["image"])
        prediction = F.interpolate(output.logits, size=batch["image"].shape[-2:], mode="bilinear", align_corners=False)
        return {"prediction": prediction.argmax(dim=1), "embeddings": self.contrast.embed(output.features)}


def contrast_settings(contrast: PixelContrastSettings | Mapping[str, Any]) -> PixelContrastSettings:
    """``contrast`` itself, or its fields (a mapping, as in checkpoints) over :data:`DEFAULT_CONTRAST`."""
    return contrast if isinstance(contrast, PixelContrastSettings) else DEFAULT_CONTRAST.replace(**contrast)


def flat_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The contrast options given flat (a 0.1 checkpoint or call), taken out of ``kwargs``, with a ``FutureWarning``."""
    flat = {name: kwargs.pop(name) for name in FLAT_OPTIONS if name in kwargs}
    if flat:
        warnings.warn(
            f"ContrastiveSegmenter takes its contrast options as one argument since pixcontrast 0.2.0: the flat "
            f"{', '.join(flat)} (hyper-parameters of a 0.1 checkpoint, or 0.1-style arguments) are read as "
            f"contrast=PixelContrastSettings({', '.join(f'{k}={v!r}' for k, v in flat.items())}). Pass "
            "contrast=PixelContrastSettings(...) in Python, model.init_args.contrast.<option> in a config; a "
            "checkpoint saved again holds the new form. Flat options will stop working in a future release.",
            FutureWarning,
            stacklevel=3,
        )
    return flat
