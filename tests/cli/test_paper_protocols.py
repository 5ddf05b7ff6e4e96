"""The paper configs carry the official protocol: Cityscapes CE class weights, short-side resize, aspect jitter and
brightness shift (tfzhou/ContrastiveSeg configs/*/H_48_D_4.json)."""

from __future__ import annotations

import importlib

import pytest
import yaml

from pixcontrast.bundled_configs import CONFIG_DIR
from pixcontrast.modules.base import check_class_weights

#: loss.params.ce_weight of tfzhou/ContrastiveSeg configs/cityscapes/H_48_D_4.json (also H_48_D_4_MEM, R_101_D_8).
CITYSCAPES_CE_WEIGHTS = [
    0.8373, 0.9180, 0.8660, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
    0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507,
]  # fmt: skip
CITYSCAPES = sorted(CONFIG_DIR.glob("cityscapes_*_contrast*.yaml"))
SHORT_SIDE = [
    "pascal_context_ocr_hrnet_w48_contrast.yaml",
    "coco_stuff_ocr_hrnet_w48_contrast.yaml",
    "coco_stuff164k_ocr_hrnet_w48_contrast.yaml",
]


def _load(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / name).read_text())


def _datamodule(config: dict):
    module, name = config["data"]["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**config["data"]["init_args"])  # built, not set up


def test_every_cityscapes_contrast_config_is_listed() -> None:
    assert len(CITYSCAPES) == 7 and all(
        _load(path.name)["data"]["init_args"]["label_set"] == "19" for path in CITYSCAPES
    )


@pytest.mark.parametrize("path", CITYSCAPES, ids=[path.stem for path in CITYSCAPES])
def test_cityscapes_configs_weight_the_ce_and_jitter_as_the_official_runs(path) -> None:
    config = _load(path.name)
    weights = config["model"]["init_args"]["class_weights"]
    assert weights == CITYSCAPES_CE_WEIGHTS and len(check_class_weights(weights, 19)) == 19
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("class_weights:"))
    assert "ContrastiveSeg" in lines[at - 2] and "ce_weight" in lines[at - 1]  # the comment above cites the source
    data = config["data"]["init_args"]
    assert data["aspect_range"] == [0.9, 1.1] and data["brightness_shift"] == 10 and "short_side" not in data
    _datamodule(config)


@pytest.mark.parametrize("name", SHORT_SIDE)
def test_pascal_context_and_coco_stuff_configs_resize_the_short_side(name) -> None:
    config = _load(name)
    data = config["data"]["init_args"]
    assert data["short_side"] == 520 and data["aspect_range"] == [0.9, 1.1] and data["brightness_shift"] == 10
    assert data["crop_size"] == [520, 520] and data["scale_range"] == [0.5, 2.0]
    assert "class_weights" not in config["model"]["init_args"]  # the official weights are Cityscapes' alone
    datamodule = _datamodule(config)
    assert datamodule.train_transform.transforms[0].short_side == 520


def test_the_unsupervised_cityscapes_config_keeps_its_own_weights() -> None:
    assert _load("cityscapes27_picie.yaml")["model"]["init_args"]["class_weights"] == "balanced"
