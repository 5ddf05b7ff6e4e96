"""Fixtures: tiny real-dataset layouts (see dataset_layouts.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_layouts import make_cityscapes, make_coco_stuff


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    return make_cityscapes(tmp_path / "cityscapes")


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return make_coco_stuff(tmp_path / "coco")
