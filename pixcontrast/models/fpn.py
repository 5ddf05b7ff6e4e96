"""PiCIE's light feature pyramid: 1x1 laterals, top-down bilinear upsample-and-add, finest-level output."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from pixcontrast.models.backbones import build_encoder


class LightFPN(nn.Module):
    """Merge multi-scale encoder features into one map at the resolution of the finest input level.

    Each level gets a 1x1 lateral convolution to ``out_channels``; from the coarsest level down, the running
    map is upsampled bilinearly to the next level's size and added to its lateral. There are no 3x3 output
    convolutions (PiCIE's design). With a ResNet's four stages (strides 4, 8, 16, 32) the output is at stride 4.

    Args:
        in_channels: channels of the input levels, finest first.
        out_channels: channels of the laterals and of the output.

    ``forward(features)``: list of ``B x C_i x h_i x w_i`` maps, finest first -> ``B x out_channels x h_0 x w_0``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128) -> None:
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError("LightFPN needs at least one input level, got in_channels=[]")
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.laterals = nn.ModuleList(nn.Conv2d(c, out_channels, kernel_size=1) for c in self.in_channels)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.laterals):
            raise ValueError(f"LightFPN expects {len(self.laterals)} feature levels, got {len(features)}")
        merged = self.laterals[-1](features[-1])
        for lateral, feature in zip(reversed(self.laterals[:-1]), reversed(features[:-1]), strict=True):
            upsampled = F.interpolate(merged, size=feature.shape[-2:], mode="bilinear", align_corners=False)
            merged = lateral(feature) + upsampled
        return merged


def fpn_levels(reductions: Sequence[float]) -> list[int]:
    """Indices of the encoder maps the FPN reads: the first map of each distinct reduction above 2.

    A ResNet's ``[2, 4, 8, 16, 32]`` gives ``[1, 2, 3, 4]`` (layer1..layer4; the stride-2 stem is skipped),
    HRNetV2's ``[4, 8, 16, 32, 4]`` its four branches, a ViT/16's pyramid ``[4, 8, 16, 32]`` all four levels,
    a ViT/8's ``[2, 4, 8, 16]`` the last three; an encoder with only stride-2 maps uses its coarsest one.
    """
    levels = [index for index, r in enumerate(reductions) if r > 2 and r not in reductions[:index]]
    return levels or [reductions.index(max(reductions))]


class PiCIENetwork(nn.Module):
    """PiCIE's feature extractor: a timm encoder, :class:`LightFPN`, per-pixel L2 normalisation.

    Args:
        encoder: timm model name (default ResNet-18, as the paper).
        feature_dim: channels of the output features (paper 128).
        pretrained: load timm's pretrained weights (``name.tag`` picks them; local cache, else downloaded).
        weights_path: local weights file for the encoder (exclusive with ``pretrained``).

    CNNs stay undilated so the FPN merges their four stages; a plain ViT's simple pyramid (see
    :class:`~pixcontrast.models.backbones.ViTEncoder`) gives the levels (DINO ViT-S/8: strides 4, 8, 16).

    ``forward(images B x 3 x H x W) -> B x feature_dim x H / r x W / r`` unit-norm features, ``r = reduction``
    (4 for ResNets, Swin, ConvNeXt and ViT/8 or ViT/16: a 320 x 320 input gives 80 x 80 maps; 3.5 for a ViT/14).
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        feature_dim: int = 128,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder, pretrained=pretrained, weights_path=weights_path, dilate=False)
        self.levels = fpn_levels(list(self.encoder.reductions))
        self.reduction = self.encoder.reductions[self.levels[0]]
        self.fpn = LightFPN([self.encoder.channels[i] for i in self.levels], feature_dim)

    def forward(self, images: Tensor) -> Tensor:
        maps = self.encoder(images)
        return F.normalize(self.fpn([maps[i] for i in self.levels]), dim=1)
