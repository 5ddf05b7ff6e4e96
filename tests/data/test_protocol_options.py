"""The official pipeline options shared by every file-reading datamodule: short_side, aspect_range,
brightness_shift."""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_layouts import make_cityscapes, make_coco_stuff, make_folder, make_pascal_context

from pixcontrast.data import (
    CityscapesDataModule,
    COCOStuffDataModule,
    FolderSegmentationDataModule,
    PascalContextDataModule,
)
from pixcontrast.data.prepare import prepare_pascal_context

SIZES = ((32, 64), (40, 28))  # (height, width): wide and tall images


def make_datamodule(name: str, tmp_path: Path, **options):
    """A datamodule of ``name`` on a tiny copy of its official layout whose images are 32 x 64 and 40 x 28."""
    if name == "cityscapes":
        root = make_cityscapes(tmp_path / "cityscapes", counts={"train": 2, "val": 2}, sizes=SIZES)
        return CityscapesDataModule(str(root), **options)
    if name == "pascal_context":
        voc, _ = make_pascal_context(tmp_path / "voc", tmp_path / "release", sizes=SIZES)
        prepare_pascal_context(voc, tmp_path / "release", workers=1)
        return PascalContextDataModule(str(voc), **options)
    if name == "coco_stuff":
        return COCOStuffDataModule(str(make_coco_stuff(tmp_path / "coco", sizes=SIZES)), **options)
    root = make_folder(tmp_path / "folder", count=6, sizes=SIZES)
    return FolderSegmentationDataModule(str(root), class_names=["a", "b", "c"], val_fraction=0.5, **options)


DATAMODULES = ("cityscapes", "pascal_context", "coco_stuff", "folder")


@pytest.mark.parametrize("name", DATAMODULES)
def test_short_side_resizes_evaluation_images_alone_and_training_images_first(name, tmp_path) -> None:
    datamodule = make_datamodule(name, tmp_path, short_side=16, crop_size=(48, 48), scale_range=(1.0, 1.0))
    datamodule.setup("fit")
    items = [datamodule.val_dataset[i] for i in range(len(datamodule.val_dataset))]
    shapes = {(tuple(item["image"].shape[-2:]), tuple(item["mask"].shape)) for item in items}
    # the image's short side is 16, its mask keeps the label's size: scored at the label's resolution
    assert shapes <= {((16, 32), (32, 64)), ((23, 16), (40, 28))} and shapes
    for index in range(len(datamodule.train_dataset)):
        item = datamodule.train_dataset[index]
        assert item["image"].shape == (3, 48, 48) and item["mask"].shape == (48, 48)
        image = item["image"]  # the resized image, padded bottom/right (with the bottom-right pixel's value)
        real = (image != image[:, -1:, -1:]).any(dim=0)
        extent = (int(real.any(dim=1).sum()), int(real.any(dim=0).sum()))
        assert extent in {(16, 32), (23, 16)}


@pytest.mark.parametrize("name", DATAMODULES)
def test_aspect_and_brightness_reach_the_training_pipeline(name, tmp_path) -> None:
    datamodule = make_datamodule(name, tmp_path, aspect_range=(0.9, 1.1), brightness_shift=10)
    names = [type(step).__name__ for step in datamodule.train_transform.transforms]
    scale_crop = datamodule.train_transform.transforms[0]
    assert names[0] == "RandomScaleCrop" and scale_crop.aspect_range == (0.9, 1.1) and scale_crop.short_side is None
    assert "RandomBrightnessShift" in names and datamodule.train_transform.transforms[-1].shift == 10


def test_short_side_conflicts_with_eval_resize(tmp_path) -> None:
    with pytest.raises(ValueError, match="give one of them"):
        make_datamodule("coco_stuff", tmp_path, short_side=520, eval_resize=320)
