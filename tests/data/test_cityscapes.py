from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from dataset_layouts import HEIGHT, WIDTH, make_cityscapes, write_image, write_png_label

from pixcontrast.data.cityscapes import CityscapesDataModule
from pixcontrast.data.label_maps import LabelValueError
from pixcontrast.data.prepare import prepare_cityscapes


def _label_ids(root: Path, split: str, frame: str) -> np.ndarray:
    city = frame.split("_")[0]
    return cv2.imread(str(root / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png"), cv2.IMREAD_UNCHANGED)


def test_label_set_19_maps_label_ids_to_train_ids(cityscapes_root: Path) -> None:
    datamodule = CityscapesDataModule(str(cityscapes_root), label_set="19")
    datamodule.setup("validate")
    sample = datamodule.val_dataset.load_sample(0)
    ids = _label_ids(cityscapes_root, "val", sample.name)
    assert sample.mask.dtype == np.int64 and sample.mask.shape == (HEIGHT, WIDTH)
    expected = {7: 0, 8: 1, 11: 2, 17: 5, 23: 10, 24: 11, 26: 13, 31: 16, 33: 18, 0: 255, 6: 255, 9: 255, 29: 255}
    for label_id, train_id in expected.items():
        assert (sample.mask[ids == label_id] == train_id).all()
    assert datamodule.num_classes == 19 and datamodule.class_names[0] == "road"
    assert datamodule.palette.shape == (19, 3) and tuple(datamodule.palette[0]) == (128, 64, 128)


def test_label_set_27_maps_ids_7_to_33(cityscapes_root: Path) -> None:
    datamodule = CityscapesDataModule(str(cityscapes_root), label_set="27")
    sample = datamodule.build_dataset("val").load_sample(1)
    ids = _label_ids(cityscapes_root, "val", sample.name)
    np.testing.assert_array_equal(sample.mask, np.where(ids >= 7, ids.astype(np.int64) - 7, 255))
    assert datamodule.num_classes == 27 and datamodule.class_names[26] == "bicycle"
    assert datamodule.palette.shape == (27, 3)


def test_prepared_train_ids_are_read_and_equal(cityscapes_root: Path) -> None:
    before = CityscapesDataModule(str(cityscapes_root)).build_dataset("train")
    assert prepare_cityscapes(cityscapes_root, workers=1) == 5
    after = CityscapesDataModule(str(cityscapes_root)).build_dataset("train")
    assert all(path.endswith("_gtFine_labelTrainIds.png") for path in after.labels)
    for index in range(len(after)):
        np.testing.assert_array_equal(after.load_sample(index).mask, before.load_sample(index).mask)
    # the 27-class set needs the label ids and keeps reading them
    assert CityscapesDataModule(str(cityscapes_root), "27").build_dataset("train").labels[0].endswith("labelIds.png")


def test_batches_follow_the_batch_format_and_val_order_is_fixed(cityscapes_root: Path) -> None:
    datamodule = CityscapesDataModule(str(cityscapes_root), batch_size=2, crop_size=(16, 24), eval_batch_size=2)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 24) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 16, 24) and batch["mask"].dtype == torch.int64
    assert len(batch["name"]) == 2
    names = [name for batch in datamodule.val_dataloader() for name in batch["name"]]
    assert names == ["aachen_000000_000019", "bochum_000001_000019"]
    assert names == [name for batch in datamodule.val_dataloader() for name in batch["name"]]
    val = next(iter(datamodule.val_dataloader()))
    assert val["image"].shape == (2, 3, HEIGHT, WIDTH)  # full resolution by default


def test_eval_resize_and_crop(cityscapes_root: Path) -> None:
    datamodule = CityscapesDataModule(str(cityscapes_root), label_set="27", eval_resize=16, eval_crop=(16, 16))
    item = datamodule.build_dataset("val")[0]
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (16, 16)


def test_workers_loader(cityscapes_root: Path) -> None:
    datamodule = CityscapesDataModule(str(cityscapes_root), batch_size=1, num_workers=2, crop_size=(8, 8))
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 3 and all(b["image"].shape == (1, 3, 8, 8) for b in batches)


