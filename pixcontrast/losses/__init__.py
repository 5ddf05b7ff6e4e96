"""Losses (pure torch, no Lightning): supervised pixel contrast, its memory bank, and PiCIE's cluster losses."""

from pixcontrast.losses.contrast import supervised_contrastive_loss
from pixcontrast.losses.memory_bank import PixelMemoryBank, class_memory_contrastive_loss
from pixcontrast.losses.picie import (
    PiCIELoss,
    PiCIELossOutput,
    assign_clusters,
    cluster_scores,
    cluster_weights,
    picie_loss,
    warp_features,
)
from pixcontrast.losses.pixel_contrast import PixelContrastLoss
from pixcontrast.losses.sampling import downsample_labels, gather_pixels, sample_anchor_pixels, sample_anchors

__all__ = [
    "PiCIELoss",
    "PiCIELossOutput",
    "PixelContrastLoss",
    "PixelMemoryBank",
    "assign_clusters",
    "class_memory_contrastive_loss",
    "cluster_scores",
    "cluster_weights",
    "downsample_labels",
    "gather_pixels",
    "picie_loss",
    "sample_anchor_pixels",
    "sample_anchors",
    "supervised_contrastive_loss",
    "warp_features",
]
