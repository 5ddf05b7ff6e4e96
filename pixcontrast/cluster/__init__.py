"""Clustering in pure torch (no Lightning): chunked, streaming, distributed k-means."""

from pixcontrast.cluster.kmeans import KMeans
from pixcontrast.cluster.sampling import UniformSubsample

__all__ = ["KMeans", "UniformSubsample"]
