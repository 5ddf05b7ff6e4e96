"""Metrics for segmentation without labels at training time."""

from pixcontrast.metrics.unsupervised import (
    HungarianMatchedSegmentation,
    hungarian_match,
    majority_match,
    scores_from_assignment,
)

__all__ = ["HungarianMatchedSegmentation", "hungarian_match", "majority_match", "scores_from_assignment"]
