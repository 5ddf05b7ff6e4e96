"""PixelContrast: the pixel-contrast term as one plug-in ``nn.Module`` for any segmentation training loop.

Pure torch (no Lightning): it owns the projection head, the warm-up and weighting rule, the sampled projection,
the optional memory bank and the rule that keeps DDP working while the term is off. Adding the term to a module::

    self.contrast = PixelContrast(in_channels=features_channels, num_classes=19)        # in __init__
    loss = loss + self.contrast(features, masks, logits, self.global_step)                # in training_step
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixcontrast.losses.contrast_settings import PixelContrastSettings
from pixcontrast.losses.memory_bank import PixelMemoryBank
from pixcontrast.losses.pixel_contrast_loss import PixelContrastLoss
from pixcontrast.losses.projection_head import ProjectionHead

__all__ = ["ContrastTerms", "PixelContrast"]


class ContrastTerms(NamedTuple):
    """What the term gives at one step: ``weighted`` to add to the total loss, ``loss`` to log.

    ``weighted``: ``loss_weight x loss``, or during the warm-up a zero that gives every head parameter a zero
    gradient. ``loss``: the unweighted scalar loss, None during the warm-up.
    """

    weighted: Tensor
    loss: Tensor | None


class PixelContrast(nn.Module):
    """Supervised pixel contrast (Wang et al., ICCV 2021) on the features of any segmentation network.

    ``forward(features, masks, logits, step)`` returns ``loss_weight x`` the loss of :class:`PixelContrastLoss`
    on the embeddings of ``features`` once ``step >= warmup_steps``. Before that the projection head does not
    run and the result is a zero that gives every head parameter a zero gradient, so DDP needs no
    ``find_unused_parameters``. With ``project_sampled_pixels=True`` (default) anchors are sampled from labels
    and predictions first and the head embeds only those pixels (plus the memory bank's new pixels): the same
    embeddings for a fraction of the cost, except that the head's BatchNorm statistics come from those pixels.
    ``memory_size > 0`` adds the memory variant's per-class pixel and segment queues (saved in checkpoints).
    ``self.settings`` is the :class:`PixelContrastSettings` the term was built with.

    Args:
        in_channels: channels ``C`` of the features the head reads.
        num_classes: ``K`` (the memory bank keeps one pair of queues per class).
        settings: the options (:class:`PixelContrastSettings`; its defaults when None).
        **options: fields of ``settings`` to override, e.g. ``proj_dim=64, warmup_steps=5000``.
    """

    def __init__(
        self, in_channels: int, num_classes: int, settings: PixelContrastSettings | None = None, **options: Any
    ) -> None:
        super().__init__()
        if settings is not None and not isinstance(settings, PixelContrastSettings):
            raise TypeError(
                f"settings must be a PixelContrastSettings, got {type(settings).__name__}; "
                "give single options by name (e.g. proj_dim=64)"
            )
        settings = (settings or PixelContrastSettings()).replace(**options)
        for name, value in [("in_channels", in_channels), ("num_classes", num_classes)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if settings.loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {settings.loss_weight}")
        if settings.warmup_steps < 0 or settings.memory_size < 0:
            raise ValueError(
                f"warmup_steps and memory_size must be >= 0, got {settings.warmup_steps} and {settings.memory_size}"
            )
        self.in_channels = in_channels
        self.settings = settings
        self.head = ProjectionHead(in_channels, settings.proj_dim)
        memory_bank = None
        if settings.memory_size > 0:
            memory_bank = PixelMemoryBank(
                num_classes,
                settings.proj_dim,
                memory_size=settings.memory_size,
                pixels_per_image=settings.pixels_per_image,
                gather_distributed=settings.gather_distributed,
                ignore_index=settings.ignore_index,
                hard_mining=settings.hard_mining,
                mining_fraction=settings.mining_fraction,
                num_hard_positives=settings.num_hard_positives,
                num_hard_negatives=settings.num_hard_negatives,
                segment_pixels=settings.segment_pixels,
                memory_dtype=settings.memory_dtype,
            )
        self.criterion = PixelContrastLoss(
            temperature=settings.temperature,
            base_temperature=settings.base_temperature,
            max_samples=settings.max_samples,
            max_views=settings.max_views,
            ignore_index=settings.ignore_index,
            memory_bank=memory_bank,
            gather_anchors=settings.gather_anchors,
            update_memory=settings.update_memory,
        )

    @property
    def memory_bank(self) -> PixelMemoryBank | None:
        """The memory bank, or None without the memory variant."""
        return self.criterion.memory_bank

    def active(self, step: int) -> bool:
        """Whether the term is on at training step ``step`` (after the warm-up)."""
        return step >= self.settings.warmup_steps

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
        if self.settings.project_sampled_pixels:
            return self.criterion(features, masks, predictions, generator, projection=self.head.project_pixels)
        return self.criterion(self.head(features), masks, predictions, generator)

    def idle(self) -> Tensor:
        """A zero that gives every head parameter a zero gradient (what the term adds during the warm-up)."""
        zero = sum(parameter.sum() for parameter in self.head.parameters()) * 0.0
        assert isinstance(zero, Tensor)  # the head has parameters: a tensor, not the 0 of an empty sum
        return zero

    def terms(
        self, features: Tensor, masks: Tensor, logits: Tensor, step: int, generator: torch.Generator | None = None
    ) -> ContrastTerms:
        """The term at ``step``: ``loss_weight x`` :meth:`loss` (or :meth:`idle` during the warm-up) and the loss.

        Takes the arguments of :meth:`loss`. Add ``weighted`` to the total loss; log ``loss`` when it is not None.
        """
        loss = self.loss(features, masks, logits, step, generator)
        return ContrastTerms(self.idle() if loss is None else self.settings.loss_weight * loss, loss)

    def forward(
        self, features: Tensor, masks: Tensor, logits: Tensor, step: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """What to add to the total loss: the ``weighted`` of :meth:`terms` (a scalar)."""
        return self.terms(features, masks, logits, step, generator).weighted

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
        settings = self.settings
        return (
            f"loss_weight={settings.loss_weight}, warmup_steps={settings.warmup_steps}, "
            f"project_sampled_pixels={settings.project_sampled_pixels}"
        )
