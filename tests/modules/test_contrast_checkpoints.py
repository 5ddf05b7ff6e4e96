"""Checkpoints of pixcontrast 0.1 (flat contrast hyper-parameters) load into ContrastiveSegmenter unchanged."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

from pixcontrast.losses import PixelContrastSettings
from pixcontrast.modules import ContrastiveSegmenter

OLD_CHECKPOINT = Path(__file__).resolve().parents[1] / "fixtures" / "contrastive_segmenter_0_1.ckpt"  # see its .md
OLD_SETTINGS = PixelContrastSettings(
    proj_dim=8,
    loss_weight=0.5,
    warmup_steps=0,
    temperature=0.07,
    max_samples=64,
    max_views=2,
    memory_size=4,
    pixels_per_image=2,
    segment_pixels=16,
)
CLI_MARKS = {  # what LightningCLI adds to the hyper-parameters of the modules it builds (pixcontrast fit)
    "_class_path": "pixcontrast.modules.ContrastiveSegmenter",
    "_instantiator": "lightning.pytorch.cli.instantiate_module",
}


def old_checkpoint(tmp_path: Path, through_cli: bool) -> tuple[Path, dict]:
    """The 0.1 fixture as a path and its contents, with the marks of a checkpoint written by the command if asked."""
    checkpoint = torch.load(OLD_CHECKPOINT, map_location="cpu", weights_only=True)
    if not through_cli:
        return OLD_CHECKPOINT, checkpoint
    checkpoint["hyper_parameters"].update(CLI_MARKS)
    path = tmp_path / "written_by_the_command.ckpt"
    torch.save(checkpoint, path)
    return path, checkpoint


@pytest.mark.parametrize("through_cli", [False, True], ids=["trainer", "command"])
def test_a_0_1_checkpoint_loads_with_identical_weights_bank_and_settings(through_cli, tmp_path):
    path, checkpoint = old_checkpoint(tmp_path, through_cli)
    assert "proj_dim" in checkpoint["hyper_parameters"] and "contrast" not in checkpoint["hyper_parameters"]
    with pytest.warns(FutureWarning, match="the flat proj_dim, loss_weight, warmup_steps, project_sampled_pixels"):
        module = ContrastiveSegmenter.load_from_checkpoint(path, map_location="cpu")
    assert module.contrast.settings == OLD_SETTINGS
    state = module.state_dict()
    assert list(state) == list(checkpoint["state_dict"])  # the same keys, in the same order
    for key, value in checkpoint["state_dict"].items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    bank = module.contrast.memory_bank
    assert bank.filled.sum() > 0 and bank.queue.abs().sum() > 0  # the bank of the old run, not a fresh one
    assert module.hparams.contrast == dataclasses.asdict(OLD_SETTINGS)
    assert not set(module.hparams) & {"proj_dim", "memory_size", "warmup_steps"}


def test_a_0_1_checkpoint_saved_again_holds_the_new_form(tmp_path):
    with pytest.warns(FutureWarning):
        module = ContrastiveSegmenter.load_from_checkpoint(OLD_CHECKPOINT, map_location="cpu")
    checkpoint = torch.load(OLD_CHECKPOINT, map_location="cpu", weights_only=True)
    checkpoint.update(hyper_parameters=dict(module.hparams), state_dict=module.state_dict())
    path = tmp_path / "saved_again.ckpt"
    torch.save(checkpoint, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        again = ContrastiveSegmenter.load_from_checkpoint(path, map_location="cpu")  # weights_only loading
    assert again.contrast.settings == OLD_SETTINGS
    torch.testing.assert_close(again.contrast.memory_bank.queue, module.contrast.memory_bank.queue, rtol=0, atol=0)
