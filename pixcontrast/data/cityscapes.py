"""Cityscapes: the official ``leftImg8bit`` / ``gtFine`` tree, label sets "19" (train ids) and "27" (ids 7..33)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pixcontrast.data.files import BenchmarkDataModule, FileSegmentationDataset
from pixcontrast.data.io import missing_files
from pixcontrast.data.label_maps import (
    CITYSCAPES_LABEL_SETS,
    CITYSCAPES_LOOKUPS,
    CITYSCAPES_TRAIN_ID_LOOKUP,
    LabelLookup,
)

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
        train_splits: the ``leftImg8bit`` splits training reads (default ``["train"]``), e.g. ``["train",
            "train_extra"]`` (``leftImg8bit_trainextra.zip``) or PiCIE's official ``["test", "train_extra"]``.
        train_labels: read the ``gtFine`` labels of the training splits; ``False`` trains on the images alone (every
            pixel ignored, no label file opened), as unsupervised methods do.
        val_splits / test_splits: the splits validation (and predict) / test read and score, with their ``gtFine``
            labels (default ``["val"]`` / ``["test"]``); PiCIE's official evaluation scores ``["val", "train"]``
            (janghyuncho/PiCIE ``data/cityscapes_eval_dataset.py``).
        train_transform / eval_transform: a callable ``f(image=..., mask=...) -> {"image", "mask"}`` (e.g. an
            ``albumentations.Compose``) replacing the built-in pipeline.

    The loader options are those of :class:`~pixcontrast.data.base.SegmentationDataModule`. An evaluated ``test``
    split uses ``gtFine/test`` when present (the official test labels are placeholders) and is unlabelled otherwise.
    Several splits are read in the order given, each sorted by file name.
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
        train_splits: Sequence[str] = ("train",),
        train_labels: bool = True,
        val_splits: Sequence[str] = ("val",),
        test_splits: Sequence[str] = ("test",),
        **kwargs: Any,
    ) -> None:
        super().__init__(root, label_set, crop_size=crop_size, **kwargs)
        self.splits = {"train": list(train_splits), "val": list(val_splits), "test": list(test_splits)}
        for stage, folders in self.splits.items():
            if not folders or any(not isinstance(folder, str) or not folder for folder in folders):
                raise ValueError(
                    f"Cityscapes: {stage}_splits must be a non-empty list of leftImg8bit folder names, e.g. "
                    f"['{stage}'], got {folders!r}"
                )
        self.train_labels = train_labels

    def _images(self, split: str) -> list[Path]:
        folder = self.root / "leftImg8bit" / split
        if not folder.is_dir():
            problem = "root does not exist" if not self.root.is_dir() else f"missing folder {str(folder)!r}"
            raise self.layout_error(problem)
        return sorted(folder.glob(f"*/*{IMAGE_SUFFIX}"))

    def _label_ids(self, split: str, images: list[Path]) -> list[Path | None]:
        """The ``*_gtFine_labelIds.png`` path of each image; ``None`` entries for a test split without ``gtFine``."""
        folder = self.root / "gtFine" / split
        if split == "test" and not folder.is_dir():
            return [None] * len(images)
        return [folder / image.parent.name / f"{image.name[: -len(IMAGE_SUFFIX)]}{LABEL_ID_SUFFIX}" for image in images]

    def _label_files(self, split: str, label_ids: list[Path | None]) -> tuple[list[Path | None], LabelLookup]:
        """The label files to read and their lookup: ``*_gtFine_labelTrainIds.png`` when label set "19" has them
        for every labelled image, else the label ids (checked to exist)."""
        labelled = [path for path in label_ids if path is not None]
        if self.label_set == "19" and labelled:
            train_ids = [
                None if p is None else p.with_name(p.name[: -len(LABEL_ID_SUFFIX)] + TRAIN_ID_SUFFIX) for p in label_ids
            ]
            if not missing_files([path for path in train_ids if path is not None]):
                return train_ids, CITYSCAPES_TRAIN_ID_LOOKUP
        self.check_files(labelled, f"{split} label maps (*{LABEL_ID_SUFFIX})")
        return label_ids, CITYSCAPES_LOOKUPS[self.label_set]

    def build_dataset(self, split: str) -> FileSegmentationDataset:
        read_labels = split != "train" or self.train_labels
        images: list[Path] = []
        label_ids: list[Path | None] = []
        for folder in self.splits[split]:
            folder_images = self._images(folder)
            images += folder_images
            label_ids += self._label_ids(folder, folder_images) if read_labels else [None] * len(folder_images)
        labels, mapping = self._label_files(split, label_ids)
        names = [image.name[: -len(IMAGE_SUFFIX)] for image in images]
        return FileSegmentationDataset(
            images, labels, names, label_mapping=mapping, transform=self.transform_for(split)
        )
