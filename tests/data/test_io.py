from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pixcontrast.data.io import apply_lut, missing_files, read_id_list, read_image, read_label, write_label
from pixcontrast.data.label_maps import UNKNOWN_LABEL, build_lut


def test_read_image_is_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    Image.fromarray(rgb).save(tmp_path / "red.png")
    image = read_image(tmp_path / "red.png")
    assert image.shape == (4, 6, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, rgb)


def test_read_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"image .*absent\.png' does not exist"):
        read_image(tmp_path / "absent.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(RuntimeError, match=r"cannot decode image .*broken\.jpg"):
        read_image(tmp_path / "broken.jpg")


def test_read_label_grey_palette_and_colour(tmp_path: Path) -> None:
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    cv2.imwrite(str(tmp_path / "grey.png"), label)
    np.testing.assert_array_equal(read_label(tmp_path / "grey.png"), label)
    palette = Image.fromarray(label, mode="P")
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_label(tmp_path / "palette.png"), label)
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match=r"colour\.png' is a RGB colour image; expected single-channel"):
        read_label(tmp_path / "colour.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(RuntimeError, match=r"cannot decode label map .*broken\.png"):
        read_label(tmp_path / "broken.png")


def test_write_label_round_trip(tmp_path: Path) -> None:
    label = np.array([[0, 255], [3, 7]], dtype=np.uint8)
    write_label(tmp_path / "sub" / "x.png", label)
    np.testing.assert_array_equal(read_label(tmp_path / "sub" / "x.png"), label)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]


def test_apply_lut_marks_values_outside_the_table() -> None:
    lut = build_lut({1: 0, 2: 1}, ignored=[3], size=4)
    u = UNKNOWN_LABEL
    raw = np.array([[0, 1, 2, 3, 4, 1000]], dtype=np.uint16)
    np.testing.assert_array_equal(apply_lut(raw, lut, outside=u), [[u, 0, 1, 255, u, u]])
    np.testing.assert_array_equal(apply_lut(np.array([[-1, 2]]), lut, outside=u), [[u, 1]])
    full = build_lut({7: 0})  # the OpenCV path of uint8 maps gives the same table look-up
    assert full[255] == 255 and full.dtype == np.int16
    np.testing.assert_array_equal(apply_lut(np.array([[7, 8, 255]], dtype=np.uint8), full, outside=u), [[0, u, 255]])


def test_id_lists_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_text("a 1\n\n# comment\nb\n")
    assert read_id_list(tmp_path / "ids.txt") == ["a", "b"]
    assert missing_files([tmp_path / "ids.txt", tmp_path / "no.txt", tmp_path / "x" / "y"]) == [
        str(tmp_path / "no.txt"),
        str(tmp_path / "x" / "y"),
    ]
    with pytest.raises(FileNotFoundError, match="id list"):
        read_id_list(tmp_path / "none.txt")
