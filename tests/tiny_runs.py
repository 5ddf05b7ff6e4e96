"""Tiny Lightning set-ups the tests share: a quiet one-device Trainer and PiCIE's views of synthetic scenes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from pixcontrast.data import PiCIEDataModule, SyntheticScenesDataModule


def quiet_trainer(root: Path | None = None, **options: Any) -> L.Trainer:
    """A Trainer on one CPU device writing nothing of its own: no logger, checkpoints, progress bar or model summary.

    ``root`` is its ``default_root_dir``; ``options`` are further Trainer arguments and override these defaults.
    """
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    if root is not None:
        defaults["default_root_dir"] = root
    return L.Trainer(**{**defaults, **options})


def picie_scenes(size: int, **synthetic: Any) -> PiCIEDataModule:
    """Synthetic scenes of ``size`` px (``synthetic``: the rest of their options) in PiCIE's two views, each view
    cropped, fed and evaluated at ``size`` px."""
    inner = SyntheticScenesDataModule(image_size=size, **synthetic)
    return PiCIEDataModule(inner, view_size=size, input_size=size, eval_size=size)
