"""Callbacks (and a faulty datamodule) that the distributed tests put in the configs of their CLI runs.

The test folder is on ``PYTHONPATH`` of every run (``conftest.run_ddp``), so DDP worker processes import them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.callbacks import Callback

from pixcontrast.data.synthetic import SyntheticScenesDataModule, SyntheticScenesDataset


def _cpu_copy(state: dict[str, Any]) -> dict[str, Any]:
    return {key: value.detach().cpu().clone() if torch.is_tensor(value) else value for key, value in state.items()}


class StateProbe(Callback):
    """Write each rank's training state to ``{directory}/rank{r}.pt`` when fit ends.

    Saved: ``state_dict`` (weights and buffers: memory bank, centroids), ``optimizer`` and ``scheduler`` states,
    ``global_step``, the per-step ``losses`` and ``names`` (images of each step on this rank), the ``metrics``
    known at the end (``trainer.callback_metrics``) and ``first_centroids`` (the centroid buffers of the module's
    cluster heads when the first training batch starts, i.e. right after the first clustering pass).
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.losses: list[float] = []
        self.names: list[list[str]] = []
        self.first_centroids: dict[str, torch.Tensor] | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.first_centroids is None:
            self.first_centroids = _cpu_copy(
                {k: v for k, v in pl_module.state_dict().items() if k.endswith(".centroids")}
            )
        self.names.append(list(batch.get("name", [])))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {
            "state_dict": _cpu_copy(pl_module.state_dict()),
            "optimizer": trainer.optimizers[0].state_dict(),
            "scheduler": [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs],
            "global_step": trainer.global_step,
            "losses": self.losses,
            "names": self.names,
            "metrics": {key: float(value) for key, value in trainer.callback_metrics.items()},
            "first_centroids": self.first_centroids,
            "world_size": trainer.world_size,
        }
        torch.save(state, self.directory / f"rank{trainer.global_rank}.pt")


class CrashAtStep(Callback):
    """Stop the run abruptly (an exception, as a crash or a kill would) when training reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step >= self.step:
            raise SystemExit(f"simulated crash at step {trainer.global_step}")


class ReseedAsDDP(Callback):
    """Re-seed the global generators where Lightning's DDP strategy does (``reset_seed`` in ``setup_distributed``,
    after the model is built, before the ``setup`` hooks), so a one-process reference draws the same numbers."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        reset_seed()


class PoisonedScenes(SyntheticScenesDataModule):
    """Synthetic scenes whose training image ``poison_index`` is all NaN (a corrupt input reaching the model)."""

    def __init__(
        self,
        poison_index: int = 1,
        num_classes: int = 4,
        image_size: int = 48,
        num_train: int = 2,
        num_val: int = 2,
        batch_size: int = 1,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            image_size=image_size,
            num_train=num_train,
            num_val=num_val,
            batch_size=batch_size,
            num_workers=0,
        )
        self.poison_index = poison_index

    def build_dataset(self, split: str) -> SyntheticScenesDataset:
        dataset = super().build_dataset(split)
        return _PoisonedDataset(dataset, self.poison_index) if split == "train" else dataset


class _PoisonedDataset(SyntheticScenesDataset):
    def __init__(self, dataset: SyntheticScenesDataset, poison_index: int) -> None:
        self.__dict__.update(dataset.__dict__)
        self.poison_index = poison_index

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        if index == self.poison_index:
            item["image"] = torch.full_like(item["image"], float("nan"))
        return item
