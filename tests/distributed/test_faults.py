"""Faults during training: non-finite losses, broken files in loader workers, interrupted checkpoint writes."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import CONTRASTIVE, load, model_config, run_local, write_config
from fsspec.implementations.local import LocalFileOpener

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from dataset_layouts import make_cityscapes

SUPERVISED = {
    "class_path": "pixcontrast.modules.SegmentationModule",
    "init_args": {"encoder": "resnet10t", "head": "fcn", "head_channels": 16, "optimizer": "sgd", "lr": 0.01},
}


def test_nan_input_is_reported_with_step_image_and_terms(tmp_path):
    data = {"class_path": "state_probe.PoisonedScenes", "init_args": {"poison_index": 1}}
    config = write_config(tmp_path / "config.yaml", model_config(CONTRASTIVE), data, tmp_path, max_steps=4)
    with pytest.raises(FloatingPointError) as error:
        run_local("fit", config)
    message = str(error.value)
    match = re.search(r"non-finite loss at global step (\d+) \(images \['train_000001'\]\): \{(.*)\}", message)
    assert match, message
    assert int(match.group(1)) in (0, 1)  # the poisoned image is one of the first epoch's two steps
    assert "'ce': nan" in match.group(2) and "'loss': nan" in match.group(2)


def test_corrupt_image_in_a_loader_worker_names_the_file(tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes", {"train": 3, "val": 2})
    broken = sorted((root / "leftImg8bit" / "train").glob("*/*.png"))[1]
    broken.write_bytes(broken.read_bytes()[:40])  # truncated PNG
    data = {
        "class_path": "pixcontrast.data.CityscapesDataModule",
        "init_args": {
            "root": str(root),
            "batch_size": 1,
            "num_workers": 1,
            "crop_size": [32, 32],
            "scale_range": None,
            "persistent_workers": False,
        },
    }
    config = write_config(tmp_path / "config.yaml", SUPERVISED, data, tmp_path / "run", max_steps=3)
    with pytest.raises(Exception) as error:
        run_local("fit", config)
    assert str(broken) in str(error.value), str(error.value)
    assert "DataLoader worker" in str(error.value)


def test_interrupted_checkpoint_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Lightning writes checkpoints through an fsspec transaction (``lightning.fabric.utilities.cloud_io
    ._atomic_save``): the bytes go to a temporary file that is moved onto the final name only when the write
    completed. A write that dies half-way therefore leaves the previous ``last.ckpt`` untouched."""
    writes: list[str] = []
    real_write = LocalFileOpener.write

    def failing_write(self, data):
        if self.path.endswith("last.ckpt"):
            writes.append(getattr(self, "temp", None) or self.path)
            if len(writes) == 2:  # the second save of last.ckpt (end of epoch 1) dies half-way
                real_write(self, data[: len(data) // 2])
                raise OSError("No space left on device (simulated)")
        return real_write(self, data)

    monkeypatch.setattr(LocalFileOpener, "write", failing_write)
    config = write_config(
        tmp_path / "config.yaml",
        SUPERVISED,
        {
            "class_path": "pixcontrast.data.SyntheticScenesDataModule",
            "init_args": {"num_classes": 4, "image_size": 48, "num_train": 2, "num_val": 2, "batch_size": 1},
        },
        tmp_path,
        max_steps=4,
    )
    with pytest.raises(OSError, match="simulated"):
        run_local("fit", config)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert all(path != str(last) for path in writes)  # the bytes never went to the final name directly
    checkpoint = load(last)  # still the complete checkpoint of epoch 0
    assert checkpoint["global_step"] == 2 and checkpoint["epoch"] == 0
    assert not any(path.name.startswith("tmp") for path in last.parent.iterdir())
