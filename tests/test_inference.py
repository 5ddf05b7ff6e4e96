"""Whole-image, sliding-window and multi-scale + flip inference, and padded batches of mixed sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixcontrast.inference import (
    multiscale_inference,
    per_size_inference,
    predict_logits,
    sliding_window_inference,
    whole_inference,
)


def _conv(kernel_size: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, 4, kernel_size, padding=kernel_size // 2).eval()


def _images(height: int, width: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


def _reference_slide(model, images, crop, stride):
    """Plain loop over windows (the last one aligned to the border), no padding needed here."""
    _, _, height, width = images.shape
    total = torch.zeros(images.shape[0], 4, height, width)
    count = torch.zeros(height, width)
    ys = [*range(0, height - crop[0], stride[0]), height - crop[0]]
    xs = [*range(0, width - crop[1], stride[1]), width - crop[1]]
    for y in ys:
        for x in xs:
            total[:, :, y : y + crop[0], x : x + crop[1]] += model(images[:, :, y : y + crop[0], x : x + crop[1]])
            count[y : y + crop[0], x : x + crop[1]] += 1
    return total / count


@torch.no_grad()
def test_one_crop_covering_the_image_equals_whole():
    model, images = _conv(3), _images(20, 24)
    torch.testing.assert_close(sliding_window_inference(model, images, (20, 24), (10, 12)), model(images))


@torch.no_grad()
def test_images_smaller_than_the_crop_are_padded():
    model, images = _conv(1), _images(13, 9)  # pointwise model: padding cannot change the kept pixels
    logits = sliding_window_inference(model, images, crop_size=16)
    assert logits.shape == (2, 4, 13, 9)
    torch.testing.assert_close(logits, model(images))


@torch.no_grad()
def test_sizes_not_divisible_by_stride_match_a_window_loop():
    model, images = _conv(3), _images(23, 37)
    logits = sliding_window_inference(model, images, crop_size=(8, 10), stride=(5, 7))
    torch.testing.assert_close(logits, _reference_slide(model, images, (8, 10), (5, 7)))
    chunked = sliding_window_inference(model, images, crop_size=(8, 10), stride=(5, 7), crop_batch_size=3)
    torch.testing.assert_close(chunked, logits)


@torch.no_grad()
def test_pointwise_model_is_unchanged_by_windows():
    model, images = _conv(1), _images(23, 37)
    torch.testing.assert_close(sliding_window_inference(model, images, (8, 10), (5, 7)), model(images))


@torch.no_grad()
def test_multiscale_single_scale_equals_whole():
    model, images = _conv(3), _images(16, 20)
    single = multiscale_inference(model, images, scales=[1.0], flip=False)
    torch.testing.assert_close(single, whole_inference(model, images))


@torch.no_grad()
def test_multiscale_flip_and_scales():
    model, images = _conv(3), _images(16, 20)
    flipped = multiscale_inference(model, images, scales=[1.0], flip=True)
    expected = (model(images) + model(images.flip(-1)).flip(-1)) / 2
    torch.testing.assert_close(flipped, expected)
    pointwise = _conv(1)
    constant = torch.ones(1, 3, 16, 20)
    logits = multiscale_inference(pointwise, constant, scales=[0.5, 0.75, 1.5], flip=True, crop_size=12, stride=8)
    assert logits.shape == (1, 4, 16, 20)
    torch.testing.assert_close(logits, pointwise(constant))


@torch.no_grad()
def test_predict_logits_dispatches_modes():
    model, images = _conv(3), _images(20, 24)
    whole = model(images)
    torch.testing.assert_close(predict_logits(model, images, "whole", scales=[0.5], flip=True), whole)
    torch.testing.assert_close(predict_logits(model, images, "slide", crop_size=[20, 24]), whole)
    torch.testing.assert_close(predict_logits(model, images, "multiscale", scales=(1.0,)), whole)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "tiles"}, ValueError, "unknown inference mode 'tiles'"),
        ({"mode": "slide"}, ValueError, "needs crop_size"),
        ({"mode": "slide", "crop_size": 8, "stride": 9}, ValueError, "windows would leave gaps"),
        ({"mode": "slide", "crop_size": (8, 0)}, ValueError, "crop_size must be"),
        ({"mode": "slide", "crop_size": 8, "crop_batch_size": 0}, ValueError, "crop_batch_size"),
        ({"mode": "multiscale", "scales": []}, ValueError, "scales"),
        ({"mode": "multiscale", "scales": [1.0, -0.5]}, ValueError, "scales"),
    ],
)
def test_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        predict_logits(_conv(1), _images(16, 16), **kwargs)


def test_model_must_return_logits_at_input_size():
    with pytest.raises(ValueError, match="at input size"):
        whole_inference(nn.Conv2d(3, 4, 3, stride=2), _images(16, 16))
    with pytest.raises(ValueError, match="B x C x H x W"):
        whole_inference(_conv(1), torch.randn(3, 16, 16))


class _CountingModel(nn.Module):
    """Two 3 x 3 convolutions (the second sees the first's bias on padded pixels, so padding a batch changes the
    border of the real pixels), counting its calls and their batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)).eval()
        self.calls: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(images.shape[0])
        return self.layers(images)


@torch.no_grad()
def test_per_size_inference_runs_each_size_group_unpadded():
    model = _CountingModel()
    sizes = [(6, 8), (4, 10), (6, 8), (5, 5)]
    images = [_images(h, w, batch=1)[0] * (i + 1) for i, (h, w) in enumerate(sizes)]
    padded = torch.zeros(4, 3, 6, 10)
    for slot, image in zip(padded, images, strict=True):
        slot[:, : image.shape[1], : image.shape[2]] = image
    whole_padded = model(padded)  # padding changes the logits of the real pixels near the border
    assert not torch.allclose(whole_padded[1, :, :4, :10], model(images[1][None])[0])
    model.calls.clear()
    logits = per_size_inference(model, padded, sizes, sizes, (7, 11))
    assert logits.shape == (4, 4, 7, 11) and sorted(model.calls) == [1, 1, 2]  # one call per size group
    for index, (image, (h, w)) in enumerate(zip(images, sizes, strict=True)):
        torch.testing.assert_close(logits[index, :, :h, :w], model(image[None])[0])
        assert (logits[index, :, h:] == 0).all() and (logits[index, :, :, w:] == 0).all()


@torch.no_grad()
def test_per_size_inference_resizes_to_the_output_sizes():
    model = _CountingModel()
    images = _images(6, 8)
    logits = per_size_inference(model, images, [(6, 8), (3, 4)], [(12, 16), (6, 8)], (12, 16))
    upsampled = torch.nn.functional.interpolate(model(images), size=(12, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits[0], upsampled[0])
    small = torch.nn.functional.interpolate(
        model(images[1:, :, :3, :4]), size=(6, 8), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(logits[1, :, :6, :8], small[0])
    model.calls.clear()
    assert per_size_inference(model, images, [(6, 8)] * 2, [(6, 8)] * 2, (6, 8)).shape == (2, 4, 6, 8)
    assert model.calls == [2]  # a batch of one size: one call on the batch as it is


def test_per_size_inference_rejects_sizes_beyond_the_batch():
    model = _CountingModel()
    with pytest.raises(ValueError, match="exceed the batch's padded sizes"):
        per_size_inference(model, _images(6, 8), [(6, 9), (6, 8)], [(6, 8)] * 2, (6, 8))
    with pytest.raises(ValueError, match="2 image sizes and 1 output sizes for 2 images"):
        per_size_inference(model, _images(6, 8), [(6, 8)] * 2, [(6, 8)], (6, 8))
