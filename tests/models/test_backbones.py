"""Encoders: channels/reductions metadata, HRNetV2 concat, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pixcontrast.models.backbones import HRNetV2Encoder, TimmEncoder, build_encoder


def _assert_shapes(encoder, features, size):
    assert len(features) == len(encoder.channels) == len(encoder.reductions)
    for feature, channels, reduction in zip(features, encoder.channels, encoder.reductions, strict=True):
        assert feature.shape[1] == channels
        assert feature.shape[-2:] == (size // reduction, size // reduction)


def test_dilated_resnet18_reads_layer4_and_layer3_at_stride_8():
    encoder = build_encoder("resnet18", output_stride=8)
    assert isinstance(encoder, TimmEncoder)
    assert encoder.channels == (64, 64, 128, 256, 512)
    assert encoder.reductions == (2, 4, 8, 8, 8)
    assert (encoder.head_index, encoder.aux_index) == (4, 3)
    assert (encoder.head_channels, encoder.aux_channels, encoder.head_reduction) == (512, 256, 8)
    _assert_shapes(encoder, encoder(torch.randn(1, 3, 32, 32)), 32)


def test_dilated_resnet50_tiny_input():
    encoder = build_encoder("resnet50", output_stride=8)
    features = encoder(torch.randn(1, 3, 32, 32))
    assert (encoder.head_channels, encoder.aux_channels) == (2048, 1024)
    _assert_shapes(encoder, features, 32)


def test_default_output_stride_dilates_cnns_to_8_unless_dilate_is_false():
    assert build_encoder("resnet18").reductions[-1] == 8
    assert build_encoder("resnet18", output_stride=32).reductions[-1] == 32
    assert build_encoder("resnet18", dilate=False).reductions == (2, 4, 8, 16, 32)
    with pytest.raises(ValueError, match="dilate=False"):
        build_encoder("resnet18", output_stride=8, dilate=False)


def test_generic_timm_model_head_reads_last_map():
    encoder = build_encoder("mobilenetv3_small_100", output_stride=16)
    assert encoder.head_index == len(encoder.channels) - 1
    assert encoder.aux_index == len(encoder.channels) - 2
    assert encoder.head_reduction == 16
    _assert_shapes(encoder, encoder(torch.randn(1, 3, 32, 32)), 32)


def test_hrnetv2_concatenates_raw_branches_at_stride_4():
    encoder = build_encoder("hrnet_w18_small", output_stride=8)  # output_stride is ignored for HRNet
    assert isinstance(encoder, HRNetV2Encoder)
    assert encoder.channels == (16, 32, 64, 128, 240)  # raw branch widths, not the 'incre' features
    assert encoder.reductions == (4, 8, 16, 32, 4)
    assert encoder.head_index == encoder.aux_index == 4
    features = encoder(torch.randn(1, 3, 64, 64))
    _assert_shapes(encoder, features, 64)
    expected = torch.cat(
        [features[0]] + [F.interpolate(f, size=(16, 16), mode="bilinear", align_corners=False) for f in features[1:4]],
        dim=1,
    )
    torch.testing.assert_close(features[4], expected)


def test_hrnet_w48_has_720_channels():
    with torch.device("meta"):
        encoder = build_encoder("hrnet_w48")
    assert encoder.channels == (48, 96, 192, 384, 720)


def test_unknown_encoder_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown encoder 'resnet_18'.*resnet18"):
        build_encoder("resnet_18")


def test_bad_output_stride():
    with pytest.raises(ValueError, match="output_stride"):
        build_encoder("resnet18", output_stride=4)


@pytest.mark.parametrize("size", [(48, 72), (65, 33)])
def test_hrnet_takes_sizes_not_divisible_by_32(size):
    encoder = build_encoder("hrnet_w18_small").eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, *size))
    for feature, reduction in zip(features, encoder.reductions, strict=True):
        assert tuple(feature.shape[-2:]) == (-(-size[0] // reduction), -(-size[1] // reduction))
