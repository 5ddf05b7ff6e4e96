"""Plain ViTs (DeiT, DINO, DINOv2, registers) with their simple pyramid, Swin and ConvNeXt: any input size."""

from __future__ import annotations

import math

import pytest
import torch

from pixcontrast.models.backbones import TimmEncoder, ViTEncoder, build_encoder


def _assert_maps(encoder, features, height, width):
    assert len(features) == len(encoder.channels) == len(encoder.reductions)
    for feature, channels, reduction in zip(features, encoder.channels, encoder.reductions, strict=True):
        assert feature.shape[1] == channels
        assert tuple(feature.shape[-2:]) == (math.ceil(height / reduction), math.ceil(width / reduction))


@pytest.mark.parametrize(
    "name, patch, reductions",
    [
        ("vit_tiny_patch16_224", 16, (4, 8, 16, 32)),
        ("vit_small_patch8_224.dino", 8, (2, 4, 8, 16)),  # DINO ViT-S/8
        ("vit_small_patch14_reg4_dinov2.lvd142m", 14, (3.5, 7, 14, 28)),  # DINOv2 ViT-S/14 with 4 registers
    ],
)
def test_vit_pyramid_at_sizes_that_are_not_multiples_of_the_patch(name, patch, reductions):
    encoder = build_encoder(name)
    assert isinstance(encoder, ViTEncoder) and encoder.patch_size == patch
    assert encoder.reductions == reductions
    width = encoder.model.embed_dim
    assert encoder.channels == (width // 4, width // 2, width, width)
    assert encoder.head_reduction == patch and encoder.head_channels == width  # the last block itself
    with torch.no_grad():
        for height, width_ in ((3 * patch + 5, 2 * patch + 1), (2 * patch, 5 * patch)):
            _assert_maps(encoder, encoder.eval()(torch.randn(2, 3, height, width_)), height, width_)


def test_vit_stride_map_is_the_normed_last_block_and_pos_embed_is_interpolated():
    encoder = build_encoder("test_vit").eval()
    images = torch.randn(1, 3, 48, 80)  # the model was made for 160 x 160
    with torch.no_grad():
        features = encoder(images)
        tokens = encoder.model.forward_features(images)  # prefix (class) token first, then the 3 x 5 patches
    expected = tokens[:, encoder.model.num_prefix_tokens :].transpose(1, 2).reshape(1, -1, 3, 5)
    torch.testing.assert_close(features[encoder.head_index], expected)


def test_vit_output_stride_picks_a_pyramid_level_and_rejects_others():
    encoder = build_encoder("test_vit", output_stride=8)
    assert encoder.head_reduction == 8 and encoder.head_channels == encoder.channels[1]
    with pytest.raises(ValueError, match=r"ViT with patch size 16: output_stride must be None .* \(4, 8, 16, 32\)"):
        build_encoder("test_vit", output_stride=64)


def test_vit_trains_with_batch_size_one():
    encoder = build_encoder("test_vit").train()
    features = encoder(torch.randn(1, 3, 32, 32))
    sum(feature.sum() for feature in features).backward()
    assert encoder.pyramid[0][0].weight.grad is not None
    assert encoder.model.blocks[0].attn.qkv.weight.grad is not None


def test_swin_features_are_channels_first_at_any_size():
    encoder = build_encoder("swin_tiny_patch4_window7_224").eval()
    assert isinstance(encoder, TimmEncoder) and encoder.channels_last
    assert encoder.reductions == (4, 8, 16, 32) and encoder.channels == (96, 192, 384, 768)
    with torch.no_grad():
        _assert_maps(encoder, encoder(torch.randn(1, 3, 50, 70)), 50, 70)
    with pytest.raises(ValueError, match=r"cannot be built with output_stride=8.*output_stride=None"):
        build_encoder("swin_tiny_patch4_window7_224", output_stride=8)


def test_convnext_is_dilated_to_8_by_default_and_undilated_on_request():
    dilated = build_encoder("test_convnext")
    assert dilated.reductions[-1] == 8
    undilated = build_encoder("test_convnext", dilate=False)
    assert undilated.reductions == (4, 8, 16, 32)
    with torch.no_grad():
        _assert_maps(undilated, undilated.eval()(torch.randn(1, 3, 45, 61)), 45, 61)


@pytest.mark.parametrize(
    "encoder, head, output_stride, size",
    [("swin_tiny_patch4_window7_224", "fcn", None, 64), ("test_vit", "ocr", 8, 40), ("test_vit", "aspp", 4, 40)],
)
def test_segmenter_on_swin_and_on_vit_pyramid_levels(encoder, head, output_stride, size):
    from pixcontrast.models import Segmenter

    model = Segmenter(3, encoder, head, aux_head=True, head_channels=8, output_stride=output_stride)
    output = model.forward_train(torch.randn(2, 3, size, size))
    side = math.ceil(size / model.encoder.head_reduction)
    assert output.logits.shape == (2, 3, side, side)
    assert output.features.shape == (2, model.encoder.head_channels, side, side)
    assert model.eval()(torch.randn(1, 3, size + 3, size - 5)).shape == (1, 3, size + 3, size - 5)
