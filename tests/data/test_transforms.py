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


def _labelled_extent(mask: np.ndarray) -> tuple[int, int]:
    """Rows and columns of the labelled (not 255) block at the top-left of a padded training crop."""
    labelled = mask != 255
    return int(labelled.any(axis=1).sum()), int(labelled.any(axis=0).sum())


@pytest.mark.parametrize(("scale", "expected"), [(1.0, (20, 40)), (2.0, (40, 64))])
def test_train_transform_resizes_the_short_side_before_the_random_scale(scale, expected) -> None:
    """40 x 80 with short_side 20 -> 20 x 40, then the random scale: x2 gives 40 x 80 (cropped to 64 columns)."""
    mask = np.zeros((40, 80), dtype=np.int64)
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    transform = build_train_transform(crop_size=(64, 64), scale_range=(scale, scale), hflip=False, short_side=20)
    transform.set_random_seed(0)
    out = transform(image=image, mask=mask)
    assert out["image"].shape == (64, 64, 3) and out["mask"].shape == (64, 64)
    assert _labelled_extent(out["mask"]) == expected


def test_train_transform_aspect_range_stretches_width_by_sqrt_r() -> None:
    mask = np.zeros((20, 20), dtype=np.int64)
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    transform = build_train_transform(crop_size=(64, 64), scale_range=(1.0, 1.0), hflip=False, aspect_range=(4, 4))
    transform.set_random_seed(0)
    assert _labelled_extent(transform(image=image, mask=mask)["mask"]) == (10, 40)  # r = 4: height / 2, width x 2
    ranged = build_train_transform(crop_size=(64, 64), scale_range=(1.0, 1.0), hflip=False, aspect_range=(0.9, 1.1))
    ranged.set_random_seed(1)
    for _ in range(10):
        height, width = _labelled_extent(ranged(image=image, mask=mask)["mask"])
        assert 19 <= height <= 21 and 19 <= width <= 21 and abs(height * width - 400) <= 21


def test_train_transform_brightness_shift_adds_one_integer_per_image() -> None:
    image = np.full((16, 16, 3), 100, dtype=np.uint8)
    image[0, 0] = 250  # clipped at 255
    mask = np.zeros((16, 16), dtype=np.int64)
    transform = build_train_transform(crop_size=(16, 16), scale_range=None, hflip=False, brightness_shift=10)
    transform.set_random_seed(0)
    shifts = set()
    for _ in range(40):
        out = transform(image=image, mask=mask)["image"].astype(int)
        shift = out[1, 1, 0] - 100
        assert -10 <= shift <= 10 and (out[1:, 1:] == 100 + shift).all()
        assert out[0, 0, 0] == min(250 + shift, 255)
        shifts.add(int(shift))
    assert min(shifts) < 0 < max(shifts)
    off = build_train_transform(crop_size=(16, 16), scale_range=None, hflip=False, brightness_shift=0)
    np.testing.assert_array_equal(off(image=image, mask=mask)["image"], image)


def test_eval_transform_short_side_resizes_the_image_alone() -> None:
    rng = np.random.default_rng(5)
    image, mask = _smooth_image(rng, 40, 60), rng.integers(0, 5, (40, 60)).astype(np.int64)
    out = build_eval_transform(short_side=20)(image=image, mask=mask)
    assert out["image"].shape == (20, 30, 3)
    np.testing.assert_array_equal(out["mask"], mask)  # scored at the label's own resolution
    np.testing.assert_allclose(out["image"], cv2.resize(image, (30, 20), interpolation=cv2.INTER_LINEAR), atol=1)
    tall = build_eval_transform(short_side=20)(image=image.transpose(1, 0, 2).copy(), mask=mask.T.copy())
    assert tall["image"].shape == (30, 20, 3) and tall["mask"].shape == (60, 40)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_size": (0, 10)}, "crop_size"),
        ({"crop_size": (10, 10, 10)}, "crop_size"),
        ({"scale_range": (2.0, 0.5)}, "scale_range"),
        ({"scale_range": (0.0, 1.0)}, "scale_range"),
        ({"short_side": 0}, "short_side must be a positive int"),
        ({"aspect_range": (1.1, 0.9)}, "aspect_range"),
        ({"brightness_shift": -1}, "brightness_shift must be an int >= 0"),
        ({"brightness_shift": 2.5}, "brightness_shift"),
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
    with pytest.raises(ValueError, match="short_side"):
        build_eval_transform(short_side=-5)
    with pytest.raises(ValueError, match="eval_resize=320 resizes image and mask, short_side=520"):
        build_eval_transform(resize=320, short_side=520)


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
