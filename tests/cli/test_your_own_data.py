"""Your own data end to end through the command, as the README shows it: a labelled folder for the supervised
modules, an unlabelled one for PiCIE (fit, clustering, predict with cluster maps and overlays)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from dataset_layouts import make_folder
from PIL import Image

from pixcontrast.bundled_configs import CONFIG_DIR
from pixcontrast.cli import main, run_lightning
from pixcontrast.data.folder import list_images

CPU = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_model_summary=false",
    "--trainer.enable_progress_bar=false",
]
PICIE_DATA = "--data.init_args.datamodule.init_args"


def test_labelled_folder_from_the_command_line_alone(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "my_data", count=4)
    cli = run_lightning(
        [
            "fit",
            "--data=pixcontrast.data.FolderSegmentationDataModule",
            f"--data.root={root}",
            "--data.class_names=[grass,road,sky]",
            "--data.batch_size=2",
            "--data.crop_size=[32,32]",
            "--model=pixcontrast.modules.SegmentationModule",
            "--model.encoder=resnet18",
            "--model.head_channels=16",
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            *CPU,
        ]
    )
    assert cli.model.hparams.num_classes == 3 and cli.model.class_names == ["grass", "road", "sky"]
    assert "val/miou" in cli.trainer.callback_metrics


def test_picie_trains_clusters_and_predicts_on_unlabelled_images(tmp_path: Path, caplog) -> None:
    root = make_folder(tmp_path / "my_photos", count=6, masks=False)
    small = [
        f"{PICIE_DATA}.root={root}",
        f"{PICIE_DATA}.batch_size=2",
        f"{PICIE_DATA}.eval_batch_size=2",
        f"{PICIE_DATA}.num_workers=0",
        "--data.init_args.view_size=48",
        "--data.init_args.input_size=32",
        "--data.init_args.eval_size=32",
        "--model.init_args.num_clusters=4",
        "--model.init_args.feature_dim=16",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        *CPU,
    ]
    with caplog.at_level(logging.INFO):
        main(
            [
                "fit",
                "--config",
                str(CONFIG_DIR / "folder_picie.yaml"),
                "--trainer.max_epochs=1",
                "--trainer.limit_train_batches=2",
                "--trainer.logger=false",
                *small,
            ]
        )
    skipped = [r for r in caplog.records if "metrics (val/miou, ...) are skipped" in r.getMessage()]
    assert len(skipped) == 1
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file() and list((tmp_path / "run" / "checkpoints").glob("epoch000.ckpt"))

    out = tmp_path / "predictions"
    main(
        [
            "predict",
            "--config",
            str(CONFIG_DIR / "folder_picie.yaml"),
            f"--ckpt_path={checkpoint}",
            f"{PICIE_DATA}.val_images=images",
            "--trainer.callbacks+=pixcontrast.callbacks.SegmentationPredictionWriter",
            f"--trainer.callbacks.output_dir={out}",
            *small,
        ]
    )
    names = [path.rsplit(".", 1)[0] for path in list_images(root / "images")]
    for name in names:  # every image, nested folders kept
        clusters = np.array(Image.open(out / "clusters" / f"{name}.png"))
        assert clusters.shape == (32, 32) and clusters.max() < 4
        assert np.array(Image.open(out / "cluster_overlays" / f"{name}.png")).shape == (32, 32, 3)
        assert (out / "overlays" / f"{name}.png").is_file()
