from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dataset_layouts import make_pascal_context, write_png_label

from pixcontrast.data.label_maps import PASCAL_CONTEXT_59_RAW_IDS, LabelValueError
from pixcontrast.data.pascal_context import PascalContextDataModule
from pixcontrast.data.prepare import prepare_pascal_context


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    _, raw_maps = make_pascal_context(tmp_path / "voc", tmp_path / "release")
    prepare_pascal_context(tmp_path / "voc", tmp_path / "release", workers=1)
    return tmp_path / "voc", raw_maps


def _expected_60(raw: np.ndarray) -> np.ndarray:
    table = np.zeros(460, dtype=np.int64)
    table[list(PASCAL_CONTEXT_59_RAW_IDS)] = np.arange(1, 60)
    return table[raw]


def test_label_sets_59_and_60(prepared: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, raw_maps = prepared
    sixty = PascalContextDataModule(str(root), label_set="60")
    fifty_nine = PascalContextDataModule(str(root), label_set="59")
    sixty.setup("fit")
    fifty_nine.setup("fit")
    assert sixty.val_dataset.names == ["2008_000009", "2008_000016"] and len(sixty.train_dataset) == 3
    sample60 = sixty.val_dataset.load_sample(0)
    expected = _expected_60(raw_maps["2008_000009"])
    np.testing.assert_array_equal(sample60.mask, expected)
    sample59 = fifty_nine.val_dataset.load_sample(0)
    np.testing.assert_array_equal(sample59.mask, np.where(expected == 0, 255, expected - 1))
    assert (sample60.mask[:4] == 1).all()  # the raw id of "aeroplane" -> class 1 of the 60 set
    assert sixty.num_classes == 60 and sixty.class_names[0] == "background" and sixty.class_names[1] == "aeroplane"
    assert fifty_nine.num_classes == 59 and fifty_nine.class_names[-1] == "wood"
    assert fifty_nine.palette.shape == (59, 3) and sixty.palette.shape == (60, 3)


def test_items_and_eval_batches(prepared: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = prepared
    datamodule = PascalContextDataModule(str(root), batch_size=2, crop_size=(24, 24))
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (2, 3, 24, 24) and batch["mask"].shape == (2, 24, 24)
    val_batch = next(iter(datamodule.val_dataloader()))  # eval_batch_size defaults to batch_size
    assert val_batch["name"] == ["2008_000009", "2008_000016"] and val_batch["image_size"].tolist() == [[32, 64]] * 2
    datamodule.setup("test")
    assert datamodule.test_dataset.names == datamodule.val_dataset.names  # no public test labels: test = val


def test_root_may_be_the_voc2010_folder(prepared: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = prepared
    assert len(PascalContextDataModule(str(root / "VOCdevkit" / "VOC2010")).build_dataset("val")) == 2


def test_unprepared_labels_name_the_prepare_command(tmp_path: Path) -> None:
    make_pascal_context(tmp_path / "voc", tmp_path / "release")
    with pytest.raises(FileNotFoundError) as error:
        PascalContextDataModule(str(tmp_path / "voc")).setup("fit")
    message = str(error.value)
    assert "3 of 3 train label maps (SegmentationClassContext/<id>.png) are missing" in message
    assert "pixcontrast prepare pascal-context --root" in message and "--annotations" in message


def test_missing_root_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"(?s)root does not exist.*VOC2010/JPEGImages/<id>\.jpg"):
        PascalContextDataModule(str(tmp_path / "nowhere")).setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no JPEGImages folder found"):
        PascalContextDataModule(str(tmp_path / "empty")).setup("fit")


def test_missing_split_list_is_named(prepared: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = prepared
    (root / "VOCdevkit" / "VOC2010" / "ImageSets" / "Main" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing split list .*val\.txt"):
        PascalContextDataModule(str(root)).setup("validate")


def test_unknown_label_set(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown label_set '21'"):
        PascalContextDataModule(str(tmp_path), label_set="21")


@pytest.mark.parametrize("label_set", ["59", "60"])
def test_values_outside_the_prepared_range_raise_naming_the_prepare_command(
    prepared: tuple[Path, dict[str, np.ndarray]], label_set: str
) -> None:
    root, raw_maps = prepared
    path = root / "VOCdevkit" / "VOC2010" / "SegmentationClassContext" / "2008_000009.png"
    label = np.full(raw_maps["2008_000009"].shape, 255, dtype=np.uint8)  # 255 alone is ignore, not an error
    label[0, :3] = (0, 59, 60)
    write_png_label(path, label)
    dataset = PascalContextDataModule(str(root), label_set=label_set).build_dataset("val")
    with pytest.raises(LabelValueError, match=r"2008_000009\.png.*: 60\. .*pixcontrast prepare pascal-context"):
        dataset.load_sample(0)
    label[0, 2] = 255
    write_png_label(path, label)
    mask = dataset.load_sample(0).mask
    assert tuple(mask[0, :3]) == ((255, 58, 255) if label_set == "59" else (0, 59, 255))
