"""FrozenEncoder: any timm encoder, frozen, as a LightningModule for the frozen-feature evaluations."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor

from pixcontrast.models import build_encoder


class FrozenEncoder(L.LightningModule):
    """A frozen encoder (always in eval mode, no trainable parameter) whose features the callbacks
    :class:`~pixcontrast.callbacks.LinearProbe` and :class:`~pixcontrast.callbacks.FreshClusterEvaluation`
    evaluate: ``trainer.validate(FrozenEncoder("resnet50", num_classes=27, pretrained=True), datamodule=...)``.
    Its own validation and test steps do nothing.

    Args:
        encoder, output_stride, pretrained, weights_path: see :func:`~pixcontrast.models.build_encoder`.
        num_classes: classes of the evaluation labels.
        feature_index: which of the encoder's maps is evaluated; default the decode head's (``head_index``).
        ignore_index: unlabelled pixels in the masks.
    """

    def __init__(
        self,
        encoder: str,
        num_classes: int,
        output_stride: int | None = None,
        pretrained: bool = False,
        weights_path: str | Path | None = None,
        feature_index: int | None = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = build_encoder(encoder, output_stride, pretrained=pretrained, weights_path=weights_path)
        self.encoder.requires_grad_(False).eval()
        self.feature_index = self.encoder.head_index if feature_index is None else feature_index
        if not -len(self.encoder.channels) <= self.feature_index < len(self.encoder.channels):
            raise ValueError(
                f"feature_index must index the encoder's {len(self.encoder.channels)} maps, got {feature_index}"
            )

    def train(self, mode: bool = True) -> FrozenEncoder:
        """The encoder stays in eval mode (frozen batch-norm statistics)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def evaluation_features(self, images: Tensor) -> Tensor:
        """The encoder's map ``feature_index``: ``B x 3 x H x W -> B x C x H / r x W / r``."""
        return self.encoder(images)[self.feature_index]

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Nothing: the evaluation callbacks score the features."""

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Nothing: the evaluation callbacks score the features."""
