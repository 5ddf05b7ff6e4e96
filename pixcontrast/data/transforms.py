"""Albumentations pipelines of the papers: short-side resize + random scale and aspect + pad + random crop + flip
(+ brightness shift, photometric), and evaluation.

A transform is any callable ``transform(image=H x W x 3 uint8, mask=H x W int) -> {"image": ..., "mask": ...}``
(the albumentations calling convention), so a user may pass an ``A.Compose`` or their own function.

Sizes are always given as ``(height, width)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pixcontrast.data.base import IGNORE_INDEX, Transform


def _pair(value: Sequence[int] | int, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _scale_range(value: Sequence[float], name: str = "scale_range") -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not 0 < low <= high:
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {tuple(value)!r}")
    return low, high


def _side(value: int, name: str) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive int (pixels), got {value!r}")
    return int(value)


def scale_crop(
    array: np.ndarray,
    crop_size: tuple[int, int],
    scaled_size: tuple[int, int],
    offset: tuple[int, int],
    interpolation: int,
    fill: float,
) -> np.ndarray:
    """Resize ``array`` (H x W [x C]) to ``scaled_size``, pad bottom/right with ``fill`` to at least ``crop_size``
    and take the ``crop_size`` window at ``offset`` (top, left) -- computing only the pixels of the window.

    Equals ``cv2.resize`` followed by padding and cropping (half-pixel centres), at the cost of the crop alone.
    """
    import cv2

    (crop_h, crop_w), (scaled_h, scaled_w), (top, left) = crop_size, scaled_size, offset
    height, width = array.shape[:2]
    sy, sx = scaled_h / height, scaled_w / width
    valid_h, valid_w = min(crop_h, scaled_h - top), min(crop_w, scaled_w - left)
    # Source rows/columns the window samples from, with a one-pixel margin for interpolation.
    y0 = max(math.floor((top + 0.5) / sy - 0.5) - 1, 0)
    y1 = min(math.ceil((top + valid_h - 0.5) / sy - 0.5) + 2, height)
    x0 = max(math.floor((left + 0.5) / sx - 0.5) - 1, 0)
    x1 = min(math.ceil((left + valid_w - 0.5) / sx - 0.5) + 2, width)
    window = array[y0:y1, x0:x1]
    if window.dtype == np.int64:  # OpenCV has no 64-bit integers; label ids fit in int32
        window = window.astype(np.int32)
    matrix = np.array(
        [[sx, 0.0, 0.5 * sx - 0.5 - left + sx * x0], [0.0, sy, 0.5 * sy - 0.5 - top + sy * y0]], dtype=np.float64
    )
    out = cv2.warpAffine(window, matrix, (valid_w, valid_h), flags=interpolation, borderMode=cv2.BORDER_REPLICATE)
    if out.ndim < array.ndim:  # OpenCV drops a trailing singleton channel
        out = out[..., None]
    if (valid_h, valid_w) != (crop_h, crop_w):
        pad = [(0, crop_h - valid_h), (0, crop_w - valid_w)] + [(0, 0)] * (out.ndim - 2)
        out = np.pad(out, pad, constant_values=fill)
    return out


def _albumentations_classes() -> dict[str, type]:
    """Build the transforms below lazily so that albumentations is imported only when used."""
    import albumentations as A
    import cv2

    class RandomScaleCrop(A.DualTransform):
        """Random scale in ``scale_range``, pad to ``(height, width)`` (image ``fill``, mask ``fill_mask``),
        random ``(height, width)`` crop -- in one warp of the crop window (see :func:`scale_crop`).

        ``short_side`` first scales the image so that its shorter side has that many pixels (the random scale
        multiplies that size). ``aspect_range`` (a, b) stretches width by ``sqrt(r)`` and height by
        ``1 / sqrt(r)`` with ``r`` uniform in [a, b], as the official ContrastiveSeg ``RandomResize``.
        """

        def __init__(
            self,
            height: int,
            width: int,
            scale_range: tuple[float, float] = (0.5, 2.0),
            fill: float = 0,
            fill_mask: float = IGNORE_INDEX,
            short_side: int | None = None,
            aspect_range: tuple[float, float] | None = None,
            p: float = 1.0,
        ) -> None:
            super().__init__(p=p)
            self.height, self.width = _pair((height, width), "crop size")
            self.scale_range = _scale_range(scale_range)
            self.fill, self.fill_mask = fill, fill_mask
            self.short_side = None if short_side is None else _side(short_side, "short_side")
            self.aspect_range = None if aspect_range is None else _scale_range(aspect_range, "aspect_range")

        def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
            height, width = params["shape"][:2]
            scale = self.py_random.uniform(*self.scale_range)
            if self.short_side is not None:
                scale *= self.short_side / min(height, width)
            stretch = 1.0 if self.aspect_range is None else math.sqrt(self.py_random.uniform(*self.aspect_range))
            scaled = (max(1, round(height * scale / stretch)), max(1, round(width * scale * stretch)))
            offset = (
                self.py_random.randint(0, max(scaled[0] - self.height, 0)),
                self.py_random.randint(0, max(scaled[1] - self.width, 0)),
            )
            return {"scaled_size": scaled, "offset": offset}

        def apply(self, img: np.ndarray, scaled_size: tuple[int, int], offset: tuple[int, int], **params: Any):
            return scale_crop(img, (self.height, self.width), scaled_size, offset, cv2.INTER_LINEAR, self.fill)

        def apply_to_mask(self, mask: np.ndarray, scaled_size: tuple[int, int], offset: tuple[int, int], **params):
            return scale_crop(mask, (self.height, self.width), scaled_size, offset, cv2.INTER_NEAREST, self.fill_mask)

        def get_transform_init_args_names(self) -> tuple[str, ...]:
            return ("height", "width", "scale_range", "fill", "fill_mask", "short_side", "aspect_range")

    class RandomBrightnessShift(A.ImageOnlyTransform):
        """Add one integer uniform in [-shift, shift] to every channel of a uint8 image, clipped to [0, 255]:
        the official ContrastiveSeg ``RandomBrightness`` (``cv2_aug_transforms.py``)."""

        def __init__(self, shift: int, p: float = 1.0) -> None:
            super().__init__(p=p)
            self.shift = _side(shift, "brightness_shift")

        def get_params(self) -> dict[str, Any]:
            return {"offset": self.py_random.randint(-self.shift, self.shift)}

        def apply(self, img: np.ndarray, offset: int, **params: Any) -> np.ndarray:
            return np.clip(img.astype(np.int16) + offset, 0, 255).astype(np.uint8)

        def get_transform_init_args_names(self) -> tuple[str, ...]:
            return ("shift",)

    class ResizeShortSide(A.ImageOnlyTransform):
        """Resize the image alone (bilinear) so that its shorter side has ``short_side`` pixels; the mask keeps
        its size, so predictions are scored at the label's own resolution."""

        def __init__(self, short_side: int, p: float = 1.0) -> None:
            super().__init__(p=p)
            self.short_side = _side(short_side, "short_side")

        def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
            height, width = img.shape[:2]
            ratio = self.short_side / min(height, width)
            size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
            return img if size == (width, height) else cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)

        def get_transform_init_args_names(self) -> tuple[str, ...]:
            return ("short_side",)

    classes: dict[str, type] = {}
    for cls in (RandomScaleCrop, RandomBrightnessShift, ResizeShortSide):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
        classes[cls.__name__] = cls
    return classes


