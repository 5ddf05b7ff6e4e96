import pytest
import torch
import torch.nn.functional as F

from pixcontrast.models.fpn import LightFPN


def _pyramid(batch: int = 2, size: int = 64) -> list[torch.Tensor]:
    channels, strides = (64, 128, 256, 512), (4, 8, 16, 32)
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, c, size // s, size // s, generator=generator) for c, s in zip(channels, strides, strict=True)
    ]


def test_output_is_at_the_finest_level_with_out_channels():
    fpn = LightFPN((64, 128, 256, 512), out_channels=128)
    output = fpn(_pyramid())
    assert output.shape == (2, 128, 16, 16)
    assert all(lateral.kernel_size == (1, 1) for lateral in fpn.laterals)


def test_top_down_pathway_is_upsample_and_add_of_the_laterals():
    fpn = LightFPN((64, 128, 256, 512), out_channels=8)
    features = _pyramid(batch=1)
    laterals = [lateral(feature) for lateral, feature in zip(fpn.laterals, features, strict=True)]
    expected = laterals[3]
    for lateral in reversed(laterals[:3]):
        expected = lateral + F.interpolate(expected, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
    assert torch.allclose(fpn(features), expected, atol=1e-6)


def test_odd_sizes_and_gradients_reach_every_level():
    fpn = LightFPN((4, 6, 8), out_channels=5)
    features = [torch.randn(1, c, s, s, requires_grad=True) for c, s in ((4, 13), (6, 7), (8, 4))]
    output = fpn(features)
    assert output.shape == (1, 5, 13, 13)
    output.square().sum().backward()
    assert all(feature.grad is not None and feature.grad.abs().sum() > 0 for feature in features)


def test_bad_configuration_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="in_channels"):
        LightFPN(())
    with pytest.raises(ValueError, match="out_channels"):
        LightFPN((4,), out_channels=0)
    with pytest.raises(ValueError, match="expects 2 feature levels"):
        LightFPN((4, 8))([torch.randn(1, 4, 8, 8)])


def test_fpn_levels_pick_strides_4_to_32():
    from pixcontrast.models.fpn import fpn_levels

    assert fpn_levels([2, 4, 8, 16, 32]) == [1, 2, 3, 4]
    assert fpn_levels([4, 8, 16, 32]) == [0, 1, 2, 3]
    assert fpn_levels([16, 16, 16]) == [0]
    assert fpn_levels([4, 8, 16, 32, 4]) == [0, 1, 2, 3]  # HRNetV2: the branches, not the concat
    assert fpn_levels([2, 4, 8, 16]) == [1, 2, 3]  # ViT/8 pyramid
    assert fpn_levels([3.5, 7, 14, 28]) == [0, 1, 2, 3]  # ViT/14 pyramid
    assert fpn_levels([2, 2]) == [0]


@pytest.mark.parametrize("encoder, reduction", [("test_vit", 4), ("swin_tiny_patch4_window7_224", 4), ("resnet18", 4)])
def test_picie_network_on_transformers_and_undilated_cnns(encoder, reduction):
    from pixcontrast.models.fpn import PiCIENetwork

    network = PiCIENetwork(encoder, feature_dim=16)
    assert network.reduction == reduction and len(network.levels) == 4
    features = network(torch.randn(2, 3, 40, 56))
    assert features.shape == (2, 16, 10, 14)
    features.sum().backward()


def test_picie_network_gives_unit_norm_stride_4_features():
    from pixcontrast.models.fpn import PiCIENetwork

    torch.manual_seed(0)
    network = PiCIENetwork("resnet18", feature_dim=32).eval()
    with torch.no_grad():
        features = network(torch.randn(1, 3, 64, 64))
    assert network.reduction == 4 and features.shape == (1, 32, 16, 16)
    assert torch.allclose(features.norm(dim=1), torch.ones(1, 16, 16), atol=1e-5)


def test_picie_network_on_dinov2_with_registers_reads_its_stride_3_5_pyramid():
    from pixcontrast.models.fpn import PiCIENetwork

    network = PiCIENetwork("vit_small_patch14_reg4_dinov2.lvd142m", feature_dim=16).eval()
    assert network.reduction == 3.5 and network.levels == [0, 1, 2, 3]
    with torch.no_grad():
        features = network(torch.randn(1, 3, 40, 56))  # 3 x 4 patches of 14, padded from 40 x 56
    assert features.shape == (1, 16, 12, 16)  # ceil(40 / 3.5) x ceil(56 / 3.5)
