"""Your own data: a folder of images, with masks (class-id PNGs or colour-coded) or without (unlabelled)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from pixcontrast.data.base import IGNORE_INDEX, default_palette
from pixcontrast.data.files import FileSegmentationDataModule, FileSegmentationDataset, LabelMapping
from pixcontrast.data.io import read_image, read_label
from pixcontrast.data.label_maps import ColourLookup, LabelLookup, build_lut

#: Image file suffixes that are listed (case-insensitive).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def list_images(folder: Path) -> list[str]:
    """Relative POSIX paths of the image files under ``folder`` (nested folders, hidden entries skipped), sorted."""
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(directory, name).relative_to(folder).as_posix())
    return sorted(found)


def split_fraction(relative_path: str) -> float:
    """A stable number in [0, 1) for a file: the first 8 bytes of the SHA-1 of its relative path."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hash_split(relative_paths: Sequence[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """``(train, val)``: a file is in val when :func:`split_fraction` of its path is below ``val_fraction``.

    Independent of listing order and of the other files, so adding images never moves existing ones between
    splits. When no file falls below the fraction, the one with the smallest number goes to val.
    """
    scores = {path: split_fraction(path) for path in relative_paths}
    val = [path for path in relative_paths if scores[path] < val_fraction]
    if not val and relative_paths:
        val = [min(relative_paths, key=scores.__getitem__)]
    chosen = set(val)
    return [path for path in relative_paths if path not in chosen], val


class FolderSegmentationDataModule(FileSegmentationDataModule):
    """Images (and optionally masks) in plain folders, with the same pipelines as the benchmark datamodules.

    Layout (nested folders are fine; a mask has the image's relative path with ``mask_suffix``)::

        root/images/<path>/<name>.{jpg,png,tif,...}
        root/masks/<path>/<name>.png        optional: without the masks folder the images are unlabelled

    Masks hold class ids ``0..K-1`` with 255 = ignore, ``K = len(class_names)``. Other encodings:
    ``label_map`` maps raw values to class ids (or 255) first -- values it does not list must already be class
    ids; ``palette`` reads RGB masks in which class ``k`` is painted in colour ``palette[k]`` (and
    ``ignore_colors`` are ignored). Any other value or colour raises a
    :class:`~pixcontrast.data.label_maps.LabelValueError` naming the file and the values.

    Validation reads ``val_images`` (and ``val_masks``) when given, else a deterministic ``val_fraction`` of
    the images chosen by a hash of their relative path. Unlabelled training images with labelled validation
    folders (``val_masks``) suit PiCIE: it trains on the images and is evaluated on the masks.
    Test and predict use the validation split (to predict every image, pass ``val_images=images``).
    Items are named by their relative path without suffix.

    Args:
        root: the folder holding ``images`` (and ``masks``).
        images / masks: sub-folders of ``root`` (or absolute paths).
        class_names: names of the classes, index = class id; required with masks (``()`` without).
        label_map: raw mask value -> class id or 255.
        palette: ``K`` RGB colours of colour-coded masks; also the colours of overlays and figures.
        ignore_colors: RGB colours of colour-coded masks that mean "ignore".
        val_images / val_masks: validation folders (relative to ``root`` or absolute).
        val_fraction: share of ``images`` used for validation without ``val_images``, in (0, 1).
        mask_suffix: file suffix of the masks.

    The transform and loader options are those of
    :class:`~pixcontrast.data.cityscapes.CityscapesDataModule`; sizes are (height, width).
    """

    dataset_name = "FolderSegmentationDataModule"
    layout = (
        "  images/<path>/<name>.{jpg,jpeg,png,bmp,tif,tiff,webp}\n"
        "  masks/<path>/<name>.png   (optional; class ids 0..K-1, 255 = ignore; without it: unlabelled)"
    )

    def __init__(
        self,
        root: str,
        images: str = "images",
        masks: str = "masks",
        class_names: Sequence[str] | None = None,
        label_map: Mapping[int, int] | None = None,
        palette: Sequence[tuple[int, int, int]] | None = None,
        ignore_colors: Sequence[tuple[int, int, int]] = (),
        val_images: str | None = None,
        val_masks: str | None = None,
        val_fraction: float = 0.1,
        mask_suffix: str = ".png",
        *,
        crop_size: tuple[int, int] = (512, 512),
        **kwargs: Any,
    ) -> None:
        super().__init__(root, crop_size=crop_size, **kwargs)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"{self.dataset_name}: val_fraction must be in (0, 1), got {val_fraction}")
        if val_masks is not None and val_images is None:
            raise ValueError(f"{self.dataset_name}: val_masks needs val_images (the images the masks belong to)")
        if label_map is not None and palette is not None:
            raise ValueError(
                f"{self.dataset_name}: give label_map (single-channel masks) or palette (colour masks), not both"
            )
        self.images_dir, self.masks_dir = self.root / images, self.root / masks
        self.val_images_dir = None if val_images is None else self.root / val_images
        self.val_masks_dir = None if val_masks is None else self.root / val_masks
        self.val_fraction = val_fraction
        self.mask_suffix = mask_suffix
        self._class_names = None if class_names is None else tuple(str(name) for name in class_names)
        self._palette = None if palette is None else _colours(palette, "palette")
        if self._palette is not None and self._class_names is not None and len(self._palette) != len(self._class_names):
            raise ValueError(
                f"{self.dataset_name}: palette has {len(self._palette)} colours but class_names has "
                f"{len(self._class_names)} names; give one colour per class"
            )
        self.label_mapping = self._build_mapping(label_map, _colours(ignore_colors, "ignore_colors"))

    # ------------------------------------------------------------------------------------------ label set
    @property
    def has_labels(self) -> bool:
        """Whether any split has masks (the masks folder, or the val_masks folder, exists)."""
        return self.masks_dir.is_dir() or (self.val_masks_dir is not None and self.val_masks_dir.is_dir())

    @property
    def class_names(self) -> Sequence[str]:
        if self._class_names is None and self.has_labels:
            raise self._missing_class_names()
        return self._class_names or ()

    def _missing_class_names(self) -> ValueError:
        return ValueError(
            f"{self.dataset_name}: the masks in {str(self.masks_dir)!r} need class_names (index = class id), "
            "e.g. --data.class_names=[sky,road,car]"
        )

    @property
    def palette(self) -> np.ndarray:
        return self._palette if self._palette is not None else default_palette(self.num_classes)

    def _build_mapping(self, label_map: Mapping[int, int] | None, ignore_colors: np.ndarray) -> LabelMapping | None:
        """The checked raw-value (or colour) -> class id mapping of the masks; ``None`` without class names."""
        if self._class_names is None:
            if label_map is not None or self._palette is not None:
                raise ValueError(f"{self.dataset_name}: label_map and palette need class_names (index = class id)")
            return None
        num_classes = len(self._class_names)
        expected = f"class ids 0..{num_classes - 1} (class_names) and 255"
        fix = (
            "check class_names, map other raw values with label_map={raw: class id or 255}, or give "
            "palette=[[r, g, b], ...] (one colour per class) for colour-coded masks"
        )
        if self._palette is not None:
            colours = np.concatenate([self._palette, ignore_colors])
            classes = np.concatenate([np.arange(num_classes), np.full(len(ignore_colors), IGNORE_INDEX)])
            names = "one colour of palette per class, or of ignore_colors"
            return ColourLookup(colours, classes, f"RGB masks with {names}", fix)
        mapping = {k: k for k in range(num_classes)}
        for raw, target in (label_map or {}).items():
            if int(raw) < 0 or not (0 <= int(target) < num_classes or int(target) == IGNORE_INDEX):
                raise ValueError(
                    f"{self.dataset_name}: label_map entry {raw}: {target} is invalid; keys are raw mask values "
                    f">= 0, values class ids 0..{num_classes - 1} or {IGNORE_INDEX}"
                )
            mapping[int(raw)] = int(target)
        if label_map:
            expected += f", or a raw value of label_map ({sorted(int(raw) for raw in label_map)})"
        size = max(256, max(mapping) + 1)
        return LabelLookup(build_lut(mapping, size=size), expected, fix)

    # ------------------------------------------------------------------------------------------ files
    def _listed(self, folder: Path) -> list[str]:
        if not folder.is_dir():
            problem = "root does not exist" if not self.root.is_dir() else f"missing image folder {str(folder)!r}"
            raise self.layout_error(problem)
        relative = list_images(folder)
        if not relative:
            raise self.layout_error(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {str(folder)!r}")
        return relative

    def _files(self, split: str) -> tuple[Path, Path | None, list[str]]:
        """The image folder, mask folder (``None``: unlabelled) and relative image paths of ``split``."""
        masks = self.masks_dir if self.masks_dir.is_dir() else None
        if split != "train" and self.val_images_dir is not None:
            if masks is not None and self.val_masks_dir is None:
                raise ValueError(
                    f"{self.dataset_name}: the training images have masks, so the validation images "
                    f"{str(self.val_images_dir)!r} need them too: set val_masks"
                )
            return self.val_images_dir, self.val_masks_dir, self._listed(self.val_images_dir)
        relative = self._listed(self.images_dir)
        if self.val_images_dir is not None:
            return self.images_dir, masks, relative
        if len(relative) < 2:
            raise self.layout_error(
                f"only {len(relative)} image under {str(self.images_dir)!r}: a val_fraction split needs at least "
                "2 images; add images or give val_images"
            )
        train, val = hash_split(relative, self.val_fraction)
        return self.images_dir, masks, train if split == "train" else val

    def build_dataset(self, split: str) -> FileSegmentationDataset:
        image_dir, mask_dir, relative = self._files(split)
        images = [image_dir / path for path in relative]
        names = [str(Path(path).with_suffix("").as_posix()) for path in relative]
        labels = None
        if mask_dir is not None:
            if self.label_mapping is None:  # masks without class names: say so before any file is read
                raise self._missing_class_names()
            labels = [mask_dir / f"{name}{self.mask_suffix}" for name in names]
            self.check_files(labels, f"{split} masks ({str(mask_dir)!r}/<image path>{self.mask_suffix})")
        elif split == "train":
            rank_zero_info(f"{self.dataset_name}: no masks folder {str(self.masks_dir)!r}: the images are unlabelled")
        return FileSegmentationDataset(
            images,
            labels,
            names,
            label_mapping=self.label_mapping,
            transform=self.transform_for(split),
            label_reader=read_image if self._palette is not None else read_label,
        )


def _colours(colours: Sequence[Sequence[int]], what: str) -> np.ndarray:
    """``N x 3`` uint8 colours, or a ValueError naming ``what`` and the bad entry."""
    for colour in colours:
        if len(colour) != 3 or any(not 0 <= int(c) <= 255 for c in colour):
            raise ValueError(f"{what} entries must be [r, g, b] with values 0..255, got {list(colour)}")
    return np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
