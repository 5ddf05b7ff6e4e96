"""Plain ``nn.Module`` segmentation models: timm encoders, decode heads, the pixel-contrast Segmenter, PiCIE's FPN."""

from pixcontrast.models.backbones import Encoder, HRNetV2Encoder, TimmEncoder, build_encoder
from pixcontrast.models.fpn import LightFPN, PiCIENetwork
from pixcontrast.models.heads import ASPPHead, FCNHead, OCRHead
from pixcontrast.models.segmenter import SegmentationNetwork, Segmenter, SegmenterOutput
from pixcontrast.moved import moved_names

__all__ = [
    "ASPPHead",
    "Encoder",
    "FCNHead",
    "HRNetV2Encoder",
    "LightFPN",
    "OCRHead",
    "PiCIENetwork",
    "SegmentationNetwork",
    "Segmenter",
    "SegmenterOutput",
    "TimmEncoder",
    "build_encoder",
]

__getattr__ = moved_names(__name__, {"ProjectionHead": "pixcontrast.losses"})
