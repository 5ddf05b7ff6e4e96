"""FolderSegmentationDataModule: your own images, nested folders, masks as ids, mapped ids or colours, or none."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from dataset_layouts import FOLDER_PALETTE, HEIGHT, WIDTH, make_folder, write_png_label
from tiny_runs import quiet_trainer

from pixcontrast.data import FolderSegmentationDataModule
from pixcontrast.data.folder import hash_split, list_images
from pixcontrast.data.label_maps import LabelValueError
from pixcontrast.modules import SegmentationModule

NAMES = ["grass", "road", "sky"]


def _raw_mask(root: Path, name: str) -> np.ndarray:
    return cv2.imread(str(root / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)


def test_nested_images_are_matched_to_their_masks_and_split(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", count=12)
    datamodule = FolderSegmentationDataModule(str(root), class_names=NAMES, batch_size=2, crop_size=(16, 16))
    datamodule.setup("fit")
    train, val = datamodule.train_dataset, datamodule.val_dataset
    assert sorted(train.names + val.names) == sorted(p.rsplit(".", 1)[0] for p in list_images(root / "images"))
    assert len(val) >= 1 and not set(train.names) & set(val.names)
    sample = val.load_sample(0)
    np.testing.assert_array_equal(sample.mask, _raw_mask(root, sample.name))
    assert all("/" in name for name in train.names + val.names)  # named by relative path, nested folders kept
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["mask"].shape == (2, 16, 16)
    assert datamodule.has_labels and datamodule.num_classes == 3 and datamodule.palette.shape == (3, 3)


def test_hash_split_ignores_listing_order_and_other_files() -> None:
    paths = [f"folder{i % 4}/image_{i:04d}.jpg" for i in range(400)]
    train, val = hash_split(paths, 0.25)
    shuffled = random.Random(0).sample(paths, len(paths))
    assert set(hash_split(shuffled, 0.25)[1]) == set(val) and 60 <= len(val) <= 140
    more_train, more_val = hash_split([*paths, "new/extra.jpg"], 0.25)
    assert set(val) <= set(more_val) and set(train) <= set(more_train)  # adding a file moves no other
    assert hash_split(paths[:2], 1e-9)[1]  # never an empty validation split


def test_validation_folders(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", count=4)
    make_folder(tmp_path / "held_out", count=2, seed=1)
    datamodule = FolderSegmentationDataModule(
        str(root),
        class_names=NAMES,
        val_images=str(tmp_path / "held_out" / "images"),
        val_masks=str(tmp_path / "held_out" / "masks"),
    )
    assert len(datamodule.build_dataset("train")) == 4 and len(datamodule.build_dataset("val")) == 2
    without_masks = FolderSegmentationDataModule(str(root), class_names=NAMES, val_images="images")
    with pytest.raises(ValueError, match="set val_masks"):
        without_masks.build_dataset("val")


def test_label_map_maps_raw_values_and_unknown_values_raise(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", count=2)
    name = list_images(root / "images")[0].rsplit(".", 1)[0]
    raw = np.full((HEIGHT, WIDTH), 10, dtype=np.uint8)
    raw[0, :4] = (20, 0, 1, 255)
    write_png_label(root / "masks" / f"{name}.png", raw)
    label_map = {10: 2, 20: 0, 0: 255}
    datamodule = FolderSegmentationDataModule(
        str(root), class_names=NAMES, label_map=label_map, val_images="images", val_masks="masks"
    )
    dataset = datamodule.build_dataset("val")
    index = dataset.names.index(name)
    mask = dataset.load_sample(index).mask
    assert tuple(mask[0, :5]) == (0, 255, 1, 255, 2)  # 1 is not in label_map and stays class 1
    raw[5, 5] = 3
    write_png_label(root / "masks" / f"{name}.png", raw)
    with pytest.raises(
        LabelValueError, match=rf"{name}\.png.*: 3\. Expected class ids 0\.\.2 .*label_map \(\[0, 10, 20\]\)"
    ):
        dataset.load_sample(index)


def test_plain_masks_with_values_beyond_the_classes_raise(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", count=2)
    datamodule = FolderSegmentationDataModule(str(root), class_names=NAMES[:2], val_images="images", val_masks="masks")
    with pytest.raises(LabelValueError, match=r"holds values the label set does not know: 2\. .*label_map="):
        datamodule.build_dataset("val").load_sample(0)


def test_colour_masks_through_the_palette(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", count=2, colour_masks=True)
    reference = make_folder(tmp_path / "ids", count=2)  # the same random draws as class ids
    datamodule = FolderSegmentationDataModule(
        str(root),
        class_names=NAMES,
        palette=FOLDER_PALETTE,
        ignore_colors=[(255, 255, 255)],
        val_images="images",
        val_masks="masks",
    )
    sample = datamodule.build_dataset("val").load_sample(1)
    np.testing.assert_array_equal(sample.mask, _raw_mask(reference, sample.name))
    np.testing.assert_array_equal(datamodule.palette, np.array(FOLDER_PALETTE, dtype=np.uint8))
    strict = FolderSegmentationDataModule(
        str(root), class_names=NAMES, palette=FOLDER_PALETTE, val_images="images", val_masks="masks"
    )
    with pytest.raises(LabelValueError, match=r"\(255, 255, 255\)\. Expected RGB masks"):
        strict.build_dataset("val").load_sample(1)
    grey = FolderSegmentationDataModule(str(make_folder(tmp_path / "grey", count=2)), class_names=NAMES)
    with pytest.raises(ValueError, match=r"colour image.*palette"):
        FolderSegmentationDataModule(str(root), class_names=NAMES).build_dataset("train").load_sample(0)
    assert grey.build_dataset("train").load_sample(0).mask.max() <= 255


def test_without_masks_the_images_are_unlabelled(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", count=5, masks=False)
    datamodule = FolderSegmentationDataModule(str(root), crop_size=(16, 16))
    assert not datamodule.has_labels and datamodule.class_names == () and datamodule.palette.shape == (0, 3)
    datamodule.setup("fit")
    assert (datamodule.train_dataset.load_sample(0).mask == 255).all()


def test_unlabelled_training_images_with_labelled_validation_folders(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", count=4, masks=False)
    make_folder(tmp_path / "labelled", count=2, seed=1)
    datamodule = FolderSegmentationDataModule(
        str(root),
        class_names=NAMES,
        val_images=str(tmp_path / "labelled/images"),
        val_masks=str(tmp_path / "labelled/masks"),
    )
    assert datamodule.has_labels  # PiCIE is evaluated on the validation masks
    datamodule.setup("fit")
    assert (datamodule.train_dataset.load_sample(0).mask == 255).all()
    assert (datamodule.val_dataset.load_sample(0).mask < 3).any()


def test_supervised_module_on_unlabelled_data_fails_at_setup(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", count=4, masks=False)
    datamodule = FolderSegmentationDataModule(str(root), class_names=NAMES, batch_size=2, crop_size=(16, 16))
    trainer = quiet_trainer(tmp_path, fast_dev_run=True)
    model = SegmentationModule(num_classes=3, encoder="resnet18", head_channels=8)
    with pytest.raises(ValueError, match=r"SegmentationModule is supervised.*has no labels.*PiCIE"):
        trainer.fit(model, datamodule=datamodule)
    with pytest.raises(ValueError, match=r"without classes.*needs class_names"):
        SegmentationModule(num_classes=FolderSegmentationDataModule(str(root)).num_classes)


def test_first_batch_without_labelled_pixels_warns_once() -> None:
    model = SegmentationModule(num_classes=3, encoder="resnet18", head_channels=8)
    batch = {"image": torch.zeros(1, 3, 8, 8), "mask": torch.full((1, 8, 8), 255)}
    with pytest.warns(UserWarning, match="first train batch has no labelled pixel"):
        model.check_batch(batch, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.check_batch(batch, "train")  # once per stage: the second batch passes silently


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_fraction": 0.0}, "val_fraction must be in"),
        ({"val_masks": "masks"}, "val_masks needs val_images"),
        ({"class_names": NAMES, "label_map": {1: 2}, "palette": FOLDER_PALETTE}, "not both"),
        ({"class_names": NAMES, "label_map": {1: 7}}, "label_map entry 1: 7 is invalid"),
        ({"class_names": NAMES, "palette": FOLDER_PALETTE[:2]}, "palette has 2 colours but class_names has 3"),
        ({"class_names": NAMES, "palette": [(0, 0, 300), (1, 1, 1), (2, 2, 2)]}, r"\[r, g, b\] with values 0\.\.255"),
        ({"class_names": NAMES, "palette": [(1, 1, 1)] * 3}, "colours must be distinct"),
        ({"label_map": {1: 2}}, "need class_names"),
    ],
)
def test_bad_options_are_rejected_at_construction(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FolderSegmentationDataModule(str(tmp_path), **kwargs)


def test_bad_layouts_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"(?s)root does not exist.*images/<path>/<name>"):
        FolderSegmentationDataModule(str(tmp_path / "nowhere")).setup("fit")
    root = make_folder(tmp_path / "data", count=3)
    with pytest.raises(ValueError, match=r"masks .* need class_names .*, e\.g\. --data\.class_names=\[sky,road,car\]"):
        _ = FolderSegmentationDataModule(str(root)).class_names
    next((root / "masks").rglob("*.png")).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of \d train masks .* are missing"):
        FolderSegmentationDataModule(str(root), class_names=NAMES, val_fraction=0.01).setup("fit")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no image files"):
        FolderSegmentationDataModule(str(tmp_path / "empty")).setup("fit")
    single = make_folder(tmp_path / "single", count=1, masks=False)
    with pytest.raises(FileNotFoundError, match="at least 2 images"):
        FolderSegmentationDataModule(str(single)).setup("fit")


def test_a_bad_mask_read_in_a_loader_worker_is_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", count=2)
    datamodule = FolderSegmentationDataModule(
        str(root),
        class_names=NAMES[:2],
        val_images="images",
        val_masks="masks",
        num_workers=1,
        persistent_workers=False,
    )
    datamodule.setup("validate")
    with pytest.raises(
        LabelValueError, match=r"(?s)LabelValueError: label map .*shot_00\d\.png.* 2\. Expected class ids 0\.\.1"
    ):
        next(iter(datamodule.val_dataloader()))
