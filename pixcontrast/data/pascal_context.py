"""PASCAL-Context: VOC2010 images with the prepared context label maps, label sets "59" and "60"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pixcontrast.data.files import BenchmarkDataModule, FileSegmentationDataset
from pixcontrast.data.io import read_id_list
from pixcontrast.data.label_maps import PASCAL_CONTEXT_LABEL_SETS, PASCAL_CONTEXT_LOOKUPS

#: Folder (inside the VOC2010 folder) of the prepared label maps: ``<id>.png``, 0 = background, 1..59 = classes.
LABEL_DIR = "SegmentationClassContext"
#: Split -> VOC2010 ``ImageSets/Main`` list; there are no public test labels, so test uses val.
SPLIT_LISTS = {"train": "train", "val": "val", "test": "val"}


def find_voc_root(root: str | Path) -> Path | None:
    """The VOC2010 folder (the one holding ``JPEGImages``) at or below ``root``, or ``None``."""
    root = Path(root).expanduser()
    for candidate in (root, root / "VOC2010", root / "VOCdevkit" / "VOC2010"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    return None


class PascalContextDataModule(BenchmarkDataModule):
    """PASCAL-Context on VOC2010 (4998 train / 5105 val images; test = val).

    Label sets: ``"59"`` -- the 59 standard classes, background and all other categories ignored;
    ``"60"`` -- background as class 0 and the 59 classes as 1..59. Both read the PNGs that
    ``pixcontrast prepare pascal-context --root ROOT --annotations trainval.tar.gz`` writes to
    ``VOC2010/SegmentationClassContext/``; any other value than 0..59 and 255 raises a
    :class:`~pixcontrast.data.label_maps.LabelValueError` naming the file.
    Items are named by the VOC id, e.g. ``2008_000002``.
    Val/test images keep their size (about 500 x 375, varying; ``short_side=520`` is the official protocol);
    evaluation batches pad them and the modules run each size on its own (see
    :func:`~pixcontrast.data.pad_collate`), so any ``eval_batch_size`` gives the metrics of batches of one.

    Args:
        root: the VOC2010 folder, or a folder holding ``VOCdevkit/VOC2010`` or ``VOC2010``.

    Everything else as :class:`~pixcontrast.data.cityscapes.CityscapesDataModule`; sizes are (height, width).
    """

    dataset_name = "PASCAL-Context"
    label_sets = PASCAL_CONTEXT_LABEL_SETS
    layout = (
        "  [VOCdevkit/]VOC2010/JPEGImages/<id>.jpg\n"
        "  [VOCdevkit/]VOC2010/ImageSets/Main/{train,val}.txt\n"
        f"  [VOCdevkit/]VOC2010/{LABEL_DIR}/<id>.png   (written by the prepare command)\n"
        "(unpack VOCtrainval_03-May-2010.tar into root)"
    )
    prepare_hint = (
        "Create the label maps from the PASCAL-Context release (trainval.tar.gz) with "
        "`pixcontrast prepare pascal-context --root {root} --annotations path/to/trainval.tar.gz`."
    )

    def __init__(
        self,
        root: str,
        label_set: str = "59",
        *,
        batch_size: int = 16,
        crop_size: tuple[int, int] = (480, 480),
        **kwargs: Any,
    ) -> None:
        super().__init__(root, label_set, batch_size=batch_size, crop_size=crop_size, **kwargs)

    def build_dataset(self, split: str) -> FileSegmentationDataset:
        voc = find_voc_root(self.root)
        if voc is None:
            raise self.layout_error("root does not exist" if not self.root.is_dir() else "no JPEGImages folder found")
        split_file = voc / "ImageSets" / "Main" / f"{SPLIT_LISTS[split]}.txt"
        if not split_file.is_file():
            raise self.layout_error(f"missing split list {str(split_file)!r}")
        ids = read_id_list(split_file)
        images = [voc / "JPEGImages" / f"{image_id}.jpg" for image_id in ids]
        labels = [voc / LABEL_DIR / f"{image_id}.png" for image_id in ids]
        self.check_files(images, f"{split} images")
        self.check_files(labels, f"{split} label maps ({LABEL_DIR}/<id>.png)")
        return FileSegmentationDataset(
            images,
            labels,
            ids,
            label_mapping=PASCAL_CONTEXT_LOOKUPS[self.label_set],
            transform=self.transform_for(split),
        )
