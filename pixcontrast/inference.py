"""Whole-image, sliding-window and multi-scale + flip inference, and padded batches of mixed sizes.

Every function takes ``model``, a callable ``images B x 3 x h x w -> logits B x K x h x w`` (logits at input
size, e.g. :class:`~pixcontrast.models.Segmenter` or its inference network), and ``images`` B x 3 x H x W,
and returns **logits** B x K x H x W: where several predictions cover a pixel (overlapping windows, scales,
flips), their logits are averaged. Take ``argmax(dim=1)`` for label maps or ``softmax(dim=1)`` for
probabilities. Call them under ``torch.no_grad()`` / ``torch.inference_mode()``.
:func:`per_size_inference` runs a padded batch of images of different sizes through any of them, one call per
group of equal sizes, with each image's logits at its own (or its label's) size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Model = Callable[[Tensor], Tensor]
Size = int | Sequence[int]
MODES = ("whole", "slide", "multiscale")


def whole_inference(model: Model, images: Tensor) -> Tensor:
    """The whole image in one forward pass: B x 3 x H x W -> logits B x K x H x W."""
    _check_images(images)
    return _checked_call(model, images)


def sliding_window_inference(
    model: Model,
    images: Tensor,
    crop_size: Size,
    stride: Size | None = None,
    crop_batch_size: int | None = None,
) -> Tensor:
    """Average the logits of overlapping crops: B x 3 x H x W -> logits B x K x H x W (float32).

    Windows of ``crop_size`` (h, w) start every ``stride`` (h, w) pixels (default: ``crop_size``, no overlap);
    the last row/column of windows is aligned to the image border, so any size is covered. Images smaller
    than the crop are zero-padded (the mean colour after normalisation) at the bottom/right and the padding is
    cropped off the result. All crops of all images go through ``model`` in batches of ``crop_batch_size``
    crops (default: all at once); each pixel's logits are summed over its windows and divided by their count.
    """
    _check_images(images)
    crop_h, crop_w = _pair(crop_size, "crop_size")
    stride_h, stride_w = _pair(crop_size if stride is None else stride, "stride")
    if stride_h > crop_h or stride_w > crop_w:
        raise ValueError(
            f"stride {(stride_h, stride_w)} is larger than crop_size {(crop_h, crop_w)}; windows would leave gaps"
        )
    if crop_batch_size is not None and crop_batch_size < 1:
        raise ValueError(f"crop_batch_size must be >= 1 or None, got {crop_batch_size}")
    batch, _, height, width = images.shape
    padded = F.pad(images, (0, max(crop_w - width, 0), 0, max(crop_h - height, 0)))
    padded_h, padded_w = padded.shape[-2:]
    rows, columns = _window_starts(padded_h, crop_h, stride_h), _window_starts(padded_w, crop_w, stride_w)
    corners = [(y, x) for y in rows for x in columns]
    crops = torch.cat([padded[:, :, y : y + crop_h, x : x + crop_w] for y, x in corners])  # (N*B) x 3 x h x w
    chunks = crops.split(crop_batch_size or crops.shape[0])
    logits = torch.cat([_checked_call(model, chunk).float() for chunk in chunks])  # (N*B) x K x h x w
    num_windows, num_classes = len(corners), logits.shape[1]
    logits = logits.view(num_windows, batch, num_classes, crop_h * crop_w).permute(1, 2, 0, 3)
    device = images.device
    starts = torch.tensor([y * padded_w + x for y, x in corners], device=device)
    local = (torch.arange(crop_h, device=device)[:, None] * padded_w + torch.arange(crop_w, device=device)).flatten()
    index = (starts[:, None] + local).flatten()  # N*h*w flat pixel ids of every window pixel
    total = logits.new_zeros(batch, num_classes, padded_h * padded_w)
    total.index_add_(2, index, logits.reshape(batch, num_classes, -1))
    count = torch.bincount(index, minlength=padded_h * padded_w).to(total.dtype)
    return (total / count).view(batch, num_classes, padded_h, padded_w)[:, :, :height, :width]


def multiscale_inference(
    model: Model,
    images: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crop_size: Size | None = None,
    stride: Size | None = None,
    crop_batch_size: int | None = None,
) -> Tensor:
    """Average logits over rescaled (and horizontally flipped) copies: B x 3 x H x W -> B x K x H x W.

    Each scale resizes the images (bilinear) to ``round(H * s) x round(W * s)`` and runs whole-image inference,
    or sliding-window inference when ``crop_size`` is given; with ``flip`` the mirrored images run in the same
    batch and their logits are mirrored back. The logits are resized back to H x W and averaged over the
    ``len(scales) * (2 if flip else 1)`` passes. ``scales=[1.0], flip=False`` equals the single-scale result.
    """
    _check_images(images)
    if len(scales) == 0 or any(scale <= 0 for scale in scales):
        raise ValueError(f"scales must be a non-empty list of positive factors, got {list(scales)}")
    batch, _, height, width = images.shape
    total: Tensor | None = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images if size == (height, width) else _resize(images, size)
        inputs = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
        if crop_size is None:
            logits = _checked_call(model, inputs)
        else:
            logits = sliding_window_inference(model, inputs, crop_size, stride, crop_batch_size)
        if flip:
            logits = logits[:batch] + logits[batch:].flip(-1)
        if size != (height, width):
            logits = _resize(logits, (height, width))
        total = logits.float() if total is None else total + logits
    assert total is not None
    return total / (len(scales) * (2 if flip else 1))


def predict_logits(
    model: Model,
    images: Tensor,
    mode: str = "whole",
    crop_size: Size | None = None,
    stride: Size | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crop_batch_size: int | None = None,
) -> Tensor:
    """Logits B x K x H x W of ``images`` B x 3 x H x W with one evaluation mode.

    ``mode``: ``whole`` (one pass; ``scales``/``flip`` unused), ``slide`` (:func:`sliding_window_inference`,
    needs ``crop_size``) or ``multiscale`` (:func:`multiscale_inference` over ``scales`` and ``flip``, each
    scale by sliding window when ``crop_size`` is given). Sizes are an int or (h, w).
    """
    if mode == "whole":
        return whole_inference(model, images)
    if mode == "slide":
        if crop_size is None:
            raise ValueError("mode='slide' needs crop_size=(h, w) (and optionally stride=(h, w))")
        return sliding_window_inference(model, images, crop_size, stride, crop_batch_size)
    if mode == "multiscale":
        return multiscale_inference(model, images, scales, flip, crop_size, stride, crop_batch_size)
    raise ValueError(f"unknown inference mode {mode!r}; choose one of {MODES}")


def per_size_inference(
    model: Model,
    images: Tensor,
    image_sizes: Sequence[Sequence[int]],
    output_sizes: Sequence[Sequence[int]],
    output_shape: Sequence[int],
) -> Tensor:
    """Logits of a padded batch of images of different sizes, each image at its own size: B x K x Ho x Wo.

    ``images`` B x 3 x H x W hold image ``i`` in their top-left ``image_sizes[i]`` = (h, w); the rest is padding.
    The images of equal (image size, output size) go through ``model`` together, unpadded, so padding never
    reaches the network and each image's logits are those of a batch of its own size group (in eval mode: of
    a batch of one). Each image's logits are resized (bilinear) to ``output_sizes[i]`` (e.g. its label's size)
    and zero-padded bottom/right to ``output_shape`` = (Ho, Wo). One ``model`` call per size group; a batch of
    one size is a single call without copies.
    """
    _check_images(images)
    height, width = images.shape[-2:]
    if not len(image_sizes) == len(output_sizes) == images.shape[0]:
        raise ValueError(
            f"got {len(image_sizes)} image sizes and {len(output_sizes)} output sizes for {images.shape[0]} images"
        )
    out_h, out_w = (int(v) for v in output_shape)
    groups: dict[tuple[tuple[int, int], tuple[int, int]], list[int]] = {}
    for index, (image_size, output_size) in enumerate(zip(image_sizes, output_sizes, strict=True)):
        (h, w), (oh, ow) = _pair(tuple(image_size), "image size"), _pair(tuple(output_size), "output size")
        if h > height or w > width or oh > out_h or ow > out_w:
            raise ValueError(
                f"item {index}: image size {(h, w)} / output size {(oh, ow)} exceed the batch's padded sizes "
                f"{(height, width)} / {(out_h, out_w)}; the sizes must be those of the unpadded items"
            )
        groups.setdefault(((h, w), (oh, ow)), []).append(index)
    output: Tensor | None = None
    for ((h, w), size), indices in groups.items():
        chosen = images if len(groups) == 1 else images[indices]
        logits = model(chosen[..., :h, :w])
        if size != (h, w):
            logits = _resize(logits, size)
        if len(groups) == 1 and size == (out_h, out_w):
            return logits
        if output is None:
            output = logits.new_zeros(images.shape[0], logits.shape[1], out_h, out_w)
        output[indices, :, : size[0], : size[1]] = logits
    assert output is not None
    return output


def _window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Offsets of windows of size ``crop`` every ``stride`` along ``length >= crop``; the last ends at the border."""
    count = math.ceil((length - crop) / stride) + 1
    return [min(i * stride, length - crop) for i in range(count)]


def _pair(value: Size, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair (h, w) of positive ints, got {value!r}")
    return pair


def _resize(tensor: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)


def _check_images(images: Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be B x C x H x W, got shape {tuple(images.shape)}")


def _checked_call(model: Model, images: Tensor) -> Tensor:
    logits = model(images)
    if logits.ndim != 4 or logits.shape[0] != images.shape[0] or logits.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"the model must return logits B x K x H x W at input size; for input {tuple(images.shape)} it returned "
            f"{tuple(logits.shape)} (upsample the logits to the input size inside the model)"
        )
    return logits
