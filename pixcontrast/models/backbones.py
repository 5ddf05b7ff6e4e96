"""timm backbones as multi-scale encoders: dilated ResNet, HRNetV2 and any timm ``features_only`` model.

Every encoder is built one way, ``timm.create_model(name, features_only=True, pretrained=False, ...)``, and
returns a list of feature maps. It also says which map the decode head reads (``head_index``) and which the
auxiliary head reads (``aux_index``), with the channels and reductions (strides) of every map, so heads can
be sized without running the network.

Weights are never downloaded: pass ``weights_path`` (a local checkpoint), or ``pretrained=True`` when timm's
weights for the model already sit in the local Hugging Face / torch hub cache.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixcontrast.models.weights import cached_pretrained_file, load_weights

OUTPUT_STRIDES = (8, 16, 32)
HRNET_BRANCHES = (1, 2, 3, 4)  # out_indices of timm's HRNet feature model: the four raw branch outputs


class Encoder(nn.Module):
    """Multi-scale encoder: images B x 3 x H x W -> list of feature maps B x C_i x H / r_i x W / r_i.

    Attributes:
        channels: C_i of every returned map.
        reductions: r_i (stride w.r.t. the input) of every returned map.
        head_index: index of the map the decode head (and the projection head) reads.
        aux_index: index of the map the auxiliary head reads.
    """

    channels: tuple[int, ...]
    reductions: tuple[int, ...]
    head_index: int
    aux_index: int

    @property
    def head_channels(self) -> int:
        return self.channels[self.head_index]

    @property
    def aux_channels(self) -> int:
        return self.channels[self.aux_index]

    @property
    def head_reduction(self) -> int:
        return self.reductions[self.head_index]


class TimmEncoder(Encoder):
    """Any timm model with ``features_only``; ResNets with ``output_stride=8`` are the dilated ResNets of DeepLabV3.

    The decode head reads the last map (ResNet: layer4), the auxiliary head the one before (ResNet: layer3).
    """

    def __init__(
        self,
        name: str,
        output_stride: int | None = None,
        pretrained: bool = False,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if output_stride is not None and output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES} or None, got {output_stride}")
        kwargs = {} if output_stride is None else {"output_stride": output_stride}
        self.model = create_timm_features(name, pretrained, weights_path, **kwargs)
        self.channels = tuple(self.model.feature_info.channels())
        self.reductions = tuple(self.model.feature_info.reduction())
        self.head_index = len(self.channels) - 1
        self.aux_index = max(len(self.channels) - 2, 0)

    def forward(self, images: Tensor) -> list[Tensor]:
        return list(self.model(images))


class HRNetV2Encoder(Encoder):
    """HRNetV2: the four raw HRNet branches, plus all four upsampled (bilinear) to stride 4 and concatenated.

    Returns ``[branch1, branch2, branch3, branch4, concat]``; decode and auxiliary heads both read ``concat``
    (HRNet-W48: 48 + 96 + 192 + 384 = 720 channels at stride 4). The stride is fixed by the architecture.
    HRNet's fusion needs sizes divisible by 32: other sizes (e.g. 520 x 520 crops, whole PASCAL images) are
    zero-padded at the bottom/right and each branch is cropped back to ``ceil(size / reduction)``.
    """

    def __init__(self, name: str, pretrained: bool = False, weights_path: str | Path | None = None) -> None:
        super().__init__()
        self.model = create_timm_features(
            name, pretrained, weights_path, feature_location="", out_indices=HRNET_BRANCHES
        )
        branch_channels = tuple(self.model.feature_info.channels())
        branch_reductions = tuple(self.model.feature_info.reduction())
        self.channels = (*branch_channels, sum(branch_channels))
        self.reductions = (*branch_reductions, branch_reductions[0])
        self.head_index = self.aux_index = len(branch_channels)

    def forward(self, images: Tensor) -> list[Tensor]:
        height, width = images.shape[-2:]
        divisor = max(self.reductions)
        pad_h, pad_w = -height % divisor, -width % divisor
        branches = list(self.model(F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images))
        if pad_h or pad_w:
            branches = [
                branch[..., : -(-height // reduction), : -(-width // reduction)]
                for branch, reduction in zip(branches, self.reductions)
            ]
        size = branches[0].shape[-2:]
        upsampled = [branches[0]] + [
            F.interpolate(branch, size=size, mode="bilinear", align_corners=False) for branch in branches[1:]
        ]
        return [*branches, torch.cat(upsampled, dim=1)]


def is_hrnet(name: str) -> bool:
    """Whether the timm model ``name`` (optionally ``name.tag``) is an HRNet."""
    return name.split(".")[0].startswith("hrnet")


def build_encoder(
    name: str,
    output_stride: int | None = 8,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
) -> Encoder:
    """Build the encoder for timm model ``name``: :class:`HRNetV2Encoder` for HRNets, else :class:`TimmEncoder`.

    ``output_stride`` (8, 16, 32 or None for the model's default) dilates the last stages of models that
    support it (ResNet, EfficientNet, MobileNet, ...); HRNet ignores it (its decode map is always stride 4).
    """
    if is_hrnet(name):
        return HRNetV2Encoder(name, pretrained=pretrained, weights_path=weights_path)
    return TimmEncoder(name, output_stride=output_stride, pretrained=pretrained, weights_path=weights_path)


def create_timm_features(
    name: str, pretrained: bool = False, weights_path: str | Path | None = None, **kwargs: Any
) -> nn.Module:
    """``timm.create_model(name, features_only=True, **kwargs)`` with local weights only (never a download)."""
    check_model_name(name)
    if pretrained and weights_path is not None:
        raise ValueError("pass either pretrained=True or weights_path, not both")
    timm_kwargs: dict[str, Any] = {"features_only": True, "pretrained": False, **kwargs}
    if pretrained:
        cached = cached_pretrained_file(name)
        if cached is None:
            raise RuntimeError(
                f"pretrained=True: no pretrained weights for {name!r} in the local timm / Hugging Face / torch hub "
                "cache, and pixcontrast never downloads. Download the weights on a machine with internet access "
                "and pass weights_path=<file> (or copy them into the cache)."
            )
        timm_kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": cached})
    try:
        model = timm.create_model(name, **timm_kwargs)
    except (TypeError, AssertionError, ValueError) as error:
        if "output_stride" not in kwargs:
            raise
        raise ValueError(
            f"encoder {name!r} cannot be built with output_stride={kwargs['output_stride']} ({error}); "
            "pass output_stride=None to use the model's own stride"
        ) from error
    if weights_path is not None:
        load_weights(model, weights_path)
    return model


def check_model_name(name: str) -> None:
    """Raise ``ValueError`` naming close matches when timm has no model ``name``."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models() for the names"
        raise ValueError(f"unknown encoder {name!r}{hint}")
