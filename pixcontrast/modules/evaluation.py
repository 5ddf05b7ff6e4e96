"""The validation/test quartet shared by every pixcontrast LightningModule.

Validation and test run the same per-batch step and log the same epoch metrics under their stage prefix:
``{stage}/miou``, ``{stage}/pixel_accuracy``, ``{stage}/iou_<class name>`` and any extra scalars the module
returns. A module implements two hooks, :meth:`StageEvaluation.evaluation_step` and
:meth:`StageEvaluation.compute_stage_metrics`; the four Lightning hooks come from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor


class StageEvaluation:
    """Mixin (put it before ``LightningModule`` in the bases) for the validation and test steps.

    The module provides ``class_names`` (one name per class) and the two hooks below.
    """

    class_names: list[str]

    def evaluation_step(self, batch: Mapping[str, Any], stage: str) -> None:
        """Update the ``stage`` (``val`` or ``test``) metrics with one batch."""
        raise NotImplementedError

    def compute_stage_metrics(self, stage: str) -> dict[str, Tensor] | None:
        """Compute and reset the ``stage`` metrics: ``miou``, ``pixel_accuracy``, ``per_class_iou`` (K) and any
        extra scalars, or None to log nothing (e.g. a PiCIE model before its first clustering)."""
        raise NotImplementedError

    def log_stage_metrics(self, stage: str) -> None:
        """Log :meth:`compute_stage_metrics` under ``{stage}/``, the per-class IoU under the class names."""
        values = self.compute_stage_metrics(stage)
        if values is None:
            return
        per_class = values.pop("per_class_iou")
        logged = {f"{stage}/{name}": value for name, value in values.items()}
        logged.update({f"{stage}/iou_{name}": iou for name, iou in zip(self.class_names, per_class, strict=True)})
        self.log_dict(logged)  # type: ignore[attr-defined]

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.evaluation_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_stage_metrics("val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.evaluation_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.log_stage_metrics("test")
