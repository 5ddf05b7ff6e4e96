"""A callback the DDP command test puts on its trainer: writes the process group's backend and world size."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class BackendProbe(Callback):
    """Write ``{"backend": ..., "world_size": ..., "device": ...}`` to ``path`` when fit starts."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.path.write_text(
            json.dumps(
                {
                    "backend": torch.distributed.get_backend() if initialised else None,
                    "world_size": torch.distributed.get_world_size() if initialised else 1,
                    "device": str(pl_module.device),
                }
            )
        )
