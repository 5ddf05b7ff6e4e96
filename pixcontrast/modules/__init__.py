"""LightningModules: supervised segmentation, pixel contrast and PiCIE."""

from pixcontrast.modules.base import SegmentationModule
from pixcontrast.modules.contrastive import ContrastiveSegmenter
from pixcontrast.modules.picie import PiCIE
from pixcontrast.moved import moved_names

__all__ = ["ContrastiveSegmenter", "PiCIE", "SegmentationModule"]

__getattr__ = moved_names(__name__, {"PixelContrast": "pixcontrast.losses"})
