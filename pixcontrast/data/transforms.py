"""Albumentations pipelines of the papers: random scale + pad + random crop + flip (+ photometric), and eval.

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


def _scale_range(value: Sequence[float]) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {tuple(value)!r}")
    return low, high


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


def _random_scale_crop_class() -> type:
    """Build :class:`RandomScaleCrop` lazily so that albumentations is imported only when used."""
    import albumentations as A
    import cv2

    class RandomScaleCrop(A.DualTransform):
        """Random scale in ``scale_range``, pad to ``(height, width)`` (image ``fill``, mask ``fill_mask``),
        random ``(height, width)`` crop -- in one warp of the crop window (see :func:`scale_crop`).
        """

        def __init__(
            self,
            height: int,
            width: int,
            scale_range: tuple[float, float] = (0.5, 2.0),
            fill: float = 0,
            fill_mask: float = IGNORE_INDEX,
            p: float = 1.0,
        ) -> None:
            super().__init__(p=p)
            self.height, self.width = _pair((height, width), "crop size")
            self.scale_range = _scale_range(scale_range)
            self.fill, self.fill_mask = fill, fill_mask

        def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
            height, width = params["shape"][:2]
            scale = self.py_random.uniform(*self.scale_range)
            scaled = (max(1, round(height * scale)), max(1, round(width * scale)))
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
            return ("height", "width", "scale_range", "fill", "fill_mask")

    RandomScaleCrop.__module__ = __name__
    RandomScaleCrop.__qualname__ = "RandomScaleCrop"
    return RandomScaleCrop


_CLASSES: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    """Module attribute ``RandomScaleCrop``: the albumentations transform, created on first access."""
    if name == "RandomScaleCrop":
        if name not in _CLASSES:
            _CLASSES[name] = _random_scale_crop_class()
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_train_transform(
    crop_size: Sequence[int] | int = (512, 1024),
    scale_range: Sequence[float] | None = (0.5, 2.0),
    hflip: bool = True,
    photometric: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> Transform:
    """The training pipeline of the papers as an ``A.Compose``.

    Random scale in ``scale_range`` (``None``: no scaling), zero-pad the image and ``ignore_index``-pad the mask
    up to ``crop_size`` = (height, width), random crop of ``crop_size``, horizontal flip with p = 0.5 (``hflip``),
    and with ``photometric`` a colour jitter (brightness 0.125, contrast 0.5, saturation 0.5, hue 0.05,
    p = 0.5) close to the photometric distortion of the supervised pixel-contrast recipe.
    """
    import albumentations as A

    height, width = _pair(crop_size, "crop_size")
    steps: list[Any] = [
        __getattr__("RandomScaleCrop")(
            height, width, scale_range=scale_range or (1.0, 1.0), fill=0, fill_mask=ignore_index
        )
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if photometric:
        steps.append(A.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05, p=0.5))
    return A.Compose(steps)


def build_eval_transform(
    resize: int | None = None,
    crop_size: Sequence[int] | int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Transform | None:
    """The evaluation pipeline: resize the shorter side to ``resize`` pixels (keeping the aspect ratio), then
    centre-crop ``crop_size`` = (height, width), padding with 0 / ``ignore_index`` when smaller.

    Returns ``None`` (images at full resolution) when both are ``None``.
    """
    import albumentations as A

    steps: list[Any] = []
    if resize is not None:
        if int(resize) != resize or resize < 1:
            raise ValueError(f"eval_resize must be a positive int (shorter side in pixels), got {resize!r}")
        steps.append(A.SmallestMaxSize(max_size=int(resize)))
    if crop_size is not None:
        height, width = _pair(crop_size, "eval_crop")
        steps.append(A.CenterCrop(height, width, pad_if_needed=True, fill=0, fill_mask=ignore_index))
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
