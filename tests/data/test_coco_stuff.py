from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from dataset_layouts import make_coco_stuff_10k, write_png_label
from scipy.io import loadmat, savemat

from pixcontrast.data.coco_stuff import COCOStuffDataModule, normalize_image_id
from pixcontrast.data.label_maps import (
    COCO_STUFF_FINE_TO_COARSE,
    COCO_STUFF_LABEL_SETS,
    COCO_STUFF_UNUSED,
    LabelValueError,
)


def _stuffthingmap(root: Path, split: str, image_id: str) -> np.ndarray:
    path = root / "stuffthingmaps_trainval2017" / f"{split}2017" / f"{image_id}.png"
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.int64)


def test_label_set_tables() -> None:
    names = COCO_STUFF_LABEL_SETS["171"].names
    assert len(names) == 171 and len(set(names)) == 171
    assert names[0] == "person" and names[79] == "toothbrush" and names[80] == "banner" and names[-1] == "wood"
    assert len(COCO_STUFF_FINE_TO_COARSE) == 182 and max(COCO_STUFF_FINE_TO_COARSE) == 26
    assert len(set(COCO_STUFF_LABEL_SETS["27"].names)) == 27


def test_label_set_171_is_contiguous(coco_root: Path) -> None:
    datamodule = COCOStuffDataModule(str(coco_root), label_set="171")
    datamodule.setup("validate")
    sample = datamodule.val_dataset.load_sample(0)
    raw = _stuffthingmap(coco_root, "val", sample.name)
    used = [v for v in range(182) if v not in COCO_STUFF_UNUSED]
    table = np.full(256, 255)
    table[used] = np.arange(171)
    np.testing.assert_array_equal(sample.mask, table[raw])
    assert (sample.mask[:2] == 255).all()
    assert sample.name == "000000000100" and datamodule.num_classes == 171


def test_label_set_27_uses_the_supercategory_table(coco_root: Path) -> None:
    dataset = COCOStuffDataModule(str(coco_root), label_set="27").build_dataset("train")
    sample = dataset.load_sample(0)
    raw = _stuffthingmap(coco_root, "train", sample.name)
    table = np.full(256, 255)
    table[:182] = COCO_STUFF_FINE_TO_COARSE
    np.testing.assert_array_equal(sample.mask, table[raw])
    # spot checks: person -> person (9), banner (stuff 91) -> textile (17), wood (181) -> solid (24)
    assert table[0] == 9 and table[91] == 17 and table[181] == 24


def test_batches(coco_root: Path) -> None:
    datamodule = COCOStuffDataModule(
        str(coco_root), batch_size=2, crop_size=(16, 16), eval_crop=(32, 32), eval_batch_size=2
    )
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["mask"].shape == (2, 16, 16)
    assert next(iter(datamodule.val_dataloader()))["name"] == ["000000000100", "000000000101"]


def test_images_folder_variant_of_the_layout(coco_root: Path) -> None:
    (coco_root / "images").mkdir()
    for split in ("train2017", "val2017"):
        (coco_root / split).rename(coco_root / "images" / split)
    assert len(COCOStuffDataModule(str(coco_root)).build_dataset("train")) == 3


def test_image_list_restricts_the_split(coco_root: Path, tmp_path: Path) -> None:
    image_list = tmp_path / "train.txt"
    image_list.write_text("3\n000000000001.jpg\n\n")
    datamodule = COCOStuffDataModule(str(coco_root), train_image_list=str(image_list))
    assert datamodule.build_dataset("train").names == ["000000000001", "000000000003"]
    image_list.write_text("000000000100\n")
    with pytest.raises(ValueError, match=r"1 ids of the image list .* not in the train split, e\.g\. '000000000100'"):
        datamodule.build_dataset("train")


def test_normalize_image_id() -> None:
    assert normalize_image_id(" 139 ") == "000000000139" == normalize_image_id("000000000139.jpg")
    assert normalize_image_id("COCO_train2014_000000000077") == "COCO_train2014_000000000077"


def test_coco_stuff_10k_mat_variant(tmp_path: Path) -> None:
    root = make_coco_stuff_10k(tmp_path / "coco10k")
    datamodule = COCOStuffDataModule(str(root), label_set="171", variant="10k")
    datamodule.setup("fit")
    assert datamodule.train_dataset.names == ["COCO_train2014_000000000077", "COCO_train2014_000000000078"]
    assert datamodule.val_dataset.names == ["COCO_train2014_000000000081"]
    raw = loadmat(root / "annotations" / "COCO_train2014_000000000077.mat")["S"].astype(np.int64)
    used = [v for v in range(182) if v not in COCO_STUFF_UNUSED]
    table = np.full(183, 255)
    table[np.array(used) + 1] = np.arange(171)  # S = category id = stuffthingmaps value + 1, 0 unlabelled
    np.testing.assert_array_equal(datamodule.train_dataset.load_sample(0).mask, table[raw])


def test_bad_layouts(tmp_path: Path, coco_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"(?s)root does not exist.*stuffthingmaps_trainval2017"):
        COCOStuffDataModule(str(tmp_path / "nowhere")).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"missing image list .*imageLists"):
        COCOStuffDataModule(str(coco_root), variant="10k").setup("fit")
    with pytest.raises(ValueError, match="unknown variant '5k'"):
        COCOStuffDataModule(str(coco_root), variant="5k")
    (coco_root / "stuffthingmaps_trainval2017" / "val2017" / "000000000101.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 val label maps .*000000000101\.png"):
        COCOStuffDataModule(str(coco_root)).setup("validate")


def test_corrupt_annotation_is_named(tmp_path: Path) -> None:
    root = make_coco_stuff_10k(tmp_path / "coco10k")
    (root / "annotations" / "COCO_train2014_000000000081.mat").write_bytes(b"not a mat file")
    dataset = COCOStuffDataModule(str(root), variant="10k").build_dataset("val")
    with pytest.raises(RuntimeError, match=r"COCO_train2014_000000000081\.mat"):
        dataset.load_sample(0)


@pytest.mark.parametrize("label_set", ["171", "27"])
@pytest.mark.parametrize("bad_value", [COCO_STUFF_UNUSED[0], 182, 254])
def test_unused_and_out_of_range_values_raise(coco_root: Path, label_set: str, bad_value: int) -> None:
    path = coco_root / "stuffthingmaps_trainval2017" / "val2017" / "000000000100.png"
    label = _stuffthingmap(coco_root, "val", "000000000100")
    label[5, 5] = bad_value
    write_png_label(path, label)
    dataset = COCOStuffDataModule(str(coco_root), label_set=label_set).build_dataset("val")
    with pytest.raises(LabelValueError, match=rf"000000000100\.png.* {bad_value}\. .*off by one"):
        dataset.load_sample(0)


def test_coco_stuff_10k_out_of_range_category_ids_raise(tmp_path: Path) -> None:
    root = make_coco_stuff_10k(tmp_path / "coco10k")
    path = root / "annotations" / "COCO_train2014_000000000081.mat"
    labels = loadmat(path)["S"]
    labels[0, 0] = 300  # would wrap to a valid value if cast to uint8
    savemat(path, {"S": labels})
    with pytest.raises(LabelValueError, match=r"000000000081\.mat.*: 299\."):
        COCOStuffDataModule(str(root), variant="10k").build_dataset("val").load_sample(0)
