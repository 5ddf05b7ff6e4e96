"""Decode heads: shapes, output-stride rates, batch size 1 in training."""

from __future__ import annotations

import pytest
import torch

from pixcontrast.models.heads import ASPPHead, FCNHead, OCRHead, aspp_rates


@pytest.fixture
def features():
    return torch.randn(2, 12, 6, 5, generator=torch.Generator().manual_seed(0))


def test_fcn_head_shape(features):
    assert FCNHead(12, 4, channels=8)(features).shape == (2, 4, 6, 5)


def test_aspp_rates_follow_output_stride():
    assert aspp_rates(8) == (12, 24, 36)
    assert aspp_rates(16) == (6, 12, 18)
    assert aspp_rates(32) == (3, 6, 9)


def test_aspp_head_shape_and_dilations(features):
    head = ASPPHead(12, 4, channels=8, rates=(1, 2, 3))
    assert head(features).shape == (2, 4, 6, 5)
    assert [branch[0].dilation[0] for branch in head.branches] == [1, 1, 2, 3]


def test_ocr_head_shape_and_region_resize(features):
    head = OCRHead(12, 4, channels=8, key_channels=4)
    regions = torch.randn(2, 4, 3, 3)
    assert head(features, regions).shape == (2, 4, 6, 5)


def test_ocr_head_needs_two_classes():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        OCRHead(12, 1)


@pytest.mark.parametrize("name", ["fcn", "aspp", "ocr"])
def test_heads_train_with_batch_size_one(name):
    heads = {
        "fcn": lambda: FCNHead(12, 3, channels=8),
        "aspp": lambda: ASPPHead(12, 3, channels=8, rates=(1, 2, 3)),
        "ocr": lambda: OCRHead(12, 3, channels=8, key_channels=4),
    }
    head = heads[name]().train()
    x = torch.randn(1, 12, 4, 4)
    logits = head(x, torch.randn(1, 3, 4, 4)) if name == "ocr" else head(x)
    logits.sum().backward()
    assert logits.shape == (1, 3, 4, 4)
