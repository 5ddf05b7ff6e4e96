"""timm backbones as multi-scale encoders: CNNs (dilated where timm can), HRNetV2, Swin / ConvNeXt, plain ViTs.

Every encoder returns a list of ``B x C_i x h_i x w_i`` maps (channels-first, also for Swin) and says which map
the decode head and the projection head read (``head_index``) and which the auxiliary head reads
(``aux_index``), with the channels and reductions (strides) of every map, so heads can be sized without running
the network. Inputs of any size work: they are zero-padded at the bottom/right to a multiple of the encoder's
coarsest stride (a ViT: its patch size) and every map is cropped back to ``ceil(size / reduction)``.

Families (``build_encoder`` picks one from the timm name), their maps and the map the decode / projection head reads:

- HRNet: the 4 branches (strides 4, 8, 16, 32) + their concatenation (4); heads read the concatenation.
- plain ViT (DeiT, DINO, DINOv2, with or without registers): a simple pyramid of the last block at strides
  ``p/4, p/2, p, 2p`` for patch size ``p``; heads read the last block itself (``p``) or the level
  ``output_stride`` names.
- any other timm model (ResNet, ConvNeXt, Swin, ...): timm's ``features_only`` stages; heads read the last
  stage, the auxiliary head the one before.

Weights: ``pretrained=True`` loads timm's pretrained weights for the name or ``name.tag`` (local cache first,
else downloaded, see :mod:`pixcontrast.models.weights`); ``weights_path`` loads a local checkpoint.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models import FeatureInfo
from torch import Tensor, nn

from pixcontrast.models.weights import load_weights, pretrained_weights_file

OUTPUT_STRIDES = (8, 16, 32)
DENSE_OUTPUT_STRIDE = 8  # the default for CNNs timm can dilate (DeepLabV3's dilated ResNet)
HRNET_BRANCHES = (1, 2, 3, 4)  # out_indices of timm's HRNet feature model: the four raw branch outputs
VIT_PYRAMID_SCALES = (4, 2, 1, 0.5)  # ViTDet's simple feature pyramid: upsample x4, x2, keep, downsample x2
# timm model kwargs that let a family take inputs of any size (multiples of the patch size after padding)
ANY_SIZE_KWARGS = {"vision_transformer": {"dynamic_img_size": True}, "swin_transformer": {"strict_img_size": False}}


class Encoder(nn.Module):
    """Multi-scale encoder: images B x 3 x H x W -> list of feature maps B x C_i x ceil(H / r_i) x ceil(W / r_i).

    Attributes:
        channels: C_i of every returned map.
        reductions: r_i (stride w.r.t. the input) of every returned map (a ViT/14's pyramid has 3.5 and 7).
        head_index: index of the map the decode head (and the projection head) reads.
        aux_index: index of the map the auxiliary head (OCR: the region head) reads.
    """

    channels: tuple[int, ...]
    reductions: tuple[float, ...]
    head_index: int
    aux_index: int

    @property
    def head_channels(self) -> int:
        return self.channels[self.head_index]

    @property
    def aux_channels(self) -> int:
        return self.channels[self.aux_index]

    @property
    def head_reduction(self) -> float:
        return self.reductions[self.head_index]


def run_padded(
    forward: Callable[[Tensor], Sequence[Tensor]], images: Tensor, divisor: int, reductions: Sequence[float]
) -> list[Tensor]:
    """``forward`` on ``images`` zero-padded at the bottom/right to a multiple of ``divisor``; every map cropped back.

    Map ``i`` of the padded input is cropped to ``ceil(H / reductions[i]) x ceil(W / reductions[i])``, which is
    what the unpadded input covers. Always pads and crops (possibly by 0) so traced / exported graphs keep
    every input size.
    """
    height, width = images.shape[-2:]
    # non-negative integer arithmetic only: ONNX rounds negative integer divisions toward zero
    padded = F.pad(images, (0, (divisor - width % divisor) % divisor, 0, (divisor - height % divisor) % divisor))
    return [
        feature[..., : ceil_div(height, reduction), : ceil_div(width, reduction)]
        for feature, reduction in zip(forward(padded), reductions, strict=True)
    ]


def ceil_div(size: int, reduction: float) -> int:
    """``ceil(size / reduction)`` in integer arithmetic (exact for 3.5, and traced as a function of ``size``)."""
    numerator, denominator = float(reduction).as_integer_ratio()
    return (size * denominator + numerator - 1) // numerator


class TimmEncoder(Encoder):
    """Any timm model with ``features_only`` (ResNet, ConvNeXt, Swin, EfficientNet, ...).

    ``output_stride`` None dilates to 8 the models timm can dilate (ResNets: DeepLabV3's dilated ResNet,
    ConvNeXt) and keeps the model's own stride otherwise (Swin: 32); 8, 16 or 32 ask for that stride and fail
    clearly where timm cannot. ``dilate=False`` never dilates (PiCIE's FPN reads the undilated pyramid).
    Channels-last features (Swin) are returned channels-first. The decode head reads the last map (ResNet:
    layer4), the auxiliary head the one before (ResNet: layer3).

    Args:
        name: a timm model name.
        output_stride: 8, 16 or 32; None: 8 where timm can dilate the model, else its own stride.
        pretrained: start from timm's pretrained weights.
        weights_path: a local checkpoint of the encoder to load instead (offline use).
        dilate: allow dilation; False keeps the undilated pyramid.
    """

    def __init__(
        self,
        name: str,
        output_stride: int | None = None,
        pretrained: bool = False,
        weights_path: str | Path | None = None,
        dilate: bool = True,
    ) -> None:
        super().__init__()
        check_output_stride(output_stride)
        if not dilate and output_stride is not None:
            raise ValueError(
                f"dilate=False keeps the model's own stride; output_stride must be None, got {output_stride}"
            )
        wanted = output_stride if output_stride is not None else DENSE_OUTPUT_STRIDE if dilate else None
        self.model = self._create(name, wanted, explicit=output_stride is not None, pretrained=pretrained)
        if weights_path is not None:
            load_weights(self.model, weights_path)
        self.channels = tuple(_feature_info(self.model).channels())
        self.reductions = tuple(_feature_info(self.model).reduction())
        self.head_index = len(self.channels) - 1
        self.aux_index = max(len(self.channels) - 2, 0)
        self.channels_last = str(getattr(self.model, "output_fmt", "NCHW")).upper().endswith("NHWC")
        self.size_divisor = int(max(self.reductions))

    @staticmethod
    def _create(name: str, output_stride: int | None, explicit: bool, pretrained: bool) -> nn.Module:
        """The timm feature model at ``output_stride`` (None: own stride; falls back to it unless ``explicit``)."""
        if output_stride is None:
            return create_timm_model(name, pretrained, features_only=True)
        try:
            model = create_timm_model(name, pretrained, features_only=True, output_stride=output_stride)
        except (TypeError, AssertionError, ValueError) as error:
            if not explicit:
                return create_timm_model(name, pretrained, features_only=True)
            raise ValueError(
                f"encoder {name!r} cannot be built with output_stride={output_stride} ({error}); "
                "pass output_stride=None to use the model's own stride"
            ) from error
        reached = max(_feature_info(model).reduction())
        if explicit and reached != output_stride:
            raise ValueError(
                f"encoder {name!r} has stride {reached}, not output_stride={output_stride} (timm cannot dilate it); "
                "pass output_stride=None to use the model's own stride"
            )
        return model

    def _stages(self, images: Tensor) -> list[Tensor]:
        features = self.model(images)
        if self.channels_last:
            return [feature.permute(0, 3, 1, 2) for feature in features]
        return list(features)

    def forward(self, images: Tensor) -> list[Tensor]:
        return run_padded(self._stages, images, self.size_divisor, self.reductions)


class HRNetV2Encoder(Encoder):
    """HRNetV2: the four raw HRNet branches, plus all four upsampled (bilinear) to stride 4 and concatenated.

    Returns ``[branch1, branch2, branch3, branch4, concat]``; decode and auxiliary heads both read ``concat``
    (HRNet-W48: 48 + 96 + 192 + 384 = 720 channels at stride 4). The stride is fixed by the architecture.
    HRNet's fusion needs sizes divisible by 32: other sizes (e.g. 520 x 520 crops, whole PASCAL images) are
    zero-padded at the bottom/right and each branch is cropped back to ``ceil(size / reduction)``.

    Args:
        name: a timm HRNet name (``hrnet_w18_small``, ``hrnet_w48.ms_in1k``, ...).
        pretrained: start from timm's pretrained weights.
        weights_path: a local checkpoint of the encoder to load instead (offline use).
    """

    def __init__(self, name: str, pretrained: bool = False, weights_path: str | Path | None = None) -> None:
        super().__init__()
        self.model = create_timm_model(
            name, pretrained, features_only=True, feature_location="", out_indices=HRNET_BRANCHES
        )
        if weights_path is not None:
            load_weights(self.model, weights_path)
        branch_channels = tuple(_feature_info(self.model).channels())
        branch_reductions = tuple(_feature_info(self.model).reduction())
        self.channels = (*branch_channels, sum(branch_channels))
        self.reductions = (*branch_reductions, branch_reductions[0])
        self.head_index = self.aux_index = len(branch_channels)

    def forward(self, images: Tensor) -> list[Tensor]:
        branches = run_padded(self.model, images, int(max(self.reductions)), self.reductions[:-1])
        size = branches[0].shape[-2:]
        upsampled = [branches[0]] + [
            F.interpolate(branch, size=size, mode="bilinear", align_corners=False) for branch in branches[1:]
        ]
        return [*branches, torch.cat(upsampled, dim=1)]


def pyramid_level(channels: int, scale: float) -> tuple[nn.Module, int]:
    """One level of ViTDet's simple feature pyramid and its output channels.

    x4: two 2x2 stride-2 transposed convs (BN + GELU between), halving the channels each time; x2: one;
    x1: identity; x0.5: 2x2 max pooling (``ceil_mode``: an odd number of patches keeps its last row / column).
    """
    if scale == 4:
        half = channels // 2
        layers = [nn.ConvTranspose2d(channels, half, 2, 2), nn.BatchNorm2d(half), nn.GELU()]
        return nn.Sequential(*layers, nn.ConvTranspose2d(half, half // 2, 2, 2)), half // 2
    if scale == 2:
        return nn.ConvTranspose2d(channels, channels // 2, 2, 2), channels // 2
    if scale == 1:
        return nn.Identity(), channels
    if scale == 0.5:
        return nn.MaxPool2d(2, ceil_mode=True), channels
    raise ValueError(f"no pyramid level for scale {scale}")


class ViTEncoder(Encoder):
    """Plain ViT (DeiT, DINO, DINOv2, with or without register tokens) + ViTDet's simple feature pyramid.

    The last block's patch tokens (after the final norm; class and register tokens dropped) form a map at the
    patch stride ``p``; the pyramid turns it into four maps at strides ``p/4, p/2, p, 2p`` (ViT-S/16: 4, 8, 16,
    32 with 96, 192, 384, 384 channels). Position embeddings are interpolated to any input size (timm's dynamic
    image size); sides that are not multiples of ``p`` are padded and the maps cropped back.

    ``output_stride`` picks the map the decode, auxiliary and projection heads read: None (default) is the last
    block itself (stride ``p``), or any stride of the pyramid (8 reads ViT-S/16's upsampled stride-8 level).
    """

    model: Any  # a timm ViT: its patch_embed, embed_dim and forward_intermediates are unknown to nn.Module's typing

    def __init__(
        self,
        name: str,
        output_stride: int | None = None,
        pretrained: bool = False,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.model = create_timm_model(name, pretrained, num_classes=0)
        self.model.prune_intermediate_layers(1, prune_norm=False, prune_head=True)
        if weights_path is not None:
            load_weights(self.model, weights_path)
        patch_height, patch_width = self.model.patch_embed.patch_size
        if patch_height != patch_width:
            raise ValueError(f"encoder {name!r} has non-square patches {patch_height} x {patch_width}")
        self.patch_size = patch_height
        levels = [pyramid_level(self.model.embed_dim, scale) for scale in VIT_PYRAMID_SCALES]
        self.pyramid = nn.ModuleList(level for level, _ in levels)
        self.channels = tuple(channels for _, channels in levels)
        self.reductions = tuple(_stride(self.patch_size / scale) for scale in VIT_PYRAMID_SCALES)
        if output_stride is None:
            output_stride = self.patch_size
        if output_stride not in self.reductions:
            raise ValueError(
                f"encoder {name!r} is a ViT with patch size {self.patch_size}: output_stride must be None (the last "
                f"block, stride {self.patch_size}) or a stride of its feature pyramid {self.reductions}, "
                f"got {output_stride}"
            )
        self.head_index = self.aux_index = self.reductions.index(output_stride)

    def _pyramid(self, images: Tensor) -> list[Tensor]:
        (tokens,) = self.model.forward_intermediates(
            images, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
        )
        return [level(tokens) for level in self.pyramid]

    def forward(self, images: Tensor) -> list[Tensor]:
        return run_padded(self._pyramid, images, self.patch_size, self.reductions)


def _stride(value: float) -> float:
    """``value`` as an int when it is whole (strides 4, 8, ...), else the float (3.5 for a ViT/14)."""
    return int(value) if float(value).is_integer() else value


def timm_family(name: str) -> str | None:
    """The timm module of model ``name`` (``name.tag`` allowed) among the families with own handling, else None."""
    architecture = name.split(".")[0]
    return next(
        (module for module in ("hrnet", *ANY_SIZE_KWARGS) if architecture in timm.list_models(module=module)), None
    )


def is_hrnet(name: str) -> bool:
    """Whether the timm model ``name`` (optionally ``name.tag``) is an HRNet."""
    return timm_family(name) == "hrnet"


def build_encoder(
    name: str,
    output_stride: int | None = None,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    dilate: bool = True,
) -> Encoder:
    """Build the encoder for timm model ``name`` (``name.tag`` picks the pretrained weights).

    HRNets give :class:`HRNetV2Encoder` (``output_stride`` ignored: its decode map is always stride 4), plain
    ViTs :class:`ViTEncoder`, every other model :class:`TimmEncoder`. ``output_stride`` None is the encoder's
    default for dense prediction (8 for CNNs timm can dilate, the encoder's own stride otherwise).
    ``dilate=False`` keeps CNNs undilated (for feature pyramids such as PiCIE's).
    """
    check_model_name(name)
    if pretrained and weights_path is not None:
        raise ValueError("pass either pretrained=True or weights_path, not both")
    family = timm_family(name)
    if family == "hrnet":
        return HRNetV2Encoder(name, pretrained=pretrained, weights_path=weights_path)
    if family == "vision_transformer":
        return ViTEncoder(name, output_stride=output_stride, pretrained=pretrained, weights_path=weights_path)
    return TimmEncoder(name, output_stride, pretrained=pretrained, weights_path=weights_path, dilate=dilate)


def _feature_info(model: nn.Module) -> FeatureInfo:
    """timm's ``feature_info`` of a ``features_only`` model (an attribute ``nn.Module``'s typing does not know)."""
    info = model.feature_info
    assert isinstance(info, FeatureInfo)
    return info


def create_timm_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)``; ``pretrained=True`` loads timm's weights (cache, else download).

    ViTs get ``dynamic_img_size=True`` and Swin ``strict_img_size=False``, so they take any input size.
    """
    timm_kwargs: dict[str, Any] = {**ANY_SIZE_KWARGS.get(timm_family(name) or "", {}), **kwargs}
    if pretrained:
        timm_kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": pretrained_weights_file(name)})
    return timm.create_model(name, **timm_kwargs)


def check_output_stride(output_stride: int | None) -> None:
    if output_stride is not None and output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES} or None, got {output_stride}")


def check_model_name(name: str) -> None:
    """Raise ``ValueError`` naming close matches when timm has no model ``name`` or no pretrained tag ``name.tag``."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models() for the names"
        raise ValueError(f"unknown encoder {name!r}{hint}")
    architecture, _, tag = name.partition(".")
    tags = timm.list_pretrained(f"{architecture}.*")
    if tag and name not in tags:
        hint = f"its tags: {', '.join(tags)}" if tags else "timm has no pretrained weights for it"
        raise ValueError(f"unknown pretrained tag {tag!r} of encoder {architecture!r}; {hint}")
