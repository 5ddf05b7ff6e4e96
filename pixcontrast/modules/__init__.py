"""LightningModules: supervised segmentation, pixel contrast, PiCIE and frozen encoders to evaluate."""

from pixcontrast.modules.base import SegmentationModule
from pixcontrast.modules.contrastive import ContrastiveSegmenter
from pixcontrast.modules.frozen_encoder import FrozenEncoder
from pixcontrast.modules.picie import PiCIE
from pixcontrast.moved import moved_names

__all__ = ["ContrastiveSegmenter", "FrozenEncoder", "PiCIE", "SegmentationModule"]

__getattr__ = moved_names(__name__, {"PixelContrast": "pixcontrast.losses"})
