"""Lightning callbacks: k-means refresh, frozen-feature evaluations, prediction writer and visualisations."""

from pixcontrast.callbacks.feature_evaluation import FeatureEvaluation
from pixcontrast.callbacks.fresh_clusters import FreshClusterEvaluation
from pixcontrast.callbacks.kmeans import KMeansRefresh
from pixcontrast.callbacks.linear_probe import LinearProbe
from pixcontrast.callbacks.prediction_writer import SegmentationPredictionWriter
from pixcontrast.callbacks.random_state import RandomStateCheckpoint
from pixcontrast.callbacks.visualization import SegmentationVisualizer

__all__ = [
    "FeatureEvaluation",
    "FreshClusterEvaluation",
    "KMeansRefresh",
    "LinearProbe",
    "RandomStateCheckpoint",
    "SegmentationPredictionWriter",
    "SegmentationVisualizer",
]
