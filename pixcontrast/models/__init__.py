"""Plain ``nn.Module`` segmentation models: timm encoders, decode heads, the pixel-contrast Segmenter."""

from pixcontrast.models.backbones import Encoder, HRNetV2Encoder, TimmEncoder, build_encoder
from pixcontrast.models.heads import ASPPHead, FCNHead, OCRHead, ProjectionHead
from pixcontrast.models.segmenter import SegmentationNetwork, Segmenter, SegmenterOutput

__all__ = [
    "ASPPHead",
    "Encoder",
    "FCNHead",
    "HRNetV2Encoder",
    "OCRHead",
    "ProjectionHead",
    "SegmentationNetwork",
    "Segmenter",
    "SegmenterOutput",
    "TimmEncoder",
    "build_encoder",
]