_CLASSES: dict[str, type] = {}
_CLASS_NAMES = ("RandomScaleCrop", "RandomBrightnessShift", "ResizeShortSide")


def __getattr__(name: str) -> Any:
    """Module attributes ``RandomScaleCrop``, ``RandomBrightnessShift``, ``ResizeShortSide``: the albumentations
    transforms, created on first access."""
    if name in _CLASS_NAMES:
        if not _CLASSES:
            _CLASSES.update(_albumentations_classes())
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_train_transform(
    crop_size: Sequence[int] | int = (512, 1024),
    scale_range: Sequence[float] | None = (0.5, 2.0),
    hflip: bool = True,
    photometric: bool = False,
    ignore_index: int = IGNORE_INDEX,
    *,
    short_side: int | None = None,
    aspect_range: Sequence[float] | None = None,
    brightness_shift: int = 0,
) -> Transform:
    """The training pipeline of the papers as an ``A.Compose``.

    Resize so that the shorter side has ``short_side`` pixels (``None``: keep the size), random scale in
    ``scale_range`` (``None``: no scaling) with the width / height stretched by ``sqrt(r)`` / ``1 / sqrt(r)``
    for ``r`` uniform in ``aspect_range`` (``None``: no stretch) -- all three in one resampling --, zero-pad the
    image and ``ignore_index``-pad the mask up to ``crop_size`` = (height, width), random crop of ``crop_size``,
    horizontal flip with p = 0.5 (``hflip``), a brightness shift by one integer uniform in
    ``[-brightness_shift, brightness_shift]`` on every channel (``0``: off), and with ``photometric`` a colour
    jitter (brightness 0.125, contrast 0.5, saturation 0.5, hue 0.05, p = 0.5).
    """
    import albumentations as A

    if int(brightness_shift) != brightness_shift or brightness_shift < 0:
        raise ValueError(f"brightness_shift must be an int >= 0 (pixel values; 0: off), got {brightness_shift!r}")
    height, width = _pair(crop_size, "crop_size")
    steps: list[Any] = [
        __getattr__("RandomScaleCrop")(
            height,
            width,
            scale_range=scale_range or (1.0, 1.0),
            fill=0,
            fill_mask=ignore_index,
            short_side=short_side,
            aspect_range=aspect_range,
        )
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if brightness_shift:
        steps.append(__getattr__("RandomBrightnessShift")(int(brightness_shift)))
    if photometric:
        steps.append(A.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05, p=0.5))
    return A.Compose(steps)


