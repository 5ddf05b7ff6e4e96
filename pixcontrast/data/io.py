"""Fast, checked reading and writing of images, label maps and id lists (OpenCV, PIL as fallback)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _check_exists(path: str | Path, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``H x W x 3`` uint8 RGB; raise naming the file when it cannot be decoded."""
    import cv2

    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes straight to RGB
    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR if rgb_flag is None else rgb_flag)
    if image is None:
        _check_exists(path, "image")
        raise RuntimeError(f"cannot decode image {str(path)!r}: the file is corrupt, truncated or not an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if rgb_flag is None else image


def read_label(path: str | Path) -> np.ndarray:
    """Read a single-channel label map (PNG, grey or palette) as an ``H x W`` integer array of raw values."""
    import cv2

    label = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        _check_exists(path, "label map")
        raise RuntimeError(f"cannot decode label map {str(path)!r}: the file is corrupt, truncated or not an image")
    if label.ndim == 3:  # OpenCV expands palette PNGs to colour; their indices are the labels
        from PIL import Image

        with Image.open(path) as handle:
            if handle.mode not in ("P", "L", "I", "I;16"):
                raise ValueError(
                    f"label map {str(path)!r} is a {handle.mode} colour image; expected single-channel label ids "
                    "(for colour-coded masks give FolderSegmentationDataModule a palette)"
                )
            label = np.asarray(handle)
    return label


def write_label(path: str | Path, label: np.ndarray) -> None:
    """Write an ``H x W`` uint8 label map as PNG, atomically (a partial file never has the final name)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    if not cv2.imwrite(os.fspath(temporary), np.ascontiguousarray(label, dtype=np.uint8)):
        raise RuntimeError(f"cannot write label map {str(path)!r}")
    os.replace(temporary, path)


def apply_lut(label: np.ndarray, lut: np.ndarray, outside: int) -> np.ndarray:
    """``lut[label]`` for an ``H x W`` integer map, ``outside`` for values past the table's end or negative.

    The result has the table's dtype. uint8 maps through a 256-entry table take OpenCV's LUT (about a
    millisecond for 2048 x 1024), other maps one numpy gather.
    """
    if label.dtype == np.uint8 and lut.shape[0] == 256:
        import cv2

        return cv2.LUT(label, lut)
    index = label.astype(np.int64, copy=False)
    index = np.where((index < 0) | (index >= lut.shape[0]), lut.shape[0], index)
    return np.append(lut, np.asarray(outside, dtype=lut.dtype))[index]


def read_id_list(path: str | Path) -> list[str]:
    """Read one id per line (blank lines and ``#`` comments skipped)."""
    _check_exists(path, "id list")
    with open(path, encoding="utf-8") as handle:
        return [line.split()[0] for line in handle if line.strip() and not line.lstrip().startswith("#")]


def missing_files(paths: Sequence[str | Path]) -> list[str]:
    """The entries of ``paths`` that are not existing files, listing each folder only once."""
    listings: dict[str, set[str]] = {}
    missing = []
    for entry in paths:
        path = os.fspath(entry)
        folder, name = os.path.split(path)
        if folder not in listings:
            listings[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        if name not in listings[folder]:
            missing.append(path)
    return missing
