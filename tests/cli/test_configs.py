"""Every example config parses and runs one training and one validation batch (fast_dev_run).

Configs of real datasets run on tiny generated copies of the official layouts, on the CPU, with the model
exactly as configured except its weights: they start from random values (``pretrained=false``) instead of the
downloaded ImageNet / DINO weights, so no test touches the network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from dataset_layouts import make_cityscapes, make_coco_stuff, make_coco_stuff_10k, make_folder, make_pascal_context

from pixcontrast.bundled_configs import CONFIG_DIR
from pixcontrast.cli import run_lightning
from pixcontrast.data.prepare import prepare_pascal_context

#: The configs that define a whole run; overlays (official_test_protocol) only add settings to one of them.
CONFIGS = sorted(path for path in CONFIG_DIR.glob("*.yaml") if "data" in yaml.safe_load(path.read_text()))
CPU = [
    "--trainer.fast_dev_run=true",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_model_summary=false",
]
REAL_DATA_CPU = ["--trainer.strategy=auto", "--trainer.sync_batchnorm=false", "--trainer.precision=32-true"]


FOLDER_CLASS_NAMES = "[grass,road,sky]"  # the three classes of make_folder's masks


def dataset_root(data: dict, tmp_path: Path, labelled: bool = True) -> tuple[Path | None, list[str]]:
    """Write a tiny copy of the dataset that the datamodule ``data`` (class_path, init_args) reads and return its
    root (None for generated data) with the options pointing at the copy's files (image lists). A folder of your
    own data is written with masks for the supervised configs and without (``labelled=False``) for PiCIE's."""
    name = data["class_path"].rsplit(".", 1)[-1]
    options = data.get("init_args", {})
    if name == "FolderSegmentationDataModule":
        return make_folder(tmp_path / "my_data", count=4, masks=labelled), []
    if name == "CityscapesDataModule":  # test and train_extra: PiCIE's official training images
        counts = {"train": 2, "val": 1, "test": 2, "train_extra": 2}
        return make_cityscapes(tmp_path / "cityscapes", counts=counts), []
    if name == "COCOStuffDataModule" and options.get("variant") == "10k":
        return make_coco_stuff_10k(tmp_path / "cocostuff-10k"), []
    if name == "COCOStuffDataModule":
        root = make_coco_stuff(tmp_path / "cocostuff", counts={"train": 2, "val": 1})
        lists = []
        for split in ("train", "val"):
            if options.get(f"{split}_image_list"):  # the curated lists, here every image
                path = root / "curated" / f"{split}2017" / "list.txt"
                path.parent.mkdir(parents=True)
                path.write_text("".join(f"{image.stem}\n" for image in sorted((root / f"{split}2017").glob("*.jpg"))))
                lists.append(f"{split}_image_list={path}")
        return root, lists
    if name == "PascalContextDataModule":
        voc, _ = make_pascal_context(tmp_path / "voc", tmp_path / "release")
        prepare_pascal_context(voc, tmp_path / "release", workers=1)
        return voc, []
    return None, []


def encoder_checkpoint(config: dict, tmp_path: Path) -> Path:
    """A stand-in for the checkpoint a config starts from (``weights_path``): a module with the config's encoder."""
    from pixcontrast.modules import SegmentationModule

    encoder = config["model"]["init_args"].get("encoder", "resnet18")
    path = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": SegmentationModule(num_classes=2, encoder=encoder).state_dict()}, path)
    return path


