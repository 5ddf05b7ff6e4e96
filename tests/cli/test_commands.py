"""End to end through the command: fit -> export (no projection head) -> predict; prepare errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixcontrast.bundled_configs import CONFIG_DIR
from pixcontrast.cli import main
from pixcontrast.models import Segmenter

TINY = [
    "--data.init_args.image_size=48",
    "--data.init_args.num_train=8",
    "--data.init_args.num_val=4",
    "--data.init_args.batch_size=4",
    "--data.init_args.num_workers=0",
    "--model.init_args.head_channels=16",
    "--model.init_args.contrast.proj_dim=8",
    "--model.init_args.contrast.warmup_steps=0",
    "--trainer.max_steps=2",
    "--trainer.accelerator=cpu",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    main(["fit", "--config", str(CONFIG_DIR / "synthetic_contrast.yaml"), f"--trainer.default_root_dir={root}", *TINY])
    return root


def last_checkpoint(root: Path) -> Path:
    (path,) = root.rglob("last.ckpt")
    return path


def test_fit_writes_best_and_last_checkpoints_and_tensorboard_logs(trained_run):
    checkpoints = {path.name for path in trained_run.rglob("*.ckpt")}
    assert "last.ckpt" in checkpoints and any(name.startswith("epoch") and "miou" in name for name in checkpoints)
    assert list(trained_run.rglob("events.out.tfevents.*"))


def test_export_torchscript_matches_forward_and_drops_the_projection_head(trained_run, tmp_path):
    output = tmp_path / "model.pt"
    main(
        [
            "export",
            "--ckpt",
            str(last_checkpoint(trained_run)),
            "--format",
            "torchscript",
            "--output",
            str(output),
            "--height",
            "48",
            "--width",
            "48",
        ]
    )
    exported = torch.jit.load(str(output))
    checkpoint = torch.load(last_checkpoint(trained_run), map_location="cpu", weights_only=False)
    hparams = checkpoint["hyper_parameters"]
    plain = Segmenter(
        hparams["num_classes"], encoder=hparams["encoder"], head=hparams["head"], head_channels=hparams["head_channels"]
    )
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in plain.parameters())
    from pixcontrast.modules import ContrastiveSegmenter

    module = ContrastiveSegmenter.load_from_checkpoint(last_checkpoint(trained_run), map_location="cpu").eval()
    images = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(exported(images), module(images), rtol=1e-4, atol=1e-4)


def test_predict_writes_label_maps_and_overlays(trained_run, tmp_path):
    main(
        [
            "predict",
            "--config",
            str(CONFIG_DIR / "synthetic_contrast.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
            *TINY,
            "--trainer.callbacks+=pixcontrast.callbacks.SegmentationPredictionWriter",
            f"--trainer.callbacks.output_dir={tmp_path / 'predictions'}",
            f"--ckpt_path={last_checkpoint(trained_run)}",
        ]
    )
    labels = sorted((tmp_path / "predictions" / "labels").glob("*.png"))
    overlays = sorted((tmp_path / "predictions" / "overlays").glob("*.png"))
    assert len(labels) == 4 and len(overlays) == 4


def test_export_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(tmp_path / "nope.ckpt"), "--output", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 1
    assert "nope.ckpt" in capsys.readouterr().err


def test_prepare_with_a_missing_root_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "cityscapes", "--root", str(tmp_path / "missing")])
    assert exit_info.value.code == 1
    assert "error:" in capsys.readouterr().err
