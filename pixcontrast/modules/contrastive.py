"""ContrastiveSegmenter: cross-entropy plus supervised pixel contrast (Wang et al., ICCV 2021)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from pixcontrast.losses import PixelContrastLoss, PixelMemoryBank
from pixcontrast.models import Segmenter
from pixcontrast.modules.base import SegmentationModule


class ContrastiveSegmenter(SegmentationModule):
    """A :class:`SegmentationModule` trained with CE + ``loss_weight`` x pixel contrast.

    The projection head (``proj_dim`` channels, L2-normalised) reads the features the paper uses for the chosen
    encoder and runs in training only: ``forward``, validation, test, predict and export never touch it.
    The contrast term is switched on once ``global_step >= warmup_steps``, in every run (single-process too).
    ``memory_size > 0`` turns on the memory variant (per-class pixel and segment queues of that many rows): the
    loss contrasts with the bank as it was before the batch, then enqueues the batch (in training mode); the
    backward pass does not read the bank, so the in-place update is safe.
    ``gather_anchors=True`` contrasts the anchors of all GPUs together (see :class:`PixelContrastLoss`).

    ``project_sampled_pixels=True`` (default) samples the anchors first (sampling needs only labels and
    predictions) and runs the projection head on the sampled pixels alone, plus the memory bank's new pixels:
    the same embeddings for a fraction of the cost, except that the head's BatchNorm statistics come from
    those pixels and segment rows average at most ``segment_pixels`` random pixels per segment. ``False``
    projects the whole feature map first, as the reference code does. Before the warm-up ends the head does
    not run at all (its parameters get zero gradients, so DDP needs no ``find_unused_parameters``).
    All other arguments are those of :class:`SegmentationModule`.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        proj_dim: int = 256,
        loss_weight: float = 0.1,
        warmup_steps: int = 5000,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        max_samples: int = 1024,
        max_views: int = 100,
        memory_size: int = 0,
        pixels_per_image: int = 10,
        gather_anchors: bool = False,
        project_sampled_pixels: bool = True,
        segment_pixels: int = 64,
        **kwargs: Any,
    ) -> None:
        if proj_dim < 1:
            raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
        if loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {loss_weight}")
        if warmup_steps < 0 or memory_size < 0:
            raise ValueError(f"warmup_steps and memory_size must be >= 0, got {warmup_steps} and {memory_size}")
        if segment_pixels < 1:
            raise ValueError(f"segment_pixels must be >= 1, got {segment_pixels}")
        super().__init__(num_classes, **kwargs)

    def configure_models(self) -> None:
        """The segmenter with its training-only projection head."""
        self.model = Segmenter(**self.segmenter_kwargs(), proj_dim=self.hparams.proj_dim)

    def configure_losses(self) -> None:
        """The pixel-contrast loss, with a memory bank when ``memory_size > 0``."""
        hp = self.hparams
        memory_bank = None
        if hp.memory_size > 0:
            memory_bank = PixelMemoryBank(
                hp.num_classes,
                hp.proj_dim,
                memory_size=hp.memory_size,
                pixels_per_image=hp.pixels_per_image,
                segment_pixels=hp.segment_pixels,
            )
        self.contrast_loss = PixelContrastLoss(
            temperature=hp.temperature,
            base_temperature=hp.base_temperature,
            max_samples=hp.max_samples,
            max_views=hp.max_views,
            ignore_index=hp.ignore_index,
            memory_bank=memory_bank,
            gather_anchors=hp.gather_anchors,
        )

    def contrast_active(self) -> bool:
        """Whether the contrast term is on at the current step (after the warm-up)."""
        return self.global_step >= self.hparams.warmup_steps

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        active = self.contrast_active()
        sampled = self.hparams.project_sampled_pixels
        output = self.model.forward_train(batch["image"], embed=active and not sampled)
        losses = self.supervised_losses(output, batch["mask"])
        head = self.model.projection_head
        if not active:  # zero gradients for the idle head keep DDP's reducer complete
            losses["loss"] = losses["loss"] + sum(parameter.sum() for parameter in head.parameters()) * 0.0
            return losses
        maps = output.features if sampled else output.embeddings
        logits = output.logits.detach()
        if logits.shape[-2:] != maps.shape[-2:]:
            logits = F.interpolate(logits, size=maps.shape[-2:], mode="bilinear", align_corners=False)
        projection = head.project_pixels if sampled else None
        contrast = self.contrast_loss(maps, batch["mask"], logits.argmax(dim=1), projection=projection)
        losses["contrast"] = contrast
        losses["loss"] = losses["loss"] + self.hparams.loss_weight * contrast
        return losses

    def visualization_outputs(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Hook for :class:`SegmentationVisualizer`: ``prediction`` B x H x W and the ``embeddings`` B x D x h x w."""
        output = self.model.forward_train(batch["image"])
        prediction = F.interpolate(output.logits, size=batch["image"].shape[-2:], mode="bilinear", align_corners=False)
        return {"prediction": prediction.argmax(dim=1), "embeddings": output.embeddings}
