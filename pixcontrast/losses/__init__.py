"""Losses (pure torch, no Lightning): supervised pixel contrast and its memory bank."""

from pixcontrast.losses.memory_bank import PixelMemoryBank
from pixcontrast.losses.pixel_contrast import (
    PixelContrastLoss,
    downsample_labels,
    sample_anchors,
    supervised_contrastive_loss,
)

__all__ = [
    "PixelContrastLoss",
    "PixelMemoryBank",
    "downsample_labels",
    "sample_anchors",
    "supervised_contrastive_loss",
]
