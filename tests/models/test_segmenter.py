"""Segmenter: every encoder family x every head, inference vs training paths, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixcontrast.models import Segmenter, SegmenterOutput

ENCODERS = {  # name -> (input size, reduction of the decode map)
    "resnet18": (32, 8),
    "hrnet_w18_small": (64, 4),  # the stride-32 branch needs >= 2 x 2 pixels for batch norm with batch size 1
    "mobilenetv3_small_100": (32, 8),
    "test_vit": (64, 16),  # plain ViT: the heads read the last block at the patch stride
    "test_convnext": (32, 8),  # dilated to 8 by default
}
HEADS = ("fcn", "aspp", "ocr")
TINY = "test_resnet"  # timm's tiny ResNet for the checks that do not depend on the model size


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_encoder_head_matrix(encoder, head):
    size, reduction = ENCODERS[encoder]
    torch.manual_seed(0)
    model = Segmenter(4, encoder, head, aux_head=True, head_channels=16)
    calls = []
    if model.aux_head is not None:
        model.aux_head.register_forward_hook(lambda *args: calls.append(1))
    images = torch.randn(2, 3, size, size)

    model.eval()
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (2, 4, size, size)
    assert calls == []  # the inference path never runs the auxiliary head

    model.train()
    output = model.forward_train(images[:1])  # batch size 1 in training mode
    assert isinstance(output, SegmenterOutput)
    h = size // reduction
    assert output.logits.shape == (1, 4, h, h)
    assert output.aux_logits is not None and output.aux_logits.shape == (1, 4, h, h)
    assert output.features.shape == (1, model.encoder.head_channels, h, h)
    (output.logits.sum() + output.aux_logits.sum()).backward()
    assert calls == ([1] if model.aux_head is not None else [])


@pytest.mark.parametrize("head", HEADS)
def test_inference_network_has_no_training_only_heads(head):
    full = Segmenter(3, TINY, head, aux_head=True, head_channels=8)
    plain = Segmenter(3, TINY, head, aux_head=False, head_channels=8)
    network = full.inference_network()
    assert _count(network) == _count(plain)
    assert _count(network) < _count(full) or head == "ocr"  # OCR's region head is part of inference
    full.eval()
    images = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(network(images), full(images))


def test_ocr_always_returns_region_logits():
    model = Segmenter(3, TINY, "ocr", aux_head=False, head_channels=8)
    assert model.forward_train(torch.randn(2, 3, 32, 32)).aux_logits.shape == (2, 3, 4, 4)


def test_optional_outputs_are_none():
    output = Segmenter(3, TINY, "fcn", head_channels=8).forward_train(torch.randn(2, 3, 32, 32))
    assert output.aux_logits is None


def test_features_are_the_decode_map():
    hrnet = Segmenter(3, "hrnet_w18_small", "ocr", head_channels=8)
    assert hrnet.encoder.head_channels == 16 + 32 + 64 + 128  # HRNetV2 concat, before OCR
    resnet = Segmenter(3, TINY, "aspp", head_channels=8)
    assert resnet.encoder.head_index == len(resnet.encoder.channels) - 1  # layer4
    output = resnet.forward_train(torch.randn(1, 3, 32, 32))
    assert output.features.shape[1] == resnet.encoder.channels[-1]


def test_aspp_rates_follow_output_stride():
    model = Segmenter(3, TINY, "aspp", output_stride=16, head_channels=8)
    head = model.inference_network().decode_head
    assert [branch[0].dilation[0] for branch in head.branches[1:]] == [6, 12, 18]


def test_sync_batchnorm_conversion():
    model = Segmenter(3, TINY, "aspp", aux_head=True, head_channels=8)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    kinds = {type(m) for m in converted.modules()}
    assert nn.SyncBatchNorm in kinds and nn.BatchNorm2d not in kinds
    output = converted.train().forward_train(torch.randn(2, 3, 32, 32))  # no process group: plain batch norm
    assert output.logits.shape == (2, 3, 4, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"encoder": "resnet_18"}, "unknown encoder 'resnet_18'.*resnet18"),
        ({"head": "pspnet"}, "unknown head 'pspnet'"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 1, "head": "ocr"}, "num_classes >= 2"),
        ({"output_stride": 4}, "output_stride"),
        ({"head_channels": 0}, "head_channels"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_clear_errors(kwargs, match):
    arguments = {"num_classes": 3, "encoder": TINY, "head_channels": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        Segmenter(**arguments)
