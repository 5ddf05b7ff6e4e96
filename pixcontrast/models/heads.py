"""Decode heads: FCN, DeepLabV3 ASPP, OCR.

All heads use plain ``nn.BatchNorm2d`` (so ``nn.SyncBatchNorm.convert_sync_batchnorm`` converts them) and
never normalise a tensor with a single value per channel, so they train with batch size 1: the ASPP image
pooling branch has no norm, and OCR's object features have one value per class (at least 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FCNHead(nn.Module):
    """3x3 conv-BN-ReLU -> dropout -> 1x1 classifier; also the auxiliary head.

    ``forward(features B x C_in x h x w) -> logits B x num_classes x h x w``.

    Args:
        in_channels: channels of the features read.
        num_classes: K, the logits' channels.
        channels: width of the 3x3 conv.
        dropout: dropout before the classifier.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, kernel_size=3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.conv(features)))


def aspp_rates(reduction: int) -> tuple[int, int, int]:
    """DeepLabV3 atrous rates for a feature stride: (6, 12, 18) at 16, (12, 24, 36) at 8, scaled in general."""
    return tuple(max(1, rate * 16 // reduction) for rate in (6, 12, 18))  # type: ignore[return-value]


class ASPPHead(nn.Module):
    """DeepLabV3 head: atrous spatial pyramid pooling (1x1, three dilated 3x3, image pooling) -> classifier.

    The image pooling branch is global average pooling -> 1x1 conv (with bias) -> ReLU, without a norm:
    a BatchNorm over a 1 x 1 map fails in training with batch size 1.
    ``forward(features B x C_in x h x w) -> logits B x num_classes x h x w``.

    Args:
        in_channels: channels of the features read.
        num_classes: K, the logits' channels.
        channels: width of the branches, the projection and the 3x3 bottleneck.
        rates: dilations of the three 3x3 branches (:func:`aspp_rates` scales them to the stride).
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        rates: Sequence[int] = (12, 24, 36),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels, 1)]
            + [conv_bn_relu(in_channels, channels, 3, dilation=rate) for rate in rates]
        )
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True)
        )
        self.project = conv_bn_relu((len(rates) + 2) * channels, channels, 1)
        self.bottleneck = conv_bn_relu(channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Tensor) -> Tensor:
        height, width = features.shape[-2:]
        pooled = self.image_pool(features).expand(-1, -1, height, width)
        pyramid = torch.cat([branch(features) for branch in self.branches] + [pooled], dim=1)
        return self.classifier(self.dropout(self.bottleneck(self.project(pyramid))))


class ObjectAttention(nn.Module):
    """OCR's object attention: each pixel attends over the K object-region representations.

    ``forward(pixels B x C x h x w, objects B x C x K x 1) -> context B x C x h x w``.
    """

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.query = nn.Sequential(conv_bn_relu(channels, key_channels), conv_bn_relu(key_channels, key_channels))
        self.key = nn.Sequential(conv_bn_relu(channels, key_channels), conv_bn_relu(key_channels, key_channels))
        self.value = conv_bn_relu(channels, key_channels)
        self.out = conv_bn_relu(key_channels, channels)
        self.scale = key_channels**-0.5

    def forward(self, pixels: Tensor, objects: Tensor) -> Tensor:
        batch, _, height, width = pixels.shape
        query = self.query(pixels).flatten(2).transpose(1, 2)  # B x N x Ck
        key = self.key(objects).flatten(2)  # B x Ck x K
        value = self.value(objects).flatten(2).transpose(1, 2)  # B x K x Ck
        attention = torch.softmax(torch.bmm(query, key) * self.scale, dim=-1)  # B x N x K
        context = torch.bmm(attention, value).transpose(1, 2).reshape(batch, -1, height, width)
        return self.out(context)


class OCRHead(nn.Module):
    """Object-contextual representations (OCRNet) head.

    Soft object regions (softmax over pixels of the auxiliary head's logits) gather one representation per
    class from the pixel features; each pixel attends over them (:class:`ObjectAttention`); the context is
    concatenated with the pixel features, fused by a 1x1 conv-BN-ReLU and classified.
    OCRNet uses ``channels=512, key_channels=256``.

    ``forward(features B x C_in x h x w, region_logits B x K x h' x w') -> logits B x K x h x w``
    (region logits are resized to h x w).

    Args:
        in_channels: channels of the features read.
        num_classes: K, the logits' channels and the object regions (at least 2).
        channels: width of the pixel and object representations.
        key_channels: width of the attention's queries and keys.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        key_channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"the OCR head needs num_classes >= 2 (one object region per class), got {num_classes}")
        self.bottleneck = conv_bn_relu(in_channels, channels, 3)
        self.attention = ObjectAttention(channels, key_channels)
        self.fuse = conv_bn_relu(2 * channels, channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Tensor, region_logits: Tensor) -> Tensor:
        pixels = self.bottleneck(features)  # B x C x h x w
        regions = F.interpolate(region_logits, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        weights = torch.softmax(regions.flatten(2), dim=2)  # B x K x N
        objects = torch.bmm(weights, pixels.flatten(2).transpose(1, 2))  # B x K x C
        objects = objects.transpose(1, 2).unsqueeze(-1)  # B x C x K x 1
        context = self.attention(pixels, objects)
        fused = self.fuse(torch.cat([context, pixels], dim=1))
        return self.classifier(self.dropout(fused))
