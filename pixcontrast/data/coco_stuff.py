"""COCO-Stuff (164k, and the 10k ``.mat`` release): label sets "171" (used classes) and "27" (supercategories)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pixcontrast.data.base import IGNORE_INDEX
from pixcontrast.data.files import BenchmarkDataModule, FileSegmentationDataset
from pixcontrast.data.io import read_id_list, read_label
from pixcontrast.data.label_maps import COCO_STUFF_LABEL_SETS, COCO_STUFF_LOOKUPS

LABEL_DIR = "stuffthingmaps_trainval2017"
VARIANTS = ("164k", "10k")


def normalize_image_id(image_id: str) -> str:
    """``"139"``, ``"000000000139"`` and ``"000000000139.jpg"`` -> ``"000000000139"``; other stems unchanged."""
    stem = Path(image_id.strip()).stem
    return f"{int(stem):012d}" if stem.isdigit() else stem


def read_coco10k_label(path: str) -> np.ndarray:
    """Read a COCO-Stuff-10k ``.mat`` annotation (key ``S``: 0 unlabelled, k = category id k) as
    stuffthingmaps values (k - 1, unlabelled -> 255): ``H x W`` int32 (out-of-range ids are kept, to be
    reported by the label check rather than wrapped into valid values)."""
    from scipy.io import loadmat

    try:
        labels = loadmat(path, variable_names=["S"])["S"]
    except Exception as error:  # scipy raises several types for damaged files
        raise RuntimeError(f"cannot read COCO-Stuff-10k annotation {path!r}: {error}") from error
    labels = labels.astype(np.int32)
    return np.where(labels == 0, IGNORE_INDEX, labels - 1)


class COCOStuffDataModule(BenchmarkDataModule):
    """COCO-Stuff-164k (default) or COCO-Stuff-10k, as the official archives unpack.

    Label sets: ``"171"`` -- the 171 used classes (80 things, 91 stuff) numbered contiguously in
    stuffthingmaps order; ``"27"`` -- the 12 thing + 15 stuff supercategories of the unsupervised benchmarks.
    Unlabelled pixels (255) are ignored; any value outside 0..181 and 255, and the values of the 11 category ids
    COCO never uses, raise a :class:`~pixcontrast.data.label_maps.LabelValueError` naming the file (real
    annotations never hold them: a map that does is in another encoding, typically category ids, off by one).
    Items are named by the image stem (e.g. ``000000000139``).
    COCO-Stuff has no public test labels: test uses val (10k: its test list).

    Args:
        root: 164k -- the folder holding ``train2017/``, ``val2017/`` (or ``images/train2017`` ...) and
            ``stuffthingmaps_trainval2017/``; 10k -- the folder holding ``images/``, ``annotations/``,
            ``imageLists/``.
        variant: ``"164k"`` or ``"10k"``.
        train_image_list / val_image_list: optional text files with one image id per line restricting the
            split (e.g. the curated unsupervised subset written by
            ``pixcontrast prepare coco-stuff --root ROOT --curate``); ids may omit the zero padding.

    Everything else as :class:`~pixcontrast.data.cityscapes.CityscapesDataModule`; sizes are (height, width).
    Val/test images vary in size (``short_side=520`` is the official protocol); evaluation batches pad them and
    the modules run each size on its own (see :func:`~pixcontrast.data.pad_collate`), so any
    ``eval_batch_size`` gives the metrics of batches of one.
    """

    dataset_name = "COCO-Stuff"
    label_sets = COCO_STUFF_LABEL_SETS
    layout = (
        "  COCO-Stuff-164k: {train2017,val2017}/<id>.jpg (or images/{train2017,val2017}/<id>.jpg) and\n"
        f"    {LABEL_DIR}/{{train2017,val2017}}/<id>.png   (unzip stuffthingmaps_trainval2017.zip -d "
        f"{LABEL_DIR})\n"
        "  COCO-Stuff-10k (variant='10k'): images/<name>.jpg, annotations/<name>.mat, imageLists/{train,test}.txt"
    )

    def __init__(
        self,
        root: str,
        label_set: str = "171",
        *,
        batch_size: int = 16,
        crop_size: tuple[int, int] = (512, 512),
        variant: str = "164k",
        train_image_list: str | None = None,
        val_image_list: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, label_set, batch_size=batch_size, crop_size=crop_size, **kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"COCO-Stuff: unknown variant {variant!r}; choose one of {list(VARIANTS)}")
        self.variant = variant
        self.image_lists = {"train": train_image_list, "val": val_image_list, "test": val_image_list}

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise self.layout_error("root does not exist")

    def _selected(self, split: str, ids: list[str]) -> list[str]:
        """``ids`` restricted to the split's image list, in list order; unknown ids raise."""
        list_path = self.image_lists[split]
        if list_path is None:
            return ids
        wanted = [normalize_image_id(line) for line in read_id_list(list_path)]
        unknown = sorted(set(wanted) - set(ids))
        if unknown:
            raise ValueError(
                f"COCO-Stuff: {len(unknown)} ids of the image list {list_path!r} are not in the {split} split, "
                f"e.g. {unknown[0]!r}; check that the list belongs to this split"
            )
        return sorted(set(wanted))

    def _files_164k(self, split: str) -> tuple[list[Path], list[Path], list[str]]:
        folder = "train2017" if split == "train" else "val2017"
        candidates = [self.root / folder, self.root / "images" / folder]
        image_dir = next((c for c in candidates if c.is_dir()), None)
        if image_dir is None:
            raise self.layout_error(f"missing image folder {str(candidates[0])!r}")
        ids = self._selected(split, sorted(path.stem for path in image_dir.glob("*.jpg")))
        labels = [self.root / LABEL_DIR / folder / f"{image_id}.png" for image_id in ids]
        self.check_files(labels, f"{split} label maps ({LABEL_DIR}/{folder}/<id>.png)")
        return [image_dir / f"{image_id}.jpg" for image_id in ids], labels, ids

    def _files_10k(self, split: str) -> tuple[list[Path], list[Path], list[str]]:
        list_path = self.root / "imageLists" / ("train.txt" if split == "train" else "test.txt")
        if not list_path.is_file():
            raise self.layout_error(f"missing image list {str(list_path)!r}")
        ids = self._selected(split, read_id_list(list_path))
        images = [self.root / "images" / f"{image_id}.jpg" for image_id in ids]
        labels = [self.root / "annotations" / f"{image_id}.mat" for image_id in ids]
        self.check_files(images, f"{split} images")
        self.check_files(labels, f"{split} annotations (annotations/<name>.mat)")
        return images, labels, ids

    def build_dataset(self, split: str) -> FileSegmentationDataset:
        self._check_root()
        images, labels, ids = self._files_164k(split) if self.variant == "164k" else self._files_10k(split)
        return FileSegmentationDataset(
            images,
            labels,
            ids,
            label_mapping=COCO_STUFF_LOOKUPS[self.label_set],
            transform=self.transform_for(split),
            label_reader=read_coco10k_label if self.variant == "10k" else read_label,
        )
