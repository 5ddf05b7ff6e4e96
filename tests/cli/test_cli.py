"""The pixcontrast command: help, config errors, overrides, python -m."""

from __future__ import annotations

import subprocess
import sys

import pytest
from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar

from pixcontrast.bundled_configs import CONFIG_DIR
from pixcontrast.cli import main, run_lightning


def test_help_lists_modules_datamodules_and_extra_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in (
        "ContrastiveSegmenter",
        "PiCIE",
        "SegmentationModule",
        "SyntheticScenesDataModule",
        "CityscapesDataModule",
        "pixcontrast prepare",
        "pixcontrast export",
    ):
        assert name in text


def test_print_config_applies_dotted_overrides(capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(CONFIG_DIR / "synthetic_contrast.yaml"),
                "--trainer.max_epochs=2",
                "--model.init_args.lr=0.5",
                "--print_config",
            ]
        )
    text = capsys.readouterr().out
    assert "max_epochs: 2" in text and "lr: 0.5" in text and "pixcontrast.modules.ContrastiveSegmenter" in text


def test_unknown_class_path_fails_with_lightning_cli_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["fit", "--config", str(CONFIG_DIR / "synthetic_baseline.yaml"), "--model=pixcontrast.modules.NoSuchModule"]
        )
    assert exit_info.value.code != 0
    assert "NoSuchModule" in capsys.readouterr().err


def test_misspelled_key_fails_with_lightning_cli_message(tmp_path, capsys):
    config = (CONFIG_DIR / "synthetic_baseline.yaml").read_text().replace("head_channels:", "head_chanels:")
    path = tmp_path / "bad.yaml"
    path.write_text(config)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path)])
    assert exit_info.value.code != 0
    assert "head_chanels" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "pixcontrast", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "ContrastiveSegmenter" in result.stdout


@pytest.mark.parametrize(
    ("switch", "dropped", "kept"),
    [
        ("--trainer.enable_progress_bar=false", RichProgressBar, LearningRateMonitor),
        ("--trainer.logger=false", LearningRateMonitor, RichProgressBar),
    ],
)
def test_trainer_switches_turn_off_the_default_callbacks(switch, dropped, kept, tmp_path):
    cli = run_lightning(
        [
            "fit",
            "--config",
            str(CONFIG_DIR / "synthetic_baseline.yaml"),
            switch,
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.init_args.num_workers=0",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=2",
            "--model.init_args.head_channels=8",
        ]
    )
    kinds = [type(callback) for callback in cli.trainer.callbacks]
    assert dropped not in kinds and kept in kinds
    assert cli.trainer.state.finished and cli.trainer.global_step == 1  # the run itself went through