def test_train_splits_add_unlabelled_images(cityscapes_root: Path) -> None:
    make_cityscapes(cityscapes_root, {"train_extra": 2}, seed=1)
    shutil.rmtree(cityscapes_root / "gtFine" / "train_extra")  # the official gtFine has no train_extra
    datamodule = CityscapesDataModule(
        str(cityscapes_root), label_set="27", train_splits=["train", "train_extra"], train_labels=False
    )
    dataset = datamodule.build_dataset("train")
    assert len(dataset) == 5 and dataset.labels == [None] * 5
    assert (dataset.load_sample(4).mask == 255).all()
    with pytest.raises(FileNotFoundError, match="leftImg8bit/coarse"):
        CityscapesDataModule(str(cityscapes_root), train_splits=["coarse"]).build_dataset("train")
    with pytest.raises(FileNotFoundError, match="2 of 2 train label maps"):  # labels asked for, none there
        CityscapesDataModule(str(cityscapes_root), train_splits=["train_extra"]).build_dataset("train")
    with pytest.raises(ValueError, match=r"val_splits must be a non-empty list.*got \[\]"):
        CityscapesDataModule(str(cityscapes_root), val_splits=[])


def test_picie_official_protocol_trains_on_test_and_extra_and_scores_val_and_train(tmp_path: Path) -> None:
    """janghyuncho/PiCIE: training reads leftImg8bit/{test,train_extra} without labels
    (data/cityscapes_train_dataset.py), evaluation leftImg8bit/{val,train} with gtFine
    (data/cityscapes_eval_dataset.py)."""
    root = make_cityscapes(tmp_path / "cityscapes", {"train": 2, "val": 1, "test": 2, "train_extra": 3})
    shutil.rmtree(root / "gtFine" / "train_extra")
    datamodule = CityscapesDataModule(
        str(root),
        label_set="27",
        train_splits=["test", "train_extra"],
        train_labels=False,
        val_splits=["val", "train"],
        test_splits=["val", "train"],
    )
    train = datamodule.build_dataset("train")
    folders = [Path(path).parts[-3] for path in train.images]
    assert folders == ["test", "test", "train_extra", "train_extra", "train_extra"]
    assert train.labels == [None] * 5  # gtFine/test exists (placeholders) and is not read
    assert all((train.load_sample(i).mask == 255).all() for i in range(len(train)))
    for stage in ("val", "test"):
        scored = datamodule.build_dataset(stage)
        assert [Path(path).parts[-3] for path in scored.images] == ["val", "train", "train"]
        assert [Path(path).parts[-4:-2] for path in scored.labels] == [
            ("gtFine", "val"),
            ("gtFine", "train"),
            ("gtFine", "train"),
        ]
        sample = scored.load_sample(1)
        ids = _label_ids(root, "train", sample.name)
        np.testing.assert_array_equal(sample.mask, np.where(ids >= 7, ids.astype(np.int64) - 7, 255))


def test_test_split_without_labels_is_unlabelled(cityscapes_root: Path) -> None:
    make_cityscapes(cityscapes_root, {"test": 1}, seed=2)
    labelled = CityscapesDataModule(str(cityscapes_root)).build_dataset("test")
    assert labelled.labels[0] is not None
    for path in (cityscapes_root / "gtFine" / "test").rglob("*.png"):
        path.unlink()
    for path in sorted((cityscapes_root / "gtFine" / "test").rglob("*"), reverse=True):
        path.rmdir()
    (cityscapes_root / "gtFine" / "test").rmdir()
    unlabelled = CityscapesDataModule(str(cityscapes_root)).build_dataset("test")
    assert (unlabelled.load_sample(0).mask == 255).all()


