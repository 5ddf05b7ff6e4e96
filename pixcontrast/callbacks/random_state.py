"""RandomStateCheckpoint: the global random generators in checkpoints, for exact resumption."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class RandomStateCheckpoint(Callback):
    """Keep the random generators (torch, CUDA, numpy, python) in checkpoints and restore them on resume.

    Lightning saves weights, optimiser, schedulers and loop positions but not the global random states, so
    without this a resumed run shuffles the data, drops out and samples anchors differently from an
    uninterrupted one. Under DDP the checkpoint holds rank 0's states and every rank restores them (ranks
    seeded alike and drawing the same shapes stay alike). The states are put back when training starts, after the
    draws Lightning's own set-up makes on every start, so the next epoch draws what the uninterrupted run drew.
    """

    def __init__(self) -> None:
        self._restored: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # numpy's key array is stored as a tensor so that checkpoints stay loadable with ``weights_only=True``
        state = np.random.get_state()
        assert isinstance(state, tuple)  # the legacy form of the global MT19937 state
        name, keys, position, has_gauss, cached_gaussian = state
        states: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._restored is None:
            return
        state_dict, self._restored = self._restored, None
        torch.set_rng_state(state_dict["torch"])
        name, keys, position, has_gauss, cached_gaussian = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        if torch.cuda.is_available():
            for device, cuda_state in enumerate(state_dict.get("cuda", [])[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, device)
