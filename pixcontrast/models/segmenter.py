"""Segmenter = encoder + decode head (+ auxiliary head, training only)."""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from pixcontrast.models.backbones import Encoder, build_encoder
from pixcontrast.models.heads import ASPPHead, FCNHead, OCRHead, aspp_rates

HEADS = ("fcn", "aspp", "ocr")


class SegmenterOutput(NamedTuple):
    """Training outputs, all at feature resolution h x w (not upsampled).

    ``logits`` B x K x h x w; ``aux_logits`` B x K x h x w or None; ``features`` the B x C x h x w map the
    decode head reads (ResNet: layer4; HRNetV2: the 720-channel concat, before OCR; ViT: the last block at the
    patch stride; Swin / ConvNeXt: the last stage), which :class:`~pixcontrast.losses.PixelContrast` embeds.
    """

    logits: Tensor
    aux_logits: Tensor | None
    features: Tensor


class SegmentationNetwork(nn.Module):
    """The inference network: encoder -> decode head (OCR: + its region head) -> logits at input size.

    ``forward(images B x 3 x H x W) -> logits B x K x H x W`` (bilinear, align_corners=False).
    """

    def __init__(self, encoder: Encoder, decode_head: nn.Module, region_head: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.decode_head = decode_head
        self.region_head = region_head

    def decode(self, features: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        """Encoder features -> (logits B x K x h x w, OCR region logits B x K x h' x w' or None)."""
        head_features = features[self.encoder.head_index]
        if self.region_head is None:
            return self.decode_head(head_features), None
        regions = self.region_head(features[self.encoder.aux_index])
        return self.decode_head(head_features, regions), regions

    def forward(self, images: Tensor) -> Tensor:
        logits, _ = self.decode(self.encoder(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """Semantic segmentation network: a timm encoder, a decode head and an optional training-only auxiliary head.

    Args:
        num_classes: K.
        encoder: timm model name, optionally with the tag of its pretrained weights (``resnet101`` is
            DeepLabV3's dilated ResNet, ``hrnet_w48`` HRNetV2-W48, ``vit_small_patch16_224`` /
            ``vit_small_patch8_224.dino`` a plain ViT with a simple feature pyramid; Swin, ConvNeXt and any
            other timm model with ``features_only`` work).
        head: ``fcn``, ``aspp`` (DeepLabV3) or ``ocr`` (OCRNet; ``head_channels=512`` as in the paper).
        aux_head: add an FCN auxiliary head on the auxiliary map (ResNet: layer3). OCR always has one: its
            logits are the soft object regions, returned as ``aux_logits``.
        pretrained, weights_path: timm's pretrained weights (local cache, else downloaded) or a local file.
        output_stride: None (default) is 8 for CNNs timm can dilate and the encoder's own stride otherwise;
            8, 16 or 32 ask for that stride; for a ViT any stride of its pyramid; HRNet ignores it.
        head_channels: width of the decode and auxiliary heads.
        dropout: dropout before the classifiers.

    ``forward`` is the inference path and never runs the auxiliary head (except OCR's regions). The pixel-contrast
    projection head is not part of the network: :class:`~pixcontrast.losses.PixelContrast` owns it.
    """

    def __init__(
        self,
        num_classes: int,
        encoder: str = "resnet18",
        head: str = "fcn",
        aux_head: bool = False,
        pretrained: bool = False,
        weights_path: str | None = None,
        output_stride: int | None = None,
        head_channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")
        if head_channels <= 0:
            raise ValueError(f"head_channels must be positive, got {head_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        backbone = build_encoder(encoder, output_stride=output_stride, pretrained=pretrained, weights_path=weights_path)
        in_channels = backbone.head_channels
        region_head = None
        if head == "fcn":
            decode_head: nn.Module = FCNHead(in_channels, num_classes, head_channels, dropout)
        elif head == "aspp":
            reduction = backbone.head_reduction
            assert isinstance(reduction, int)  # the decode map's stride is an output stride, a whole number
            rates = aspp_rates(reduction)
            decode_head = ASPPHead(in_channels, num_classes, head_channels, rates, dropout)
        else:
            decode_head = OCRHead(in_channels, num_classes, head_channels, max(head_channels // 2, 1), dropout)
            region_head = FCNHead(backbone.aux_channels, num_classes, head_channels, dropout)
        self.network = SegmentationNetwork(backbone, decode_head, region_head)
        self.aux_head = (
            FCNHead(backbone.aux_channels, num_classes, head_channels, dropout)
            if aux_head and region_head is None
            else None
        )
        self.num_classes = num_classes

    @property
    def encoder(self) -> Encoder:
        return self.network.encoder

    def forward(self, images: Tensor) -> Tensor:
        """Inference: images B x 3 x H x W -> logits B x K x H x W."""
        return self.network(images)

    def forward_train(self, images: Tensor) -> SegmenterOutput:
        """Training: images B x 3 x H x W -> :class:`SegmenterOutput` at feature resolution."""
        features = self.network.encoder(images)
        logits, regions = self.network.decode(features)
        aux_logits = regions
        if self.aux_head is not None:
            aux_logits = self.aux_head(features[self.encoder.aux_index])
        return SegmenterOutput(logits, aux_logits, features[self.encoder.head_index])

    def inference_network(self) -> SegmentationNetwork:
        """The network used for inference and export (shares this module's parameters; no training-only heads)."""
        return self.network
