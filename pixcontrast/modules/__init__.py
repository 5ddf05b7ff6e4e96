"""LightningModules: supervised segmentation, pixel contrast and PiCIE."""

from pixcontrast.modules.base import SegmentationModule
from pixcontrast.modules.contrastive import ContrastiveSegmenter
from pixcontrast.modules.picie import PiCIE
from pixcontrast.modules.pixel_contrast import PixelContrast

__all__ = ["ContrastiveSegmenter", "PiCIE", "PixelContrast", "SegmentationModule"]
