"""Losses (pure torch, no Lightning): the pixel-contrast term with its loss, head and memory bank; PiCIE's losses."""

from pixcontrast.losses.cluster_head import ClusterHead, assign_clusters, cluster_scores, cluster_weights
from pixcontrast.losses.contrast import supervised_contrastive_loss
from pixcontrast.losses.contrast_settings import PixelContrastSettings
from pixcontrast.losses.contrast_term import ContrastTerms, PixelContrast
from pixcontrast.losses.memory_bank import PixelMemoryBank, class_memory_contrastive_loss
from pixcontrast.losses.picie import PiCIELossOutput, ViewGeometry, picie_loss, warp_features
from pixcontrast.losses.pixel_contrast_loss import PixelContrastLoss
from pixcontrast.losses.projection_head import ProjectionHead
from pixcontrast.losses.sampling import downsample_labels, gather_pixels, sample_anchor_pixels, sample_anchors

__all__ = [
    "ClusterHead",
    "ContrastTerms",
    "PiCIELossOutput",
    "PixelContrast",
    "PixelContrastLoss",
    "PixelContrastSettings",
    "PixelMemoryBank",
    "ProjectionHead",
    "ViewGeometry",
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
