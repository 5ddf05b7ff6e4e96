"""Cityscapes: the official ``leftImg8bit`` / ``gtFine`` tree, label sets "19" (train ids) and "27" (ids 7..33)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pixcontrast.data.files import BenchmarkDataModule, FileSegmentationDataset
from pixcontrast.data.io import missing_files
from pixcontrast.data.label_maps import CITYSCAPES_LABEL_SETS, CITYSCAPES_LOOKUPS, CITYSCAPES_TRAIN_ID_LOOKUP

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"


class CityscapesDataModule(BenchmarkDataModule):
    """Cityscapes as the official archives unpack (``leftImg8bit_trainvaltest.zip``, ``gtFine_trainvaltest.zip``).

    Label sets: ``"19"`` -- the 19 training classes (train ids, every other label id 255); ``"27"`` -- labelIds
    7..33 as 0..26 (unsupervised benchmarks), ids 0..6 ignored. Label ids are mapped on the fly through a
    lookup table; for ``"19"`` the ``*_gtFine_labelTrainIds.png`` files written by
    ``pixcontrast prepare cityscapes --root ROOT`` are read instead when present for every image. A value
    that is no label id (above 33 other than 255; in train-id files above 18 other than 255) raises a
    :class:`~pixcontrast.data.label_maps.LabelValueError` naming the file.
    Items are named by the frame id (the image stem without ``_leftImg8bit``), e.g. ``aachen_000000_000019``.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        label_set: ``"19"`` or ``"27"``.
        crop_size: training crop (height, width).
        scale_range: random scale range of the training pipeline (``None``: no scaling).
        hflip / photometric: random horizontal flip / colour jitter in training.
        eval_resize: resize the shorter side of val/test images (and masks) to this many pixels (default: full
            size).
        eval_crop: centre crop (height, width) of val/test images after ``eval_resize``.
        short_side: resize the shorter side to this many pixels before the random scale in training, and of
            the val/test/predict images alone (bilinear), whose masks keep their size: the modules score the
            logits resized to the label's own resolution (not with ``eval_resize``). The official PASCAL-Context
            and COCO-Stuff protocols use 520 (ContrastiveSeg ``configs/pascal_context/H_48_D_4.json``,
            ``configs/coco_stuff/H_48_D_4.json``: ``resize.min_side_length`` in ``train_trans`` and ``val_trans``).
        aspect_range: with the random scale ``s``, stretch width by ``s * sqrt(r)`` and height by ``s / sqrt(r)``,
            ``r`` uniform in ``(low, high)`` (``None``: no stretch). Official: ``(0.9, 1.1)``, every ContrastiveSeg
            config (``random_resize.aspect_range``, ``lib/datasets/tools/cv2_aug_transforms.py`` ``RandomResize``).
        brightness_shift: add one integer uniform in ``[-n, n]`` to every channel of each training crop, clipped
            to 0..255 (``0``: off). Official: ``10`` with probability 1 (``random_brightness``: ``shift_value`` 10,
            ``ratio`` 1.0, ``RandomBrightness`` in ``cv2_aug_transforms.py``), every ContrastiveSeg config.
        extra_train_splits: further ``leftImg8bit`` splits added to training as unlabelled images (all pixels
            ignored), e.g. ``["train_extra"]`` (``leftImg8bit_trainextra.zip``) or ``["test"]`` for
            unsupervised training.
        train_transform / eval_transform: a callable ``f(image=..., mask=...) -> {"image", "mask"}`` (e.g. an
            ``albumentations.Compose``) replacing the built-in pipeline.

    The loader options are those of :class:`~pixcontrast.data.base.SegmentationDataModule`. The test split
    uses ``gtFine/test`` when present (the official test labels are placeholders) and is unlabelled otherwise.
    """

    dataset_name = "Cityscapes"
    label_sets = CITYSCAPES_LABEL_SETS
    layout = (
        "  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
        "  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png\n"
        "(unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into root)"
    )
    prepare_hint = (
        "Optionally run `pixcontrast prepare cityscapes --root {root}` to write *_gtFine_labelTrainIds.png "
        "next to the label ids."
    )

    def __init__(
        self,
        root: str,
        label_set: str = "19",
        *,
        crop_size: tuple[int, int] = (512, 1024),
        extra_train_splits: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(root, label_set, crop_size=crop_size, **kwargs)
        self.extra_train_splits = list(extra_train_splits)

    def _images(self, split: str) -> list[Path]:
        folder = self.root / "leftImg8bit" / split
        if not folder.is_dir():
            problem = "root does not exist" if not self.root.is_dir() else f"missing folder {str(folder)!r}"
            raise self.layout_error(problem)
        return sorted(folder.glob(f"*/*{IMAGE_SUFFIX}"))

    def _labels(self, split: str, images: list[Path]) -> tuple[list[Path] | None, bool]:
        """Label paths of ``images`` and whether they hold train ids; ``None`` for an unlabelled test split."""
        folder = self.root / "gtFine" / split
        if split == "test" and not folder.is_dir():
            return None, False
        frames = [(image.parent.name, image.name[: -len(IMAGE_SUFFIX)]) for image in images]
        if self.label_set == "19":
            train_ids = [folder / city / f"{frame}{TRAIN_ID_SUFFIX}" for city, frame in frames]
            if images and not missing_files(train_ids):
                return train_ids, True
        label_ids = [folder / city / f"{frame}{LABEL_ID_SUFFIX}" for city, frame in frames]
        self.check_files(label_ids, f"{split} label maps (*{LABEL_ID_SUFFIX})")
        return label_ids, False

    def build_dataset(self, split: str) -> FileSegmentationDataset:
        images = self._images(split)
        labels, train_ids = self._labels(split, images)
        mapping = CITYSCAPES_TRAIN_ID_LOOKUP if train_ids else CITYSCAPES_LOOKUPS[self.label_set]
        all_labels: list[Path | None] = list(labels) if labels is not None else [None] * len(images)
        if split == "train":
            for extra in self.extra_train_splits:
                extra_images = self._images(extra)
                images += extra_images
                all_labels += [None] * len(extra_images)
        names = [image.name[: -len(IMAGE_SUFFIX)] for image in images]
        return FileSegmentationDataset(
            images, all_labels, names, label_mapping=mapping, transform=self.transform_for(split)
        )
