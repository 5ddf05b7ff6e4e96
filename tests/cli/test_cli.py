"""The pixcontrast command: help, config errors, overrides, python -m."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

from pixcontrast.bundled_configs import CONFIG_DIR
from pixcontrast.cli import PixContrastCLI, main, run_lightning
from pixcontrast.losses import PixelContrastSettings


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
        ("--trainer.enable_checkpointing=false", ModelCheckpoint, RichProgressBar),
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


HARD_MINING = ["--model.init_args.contrast.hard_mining=true", "--model.init_args.contrast.num_hard_negatives=64"]


def test_every_contrast_option_is_a_key_under_contrast(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIG_DIR / "synthetic_contrast_mem.yaml"), *HARD_MINING, "--print_config"])
    init_args = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    contrast = init_args["contrast"]
    assert list(contrast) == [field.name for field in dataclasses.fields(PixelContrastSettings)]
    assert contrast["hard_mining"] is True and contrast["num_hard_negatives"] == 64
    assert (contrast["memory_size"], contrast["warmup_steps"], contrast["max_views"]) == (2000, 40, 1)  # the config's
    assert not set(init_args) & set(contrast) - {"ignore_index"}  # no flat contrast options


def test_contrast_options_of_the_command_line_reach_the_memory_bank(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "--config",
        str(CONFIG_DIR / "synthetic_contrast_mem.yaml"),
        *HARD_MINING,
        "--model.init_args.encoder=resnet10t",
    ]
    cli = PixContrastCLI(
        LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False, args=args
    )
    bank = cli.model.contrast.memory_bank
    assert bank.hard_mining and bank.num_hard_negatives == 64 and bank.memory_size == 2000
    assert cli.model.hparams.contrast == dataclasses.asdict(cli.model.contrast.settings)
