"""Every example config parses and runs one training and one validation batch (fast_dev_run).

Configs of real datasets run on tiny generated copies of the official layouts, on the CPU, with the model
exactly as configured (only data size, devices and precision are overridden).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from dataset_layouts import make_cityscapes, make_coco_stuff, make_pascal_context

from pixcontrast.cli import run_lightning
from pixcontrast.data.prepare import prepare_pascal_context

CONFIGS = sorted((Path(__file__).parents[2] / "examples" / "configs").glob("*.yaml"))
CPU = [
    "--trainer.fast_dev_run=true",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_model_summary=false",
]
REAL_DATA_CPU = ["--trainer.strategy=auto", "--trainer.sync_batchnorm=false", "--trainer.precision=32-true"]


def dataset_root(data_class: str, tmp_path: Path) -> Path | None:
    """Write a tiny copy of the dataset that ``data_class`` reads; None for generated data."""
    name = data_class.rsplit(".", 1)[-1]
    if name == "CityscapesDataModule":
        return make_cityscapes(tmp_path / "cityscapes", counts={"train": 2, "val": 1})
    if name == "COCOStuffDataModule":
        return make_coco_stuff(tmp_path / "cocostuff", counts={"train": 2, "val": 1})
    if name == "PascalContextDataModule":
        voc, _ = make_pascal_context(tmp_path / "voc", tmp_path / "release")
        prepare_pascal_context(voc, tmp_path / "release", workers=1)
        return voc
    return None


def overrides(config: dict, tmp_path: Path) -> list[str]:
    data = config["data"]
    inner = data["init_args"].get("datamodule")
    args = [f"--trainer.default_root_dir={tmp_path}", *CPU]
    if inner is not None:  # PiCIE wraps the datamodule of the images
        prefix = "--data.init_args.datamodule.init_args"
        root = dataset_root(inner["class_path"], tmp_path)
        args += [f"{prefix}.batch_size=2", f"{prefix}.num_workers=0", "--data.init_args.view_size=64",
                 "--data.init_args.input_size=64", "--data.init_args.eval_size=32"]
    else:
        prefix = "--data.init_args"
        root = dataset_root(data["class_path"], tmp_path)
        args += [f"{prefix}.batch_size=2", f"{prefix}.num_workers=0"]
        if root is not None:
            args += [f"{prefix}.crop_size=[36, 68]"]  # not a multiple of 32, as 520 x 520
    if root is not None:
        args += [f"{prefix}.root={root}", *REAL_DATA_CPU]
    return args


@pytest.mark.parametrize(
    "config_path",
    # the paper configs build full-size models (HRNet-W48, ResNet-101): 10-60 s each on 2 CPU cores
    [pytest.param(path, marks=() if path.stem.startswith("synthetic") else pytest.mark.slow) for path in CONFIGS],
    ids=[path.stem for path in CONFIGS],
)
def test_config_runs_with_fast_dev_run(config_path, tmp_path):
    config = yaml.safe_load(config_path.read_text())
    cli = run_lightning(["fit", "--config", str(config_path), *overrides(config, tmp_path)])
    trainer = cli.trainer
    assert trainer.state.finished and trainer.global_step == 1  # one optimiser step on one batch
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["loss"]), f"non-finite training loss {metrics['loss']}"
    assert 0.0 <= float(metrics["val/pixel_accuracy"]) <= 1.0  # the validation batch ran and was scored
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes  # linked from the datamodule