def overrides(config: dict, tmp_path: Path) -> list[str]:
    data = config["data"]
    inner = data["init_args"].get("datamodule")
    args = [f"--trainer.default_root_dir={tmp_path}", *CPU]
    if config["model"]["init_args"].get("pretrained"):
        args.append("--model.init_args.pretrained=false")
    if config["model"]["init_args"].get("weights_path"):  # written by another config (synthetic_pretrain.yaml)
        args.append(f"--model.init_args.weights_path={encoder_checkpoint(config, tmp_path)}")
    if inner is not None:  # PiCIE wraps the datamodule of the images
        prefix = "--data.init_args.datamodule.init_args"
        root, files = dataset_root(inner, tmp_path, labelled=False)
        args += [
            f"{prefix}.batch_size=2",
            f"{prefix}.num_workers=0",
            "--data.init_args.view_size=64",
            "--data.init_args.input_size=64",
            "--data.init_args.eval_size=32",
        ]
    else:
        prefix = "--data.init_args"
        root, files = dataset_root(data, tmp_path)
        args += [f"{prefix}.batch_size=2", f"{prefix}.num_workers=0"]
        if root is not None:
            args += [f"{prefix}.crop_size=[36, 68]"]  # not a multiple of 32, as 520 x 520
        if data["init_args"].get("short_side"):  # 520 would evaluate the 32 x 64 fixtures at 520 x 1040
            args += [f"{prefix}.short_side=36"]
        if data["class_path"].endswith("FolderSegmentationDataModule"):
            args += [f"{prefix}.class_names={FOLDER_CLASS_NAMES}"]
    if root is not None:
        args += [f"{prefix}.root={root}", *[f"{prefix}.{option}" for option in files], *REAL_DATA_CPU]
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
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes  # linked from the datamodule
    if cli.datamodule.has_labels:  # PiCIE on a folder of unlabelled images skips evaluation
        assert 0.0 <= float(metrics["val/pixel_accuracy"]) <= 1.0  # the validation batch ran and was scored
    else:
        assert "val/pixel_accuracy" not in metrics
    callbacks = [callback["class_path"] for callback in config["trainer"].get("callbacks", [])]
    if "pixcontrast.callbacks.FreshClusterEvaluation" in callbacks:  # the PiCIE paper configs: stages [test]
        assert "val/fresh_miou" not in metrics  # validation scores the last epoch's centroids only
        cli.trainer.test(cli.model, datamodule=cli.datamodule)
        tested = trainer.callback_metrics
        assert 0.0 <= float(tested["test/miou"]) <= 1.0 and 0.0 <= float(tested["test/fresh_miou"]) <= 1.0


def test_synthetic_contrast_trains_a_vit_named_on_the_command_line(tmp_path):
    from pixcontrast.models.backbones import ViTEncoder

    config_path = CONFIG_DIR / "synthetic_contrast.yaml"
    config = yaml.safe_load(config_path.read_text())
    cli = run_lightning(
        [
            "fit",
            "--config",
            str(config_path),
            *overrides(config, tmp_path),
            "--model.init_args.encoder=vit_tiny_patch16_224",
        ]
    )
    assert isinstance(cli.model.model.encoder, ViTEncoder)
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_pretraining_hands_its_encoder_to_the_picie_demo(tmp_path):
    """synthetic_pretrain.yaml writes last.ckpt; synthetic_picie.yaml builds PiCIE's encoder from it."""
    pretrain = yaml.safe_load((CONFIG_DIR / "synthetic_pretrain.yaml").read_text())
    run_lightning(
        [
            "fit",
            "--config",
            str(CONFIG_DIR / "synthetic_pretrain.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            *CPU[1:],
            "--data.init_args.batch_size=2",
            "--data.init_args.num_train=2",
            "--data.init_args.num_val=2",
        ]
    )
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    picie = yaml.safe_load((CONFIG_DIR / "synthetic_picie.yaml").read_text())
    assert picie["model"]["init_args"]["encoder"] == pretrain["model"]["init_args"]["encoder"]
    cli = run_lightning(
        [
            "fit",
            "--config",
            str(CONFIG_DIR / "synthetic_picie.yaml"),
            f"--model.init_args.weights_path={checkpoint}",
            "--trainer.max_steps=0",
            f"--trainer.default_root_dir={tmp_path / 'picie'}",
            "--trainer.logger=false",
            *CPU[1:],
        ]
    )
    encoder = cli.model.network.encoder.model.state_dict()
    prefix = "model.network.encoder.model."
    assert all(torch.equal(value, state[prefix + key]) for key, value in encoder.items())
