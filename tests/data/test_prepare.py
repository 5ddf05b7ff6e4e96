from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from dataset_layouts import context_labels_text, make_pascal_context, tar_release, write_png_label

from pixcontrast.data.label_maps import CITYSCAPES_LOOKUPS, PASCAL_CONTEXT_59_RAW_IDS
from pixcontrast.data.prepare import (
    context_lut,
    curate_coco_stuff,
    main,
    prepare_cityscapes,
    prepare_pascal_context,
    stuff_fraction,
)


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# ---------------------------------------------------------------------------------------------------- Cityscapes
def test_cityscapes_train_ids_parallel_and_idempotent(cityscapes_root: Path) -> None:
    assert prepare_cityscapes(cityscapes_root, workers=2) == 5
    sources = sorted((cityscapes_root / "gtFine").rglob("*_gtFine_labelIds.png"))
    for source in sources:
        target = Path(str(source).replace("_labelIds.png", "_labelTrainIds.png"))
        np.testing.assert_array_equal(_read(target), CITYSCAPES_LOOKUPS["19"].table[_read(source)])
    assert prepare_cityscapes(cityscapes_root, workers=1) == 0  # nothing left to do
    assert prepare_cityscapes(cityscapes_root, workers=1, overwrite=True) == 5
    assert not list(cityscapes_root.rglob(".*tmp*"))  # atomic writes leave nothing behind


def test_cityscapes_cli_and_missing_root(cityscapes_root: Path, tmp_path: Path, capsys) -> None:
    assert main(["cityscapes", "--root", str(cityscapes_root), "--workers", "1"]) == 0
    assert len(list(cityscapes_root.rglob("*_labelTrainIds.png"))) == 5
    assert main(["cityscapes", "--root", str(tmp_path / "nowhere")]) == 1
    error = capsys.readouterr().err
    assert "no *_gtFine_labelIds.png files" in error and "gtFine/{train,val,test}/<city>" in error


# ----------------------------------------------------------------------------------------------- PASCAL-Context
@pytest.mark.parametrize("packed", [False, True])
def test_pascal_context_conversion(tmp_path: Path, packed: bool) -> None:
    voc, raw_maps = make_pascal_context(tmp_path / "voc", tmp_path / "release")
    annotations = tar_release(tmp_path / "release", tmp_path / "trainval.tar.gz") if packed else tmp_path / "release"
    labels = tmp_path / "release" / "labels.txt"
    assert prepare_pascal_context(tmp_path / "voc", annotations, labels=labels if packed else None, workers=1) == 5
    table = np.zeros(460, dtype=np.uint8)
    table[list(PASCAL_CONTEXT_59_RAW_IDS)] = np.arange(1, 60)
    for image_id, raw in raw_maps.items():
        np.testing.assert_array_equal(_read(voc / "SegmentationClassContext" / f"{image_id}.png"), table[raw])
    assert prepare_pascal_context(tmp_path / "voc", annotations, workers=1) == 0


def test_pascal_context_selects_classes_by_name() -> None:
    shifted = context_lut(context_labels_text(shift=1))  # every class one id later than the standard
    assert shifted[PASCAL_CONTEXT_59_RAW_IDS[0] + 1] == 1 and shifted[PASCAL_CONTEXT_59_RAW_IDS[0]] == 0
    assert (np.flatnonzero(context_lut(None)) == np.array(PASCAL_CONTEXT_59_RAW_IDS)).all()
    spaced = context_labels_text().replace(": pottedplant", ": Potted Plant").replace(": tvmonitor", ": tv_monitor")
    np.testing.assert_array_equal(context_lut(spaced), context_lut(None))
    with pytest.raises(ValueError, match=r"lacks 1 of the 59 classes: \['wood'\]"):
        context_lut(context_labels_text().replace(": wood", ": timber"))


