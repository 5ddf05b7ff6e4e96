"""The embedded dataset that needs no files: procedurally generated scenes (see :mod:`pixcontrast.data.scenes`).

A sample depends only on ``(seed, split, index)``: it is generated on the fly with its own
``numpy.random.Generator``, so loading is worker-safe and independent of the order of calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pixcontrast.data.base import SPLITS, RawSample, SegmentationDataModule, SegmentationDataset, Transform
from pixcontrast.data.scenes import check_num_classes, generate_scene, scene_classes

MIN_IMAGE_SIZE = 32
_SPLIT_CODES = {split: code for code, split in enumerate(SPLITS)}


def _image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(height, width) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be at least {MIN_IMAGE_SIZE} pixels per side for synthetic scenes, got {image_size}"
        )
    return int(height), int(width)


class SyntheticScenesDataset(SegmentationDataset):
    """``num_images`` synthetic scenes of one split; item ``index`` is a pure function of ``(seed, split, index)``.

    Items follow the batch format: ``image`` 3 x H x W float32 (normalised), ``mask`` H x W int64, ``name``.
    """

    def __init__(
        self,
        num_images: int,
        split: str = "train",
        num_classes: int = 8,
        image_size: int | Sequence[int] = 128,
        seed: int = 0,
        transform: Transform | None = None,
        class_family: int = 0,
    ) -> None:
        super().__init__(transform)
        if split not in _SPLIT_CODES:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.classes = scene_classes(num_classes, class_family)
        self.height, self.width = _image_hw(image_size)
        self.num_images = num_images
        self.split = split
        self.seed = seed

    def __len__(self) -> int:
        return self.num_images

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classes.names

    def generator(self, index: int) -> np.random.Generator:
        """The random generator of item ``index``, seeded from ``(seed, split, index)`` only."""
        entropy = np.random.SeedSequence([self.seed, _SPLIT_CODES[self.split], index])
        return np.random.Generator(np.random.PCG64(entropy))

    def load_sample(self, index: int) -> RawSample:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} synthetic images")
        image, mask = generate_scene(self.generator(index), self.height, self.width, self.classes)
        return RawSample(image=image, mask=mask, name=f"{self.split}_{index:06d}")


class SyntheticScenesDataModule(SegmentationDataModule):
    """Procedurally generated scenes: no files, deterministic from ``seed``, any size and number of classes.

    Args:
        root: unused; kept so that every datamodule takes the dataset folder as its first argument.
        num_classes: number of classes K (2 to 16); about 3/8 are background textures ("stuff"), the rest
            textured shapes ("things"). ``class_names`` say texture and shape, e.g. ``"ellipse_grating"``.
        image_size: side of the square images, or ``(height, width)``; at least 32.
        num_train, num_val, num_test: number of images per split (each split uses its own random stream).
        seed: the dataset seed; the same seed gives the same images on every machine and worker.
        class_family: which label set (0 or 1, see :func:`scene_classes`): family 1 is a different task made
            of the same kinds of textures and shapes, e.g. to pretrain an encoder for PiCIE on family 0.
        batch_size, num_workers, pin_memory, persistent_workers, drop_last, eval_batch_size: see
            :class:`~pixcontrast.data.base.SegmentationDataModule`.

    There is no augmentation: every index is a fresh scene, and flips would change the orientation that
    defines some classes.
    """

    def __init__(
        self,
        root: str | None = None,
        num_classes: int = 8,
        image_size: int | tuple[int, int] = 128,
        num_train: int = 512,
        num_val: int = 64,
        num_test: int = 64,
        seed: int = 0,
        class_family: int = 0,
        **loader_options: Any,
    ) -> None:
        super().__init__(**loader_options)
        check_num_classes(num_classes)
        _image_hw(image_size)
        for name, count in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if count < 1:
                raise ValueError(f"{name} must be >= 1, got {count}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.root = root
        self.image_size = image_size
        self.seed = seed
        self.split_sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.class_family = class_family
        self._classes = scene_classes(num_classes, class_family)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._classes.names

    def build_dataset(self, split: str) -> SyntheticScenesDataset:
        return SyntheticScenesDataset(
            self.split_sizes[split],
            split,
            self.num_classes,
            self.image_size,
            self.seed,
            class_family=self.class_family,
        )