def build_eval_transform(
    resize: int | None = None,
    crop_size: Sequence[int] | int | None = None,
    ignore_index: int = IGNORE_INDEX,
    *,
    short_side: int | None = None,
) -> Transform | None:
    """The evaluation pipeline: resize the shorter side to ``resize`` pixels (keeping the aspect ratio), then
    centre-crop ``crop_size`` = (height, width), padding with 0 / ``ignore_index`` when smaller -- image and
    mask alike. ``short_side`` resizes the image alone (its shorter side to that many pixels, bilinear) after
    the crop: the mask keeps its size and the module scores its logits resized to it (the label's resolution).

    Returns ``None`` (images at full resolution) when all are ``None``.
    """
    import albumentations as A

    if resize is not None and short_side is not None:
        raise ValueError(
            f"eval_resize={resize!r} resizes image and mask, short_side={short_side!r} the image alone (scored at "
            "the label's size); give one of them"
        )
    steps: list[Any] = []
    if resize is not None:
        if int(resize) != resize or resize < 1:
            raise ValueError(f"eval_resize must be a positive int (shorter side in pixels), got {resize!r}")
        steps.append(A.SmallestMaxSize(max_size=int(resize)))
    if crop_size is not None:
        height, width = _pair(crop_size, "eval_crop")
        steps.append(A.CenterCrop(height, width, pad_if_needed=True, fill=0, fill_mask=ignore_index))
    if short_side is not None:
        steps.append(__getattr__("ResizeShortSide")(short_side))
    return A.Compose(steps) if steps else None


class WorkerSeeded:
    """Wrap a transform so that its random state follows torch's per-process seed.

    albumentations pipelines keep their own random generators, which every data-loader worker would otherwise
    inherit identically (the same augmentation in every worker) and which Lightning's ``seed_everything`` does
    not reach. Before the first call in each process (each worker, each epoch for non-persistent workers) the
    wrapped transform's ``set_random_seed`` is called with ``torch.initial_seed()``; transforms without that
    method are called unchanged.
    """

    def __init__(self, transform: Transform) -> None:
        self.transform = transform
        self._seed: int | None = None

    def __call__(self, **data: Any) -> Mapping[str, Any]:
        seed = torch.initial_seed()
        if seed != self._seed:
            if hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(seed % 2**32)
            self._seed = seed
        return self.transform(**data)

    def __repr__(self) -> str:
        return f"WorkerSeeded({self.transform!r})"
