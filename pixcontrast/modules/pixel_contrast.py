"""PixelContrast: the pixel-contrast term as one plug-in object for any segmentation LightningModule.

A plain ``nn.Module`` (no Lightning): it owns the projection head, the warm-up, the sampled projection, the
optional memory bank and the rule that keeps DDP working while the term is off. Adding the term to a module::

    self.contrast = PixelContrast(in_channels=features_channels, num_classes=19)        # in __init__
    loss = loss + self.contrast(features, masks, logits, self.global_step)                # in training_step
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixcontrast.losses import PixelContrastLoss, PixelMemoryBank
from pixcontrast.models.heads import ProjectionHead

__all__ = ["PixelContrast"]


class PixelContrast(nn.Module):
    """Supervised pixel contrast (Wang et al., ICCV 2021) on the features of any segmentation network.

    ``forward(features, masks, logits, step)`` returns ``loss_weight x`` the loss of :class:`PixelContrastLoss`
    on the embeddings of ``features`` once ``step >= warmup_steps``. Before that the projection head does not
    run and the result is a zero that gives every head parameter a zero gradient, so DDP needs no
    ``find_unused_parameters``. With ``project_sampled_pixels=True`` (default) anchors are sampled from labels
    and predictions first and the head embeds only those pixels (plus the memory bank's new pixels): the same
    embeddings for a fraction of the cost, except that the head's BatchNorm statistics come from those pixels.
    ``memory_size > 0`` adds the memory variant's per-class pixel and segment queues (saved in checkpoints).

    Args:
        in_channels: channels ``C`` of the features the head reads.
        num_classes: ``K`` (the memory bank keeps one pair of queues per class).
        proj_dim: embedding size ``D``.
        loss_weight: weight of the term in the total loss.
        warmup_steps: steps before the term switches on (the papers: 5000 on Cityscapes).
        temperature, base_temperature, max_samples, max_views, ignore_index, gather_anchors: see
            :class:`~pixcontrast.losses.PixelContrastLoss`.
        memory_size, pixels_per_image, segment_pixels, memory_dtype: see
            :class:`~pixcontrast.losses.PixelMemoryBank` (``memory_size=0``: no memory bank).
        project_sampled_pixels: embed only the sampled pixels (default) or the whole map first (the reference).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        proj_dim: int = 256,
        *,
        loss_weight: float = 0.1,
        warmup_steps: int = 0,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        max_samples: int = 1024,
        max_views: int = 100,
        ignore_index: int = 255,
        memory_size: int = 0,
        pixels_per_image: int = 10,
        segment_pixels: int = 64,
        memory_dtype: Literal["float32", "bfloat16"] = "float32",
        gather_anchors: bool = False,
        project_sampled_pixels: bool = True,
    ) -> None:
        super().__init__()
        for name, value in [
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("proj_dim", proj_dim),
            ("segment_pixels", segment_pixels),
            ("pixels_per_image", pixels_per_image),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {loss_weight}")
        if warmup_steps < 0 or memory_size < 0:
            raise ValueError(f"warmup_steps and memory_size must be >= 0, got {warmup_steps} and {memory_size}")
        self.in_channels = in_channels
        self.loss_weight = loss_weight
        self.warmup_steps = warmup_steps
        self.project_sampled_pixels = project_sampled_pixels
        self.head = ProjectionHead(in_channels, proj_dim)
        memory_bank = None
        if memory_size > 0:
            memory_bank = PixelMemoryBank(
                num_classes,
                proj_dim,
                memory_size=memory_size,
                pixels_per_image=pixels_per_image,
                ignore_index=ignore_index,
                segment_pixels=segment_pixels,
                memory_dtype=memory_dtype,
            )
        self.criterion = PixelContrastLoss(
            temperature, base_temperature, max_samples, max_views, ignore_index, memory_bank, gather_anchors
        )

    @property
    def memory_bank(self) -> PixelMemoryBank | None:
        """The memory bank, or None without the memory variant."""
        return self.criterion.memory_bank

    def active(self, step: int) -> bool:
        """Whether the term is on at training step ``step`` (after the warm-up)."""
        return step >= self.warmup_steps

    def embed(self, features: Tensor) -> Tensor:
        """Unit-norm embeddings of a whole map: ``B x C x h x w -> B x proj_dim x h x w`` (e.g. to visualise)."""
        return self.head(features)

    def loss(
        self, features: Tensor, masks: Tensor, logits: Tensor, step: int, generator: torch.Generator | None = None
    ) -> Tensor | None:
        """The unweighted loss, or None during the warm-up (the head does not run).

        Args:
            features: ``B x C x h x w`` features the projection head reads.
            masks: ``B x H x W`` ground truth (any resolution; nearest-downsampled to ``h x w``).
            logits: ``B x K x h' x w'`` segmentation logits of the same images; their argmax (bilinearly resized
                to ``h x w`` when needed, no gradient) marks the hard pixels.
            step: the current training step (``self.global_step`` in a LightningModule).
            generator: optional ``torch.Generator`` on the features' device.
        """
        self._check(features, masks, logits)
        if not self.active(step):
            return None
        logits = logits.detach()
        if logits.shape[-2:] != features.shape[-2:]:
            logits = F.interpolate(logits, size=features.shape[-2:], mode="bilinear", align_corners=False)
        predictions = logits.max(dim=1).indices  # the argmax; 5x faster than argmax(dim=1) on CPU
        if self.project_sampled_pixels:
            return self.criterion(features, masks, predictions, generator, projection=self.head.project_pixels)
        return self.criterion(self.head(features), masks, predictions, generator)

    def idle(self) -> Tensor:
        """A zero that gives every head parameter a zero gradient (what the term adds during the warm-up)."""
        return sum(parameter.sum() for parameter in self.head.parameters()) * 0.0

    def forward(
        self, features: Tensor, masks: Tensor, logits: Tensor, step: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``loss_weight x`` :meth:`loss` after the warm-up, :meth:`idle` before: add it to the total loss."""
        loss = self.loss(features, masks, logits, step, generator)
        return self.idle() if loss is None else self.loss_weight * loss

    def _check(self, features: Tensor, masks: Tensor, logits: Tensor) -> None:
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"features must be B x {self.in_channels} x h x w (in_channels={self.in_channels}), got shape "
                f"{tuple(features.shape)}; pass the map the projection head was built for"
            )
        batch = features.shape[0]
        if masks.dim() != 3 or masks.shape[0] != batch:
            raise ValueError(f"masks must be B x H x W with B = {batch}, got shape {tuple(masks.shape)}")
        if logits.dim() != 4 or logits.shape[0] != batch:
            raise ValueError(
                f"logits must be B x K x h x w with B = {batch} (the segmentation output), "
                f"got shape {tuple(logits.shape)}"
            )

    def extra_repr(self) -> str:
        return (
            f"loss_weight={self.loss_weight}, warmup_steps={self.warmup_steps}, "
            f"project_sampled_pixels={self.project_sampled_pixels}"
        )
