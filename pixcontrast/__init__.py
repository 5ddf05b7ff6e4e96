"""pixcontrast: Lightning plug-ins for supervised pixel contrast and PiCIE unsupervised segmentation.

The public API is re-exported here and imported lazily, so ``import pixcontrast`` stays fast:
``pixcontrast.ContrastiveSegmenter`` imports Lightning only when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_PUBLIC = {
    "pixcontrast.losses": (
        "sample_anchors",
        "supervised_contrastive_loss",
        "PixelContrast",
        "PixelContrastSettings",
        "PixelContrastLoss",
        "PixelMemoryBank",
    ),
    "pixcontrast.cluster": ("KMeans",),
    "pixcontrast.metrics": ("hungarian_match", "HungarianMatchedSegmentation"),
    "pixcontrast.models": ("Segmenter",),
    "pixcontrast.modules": ("SegmentationModule", "ContrastiveSegmenter", "PiCIE"),
    "pixcontrast.data": (
        "SyntheticScenesDataModule",
        "CityscapesDataModule",
        "PascalContextDataModule",
        "COCOStuffDataModule",
    ),
    "pixcontrast.callbacks": ("KMeansRefresh", "SegmentationVisualizer", "SegmentationPredictionWriter"),
}
_WHERE = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'pixcontrast' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
