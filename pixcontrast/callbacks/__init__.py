"""Lightning callbacks: k-means refresh, prediction writer and visualisations."""

from pixcontrast.callbacks.kmeans import KMeansRefresh
from pixcontrast.callbacks.prediction_writer import SegmentationPredictionWriter
from pixcontrast.callbacks.random_state import RandomStateCheckpoint
from pixcontrast.callbacks.visualization import SegmentationVisualizer

__all__ = ["KMeansRefresh", "RandomStateCheckpoint", "SegmentationPredictionWriter", "SegmentationVisualizer"]