def test_user_transform_callable(cityscapes_root: Path) -> None:
    def half(image: np.ndarray, mask: np.ndarray) -> dict:
        return {"image": image[::2, ::2], "mask": mask[::2, ::2]}

    datamodule = CityscapesDataModule(str(cityscapes_root), train_transform=half, eval_transform=half)
    assert datamodule.build_dataset("train")[0]["mask"].shape == (HEIGHT // 2, WIDTH // 2)


# ------------------------------------------------------------------------------------------------- bad input
def test_missing_root_names_layout_and_prepare_command(tmp_path: Path) -> None:
    datamodule = CityscapesDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as error:
        datamodule.setup("fit")
    message = str(error.value)
    assert "root does not exist" in message and "nowhere" in message
    assert "leftImg8bit/{train,val,test}/<city>" in message and "gtFine" in message
    assert "pixcontrast prepare cityscapes --root" in message


def test_mislaid_root_names_missing_folder(cityscapes_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing folder .*leftImg8bit"):
        CityscapesDataModule(str(cityscapes_root / "leftImg8bit")).setup("fit")


def test_missing_label_file_is_named(cityscapes_root: Path) -> None:
    victim = cityscapes_root / "gtFine" / "val" / "bochum" / "bochum_000001_000019_gtFine_labelIds.png"
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 val label maps .* are missing, e\.g\. .*bochum_000001"):
        CityscapesDataModule(str(cityscapes_root)).setup("validate")


def test_corrupt_image_names_the_file(cityscapes_root: Path) -> None:
    image = cityscapes_root / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    image.write_bytes(image.read_bytes()[:40])
    dataset = CityscapesDataModule(str(cityscapes_root)).build_dataset("val")
    with pytest.raises(RuntimeError, match=r"cannot decode image .*aachen_000000_000019_leftImg8bit\.png"):
        dataset[0]


def test_label_of_other_size_is_rejected(cityscapes_root: Path) -> None:
    write_image(cityscapes_root / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000019_leftImg8bit.png",
                np.random.default_rng(0), size=(8, 8))  # fmt: skip
    with pytest.raises(ValueError, match="must match"):
        CityscapesDataModule(str(cityscapes_root)).build_dataset("val").load_sample(0)


LABEL_IDS = "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"


def test_ids_without_a_class_and_255_are_ignored(cityscapes_root: Path) -> None:
    label = np.array([[7, 0, 6, 9, 29, 255] * (WIDTH // 6) + [7] * (WIDTH % 6)] * HEIGHT, dtype=np.uint8)
    write_png_label(cityscapes_root / LABEL_IDS, label)
    for label_set, first in (("19", 0), ("27", 0)):
        mask = CityscapesDataModule(str(cityscapes_root), label_set).build_dataset("val").load_sample(0).mask
        assert mask[0, 0] == first and (mask[0, 1:3] == 255).all() and mask[0, 5] == 255
    mask_27 = CityscapesDataModule(str(cityscapes_root), "27").build_dataset("val").load_sample(0).mask
    assert mask_27[0, 3] == 2 and mask_27[0, 4] == 22  # parking and caravan are classes of the 27-class set


@pytest.mark.parametrize("label_set", ["19", "27"])
def test_label_ids_outside_the_set_raise_naming_file_values_and_fix(cityscapes_root: Path, label_set: str) -> None:
    label = np.full((HEIGHT, WIDTH), 7, dtype=np.uint8)
    label[3, 3], label[4, 4] = 40, 200
    write_png_label(cityscapes_root / LABEL_IDS, label)
    dataset = CityscapesDataModule(str(cityscapes_root), label_set).build_dataset("val")
    with pytest.raises(LabelValueError, match=r"aachen_000000_000019_gtFine_labelIds\.png.* 40, 200\. .*labelTrainIds"):
        dataset.load_sample(0)


def test_train_id_files_with_label_ids_raise_naming_the_prepare_command(cityscapes_root: Path) -> None:
    prepare_cityscapes(cityscapes_root, workers=1)
    train_ids = cityscapes_root / LABEL_IDS.replace("labelIds", "labelTrainIds")
    write_png_label(train_ids, np.full((HEIGHT, WIDTH), 40))  # e.g. label ids saved under the train-id name
    dataset = CityscapesDataModule(str(cityscapes_root)).build_dataset("val")
    with pytest.raises(
        LabelValueError,
        match=r"labelTrainIds\.png.*: 40\. Expected Cityscapes train ids 0\.\.18 and 255.*"
        r"pixcontrast prepare cityscapes --root ROOT --overwrite",
    ):
        dataset.load_sample(0)


def test_prepare_rejects_unknown_label_ids(cityscapes_root: Path) -> None:
    write_png_label(cityscapes_root / LABEL_IDS, np.full((HEIGHT, WIDTH), 77))
    with pytest.raises(LabelValueError, match=r"aachen_000000_000019_gtFine_labelIds\.png.*77"):
        prepare_cityscapes(cityscapes_root, workers=1)


def test_empty_split_says_so(cityscapes_root: Path) -> None:
    for image in (cityscapes_root / "leftImg8bit" / "val").rglob("*.png"):
        image.unlink()
    with pytest.raises(ValueError, match="'val' split is empty"):
        CityscapesDataModule(str(cityscapes_root)).setup("validate")


def test_unknown_label_set_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown label_set '20'.*\['19', '27'\]"):
        CityscapesDataModule(str(tmp_path), label_set="20")


def test_datamodule_options_parse_from_yaml(cityscapes_root: Path) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(CityscapesDataModule, "data")
    config = parser.parse_string(
        f"data:\n  root: {cityscapes_root}\n  label_set: '27'\n  crop_size: [16, 24]\n  scale_range: [0.5, 1.5]\n"
        "  eval_resize: 16\n  eval_crop: [16, 16]\n  train_splits: [train]\n  val_splits: [val]\n"
    )
    datamodule = CityscapesDataModule(**config.data.as_dict())
    assert datamodule.label_set == "27"
    assert datamodule.build_dataset("train")[0]["image"].shape == (3, 16, 24)
    assert datamodule.build_dataset("val")[0]["image"].shape == (3, 16, 16)