def test_pascal_context_bad_inputs(tmp_path: Path, capsys) -> None:
    make_pascal_context(tmp_path / "voc", tmp_path / "release")
    argv = ["pascal-context", "--root", str(tmp_path / "voc"), "--workers", "1", "--annotations"]
    assert main([*argv, str(tmp_path / "missing.tar.gz")]) == 1
    assert "does not exist; pass trainval.tar.gz" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert main([*argv, str(tmp_path / "notes.txt")]) == 1
    assert "neither a folder nor a tar archive" in capsys.readouterr().err
    assert main(["pascal-context", "--root", str(tmp_path), "--annotations", str(tmp_path / "release")]) == 1
    assert "no VOC2010 JPEGImages folder found" in capsys.readouterr().err
    (tmp_path / "release" / "trainval" / "2008_000002.mat").write_bytes(b"garbage")
    assert main([*argv, str(tmp_path / "release")]) == 1
    assert "cannot read PASCAL-Context annotation" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- COCO-Stuff
STUFF, THING = 100, 0  # fine classes of a stuff (coarse 12..26) and a thing supercategory


def _curation_maps(folder: Path) -> None:
    """Maps that separate IIC's rule (>= 360 px sides, >= 75 % of ALL pixels stuff) from look-alikes."""
    kept = np.full((360, 480), THING, dtype=np.uint8)
    kept[:, :384] = STUFF  # 80 % stuff, 360 px high: kept
    write_png_label(folder / "000000000001.png", kept)
    unlabelled = np.full((360, 480), 255, dtype=np.uint8)
    unlabelled[:, :240] = STUFF  # all labelled pixels stuff, but only 50 % of the image: rejected
    write_png_label(folder / "000000000002.png", unlabelled)
    write_png_label(folder / "000000000003.png", np.full((359, 600), STUFF, dtype=np.uint8))  # under 360 px
    at_threshold = np.full((400, 400), THING, dtype=np.uint8)
    at_threshold[:300] = STUFF  # exactly 75 %: kept
    write_png_label(folder / "000000000004.png", at_threshold)
    at_threshold[299, 399] = 255  # one pixel under 75 %: rejected
    write_png_label(folder / "000000000005.png", at_threshold)


def test_curation_follows_iic_rule(coco_root: Path, tmp_path: Path) -> None:
    folder = coco_root / "stuffthingmaps_trainval2017" / "train2017"
    _curation_maps(folder)
    assert stuff_fraction(str(folder / "000000000002.png")) == (0.5, 360, 480)
    assert stuff_fraction(str(folder / "000000000004.png")) == (0.75, 400, 400)

    output = curate_coco_stuff(coco_root, workers=1)
    assert output == coco_root / "curated" / "train2017" / "Coco164kFull_Stuff_Coarse_7.txt"  # PiCIE's path
    assert output.read_text() == "000000000001\n000000000004\n"
    custom = tmp_path / "lists" / "mine.txt"
    argv = ["coco-stuff", "--root", str(coco_root), "--curate", "--min-stuff", "0.5", "--output", str(custom)]
    assert main([*argv, "--workers", "1"]) == 0
    assert custom.read_text() == "000000000001\n000000000002\n000000000004\n000000000005\n"
    custom.write_text("kept\n")
    assert main([*argv, "--workers", "1"]) == 0 and custom.read_text() == "kept\n"  # idempotent
    assert main([*argv, "--workers", "1", "--min-size", "0", "--overwrite"]) == 0
    assert "000000000003\n" in custom.read_text()  # the size rule off


def test_curated_list_reads_as_the_datamodule_image_list(coco_root: Path) -> None:
    """The lists prepare writes and PiCIE's official ones (curated/<split>2017/Coco164kFull_Stuff_Coarse_7.txt:
    12-digit ids, one per line) restrict the datamodule's split."""
    from pixcontrast.data import COCOStuffDataModule

    official = coco_root / "curated" / "train2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    official.parent.mkdir(parents=True)
    official.write_text("000000000001\n000000000003\n")
    datamodule = COCOStuffDataModule(str(coco_root), label_set="27", train_image_list=str(official))
    assert datamodule.build_dataset("train").names == ["000000000001", "000000000003"]


def test_curation_bad_inputs(tmp_path: Path, coco_root: Path, capsys) -> None:
    assert main(["coco-stuff", "--root", str(tmp_path / "nowhere"), "--curate"]) == 1
    assert "no label maps in" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--min-stuff must be in"):
        curate_coco_stuff(coco_root, min_stuff=75)
    with pytest.raises(ValueError, match="--min-size must be >= 0 pixels, got -1"):
        curate_coco_stuff(coco_root, min_size=-1)
    with pytest.raises(SystemExit):
        main(["coco-stuff", "--root", str(coco_root)])  # --curate is required
