from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch

from pixcontrast.data.transforms import (
    WorkerSeeded,
    build_eval_transform,
    build_train_transform,
    scale_crop,
)


def _smooth_image(rng: np.random.Generator, height: int = 60, width: int = 90) -> np.ndarray:
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (7, 7), 2)


@pytest.mark.parametrize("scale", [0.5, 0.73, 1.0, 1.6, 2.0])
def test_scale_crop_equals_resize_pad_crop(scale: float) -> None:
    rng = np.random.default_rng(0)
    image, mask = _smooth_image(rng), rng.integers(0, 19, (60, 90)).astype(np.int64)
    crop, scaled = (48, 64), (round(60 * scale), round(90 * scale))
    offset = (int(rng.integers(0, max(scaled[0] - 48, 0) + 1)), int(rng.integers(0, max(scaled[1] - 64, 0) + 1)))
    pad = ((0, max(48 - scaled[0], 0)), (0, max(64 - scaled[1], 0)))
    window = (slice(offset[0], offset[0] + 48), slice(offset[1], offset[1] + 64))

    reference = cv2.resize(image, scaled[::-1], interpolation=cv2.INTER_LINEAR)
    reference = np.pad(reference, (*pad, (0, 0)))[window]
    out = scale_crop(image, crop, scaled, offset, cv2.INTER_LINEAR, 0)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - reference).max() <= 1

    # nearest neighbour with half-pixel centres, padded with ignore
    rows = np.minimum(((np.arange(scaled[0]) + 0.5) * 60 / scaled[0]).astype(int), 59)
    cols = np.minimum(((np.arange(scaled[1]) + 0.5) * 90 / scaled[1]).astype(int), 89)
    mask_reference = np.pad(mask[rows][:, cols], pad, constant_values=255)[window]
    mask_out = scale_crop(mask, crop, scaled, offset, cv2.INTER_NEAREST, 255)
    np.testing.assert_array_equal(mask_out, mask_reference)


def test_train_transform_shapes_padding_and_alignment() -> None:
    """Image channel 0 carries the mask: crop + flip must keep them aligned; padding is 0 / 255."""
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 19, (20, 30)).astype(np.int64)
    image = np.repeat(mask[..., None], 3, axis=2).astype(np.uint8)
    transform = build_train_transform(crop_size=(32, 40), scale_range=(1.0, 1.0), hflip=True)
    transform.set_random_seed(0)
    for _ in range(4):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (32, 40, 3) and out["mask"].shape == (32, 40)
        np.testing.assert_array_equal(out["mask"][20:], 255)
        assert (out["image"][20:] == 0).all()
        valid = out["mask"] != 255
        np.testing.assert_array_equal(out["image"][..., 0][valid], out["mask"][valid])
        assert valid.sum() == 20 * 30


def test_train_transform_random_scales_keep_label_values() -> None:
    rng = np.random.default_rng(2)
    image, mask = _smooth_image(rng), rng.integers(0, 5, (60, 90)).astype(np.int64)
    transform = build_train_transform(crop_size=(40, 40), photometric=True)
    transform.set_random_seed(3)
    for _ in range(8):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (40, 40, 3) and out["image"].dtype == np.uint8
        assert set(np.unique(out["mask"])) <= {0, 1, 2, 3, 4, 255}


def test_eval_transform_resize_and_crop() -> None:
    rng = np.random.default_rng(3)
    image, mask = _smooth_image(rng), rng.integers(0, 5, (60, 90)).astype(np.int64)
    out = build_eval_transform(resize=30, crop_size=(30, 40))(image=image, mask=mask)
    assert out["image"].shape == (30, 40, 3) and out["mask"].shape == (30, 40)
    padded = build_eval_transform(crop_size=(80, 90))(image=image, mask=mask)
    assert (padded["mask"] == 255).sum() == 20 * 90
    assert build_eval_transform() is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_size": (0, 10)}, "crop_size"),
        ({"crop_size": (10, 10, 10)}, "crop_size"),
        ({"scale_range": (2.0, 0.5)}, "scale_range"),
        ({"scale_range": (0.0, 1.0)}, "scale_range"),
    ],
)
def test_train_transform_rejects_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_train_transform(**kwargs)


def test_eval_transform_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="eval_resize"):
        build_eval_transform(resize=0)
    with pytest.raises(ValueError, match="eval_crop"):
        build_eval_transform(crop_size=(-1, 4))


def test_worker_seeded_follows_torch_seed_and_pickles() -> None:
    rng = np.random.default_rng(4)
    image, mask = _smooth_image(rng), rng.integers(0, 5, (60, 90)).astype(np.int64)
    transform = WorkerSeeded(build_train_transform(crop_size=(16, 16)))
    copy = pickle.loads(pickle.dumps(transform))  # what a spawned worker receives

    def run(wrapped: WorkerSeeded, seed: int) -> np.ndarray:
        torch.manual_seed(seed)
        return np.stack([wrapped(image=image, mask=mask)["mask"] for _ in range(3)])

    first = run(transform, 7)
    np.testing.assert_array_equal(first, run(copy, 7))  # same seed, same augmentations
    assert not np.array_equal(first, run(copy, 8))  # another worker seed, other augmentations


def test_worker_seeded_passes_plain_callables_through() -> None:
    calls = []

    def transform(image: np.ndarray, mask: np.ndarray) -> dict:
        calls.append(image.shape)
        return {"image": image, "mask": mask}

    out = WorkerSeeded(transform)(image=np.zeros((2, 2, 3), np.uint8), mask=np.zeros((2, 2), np.int64))
    assert calls == [(2, 2, 3)] and out["mask"].shape == (2, 2)
