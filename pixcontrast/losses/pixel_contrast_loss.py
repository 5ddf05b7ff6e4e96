"""Supervised pixel contrast (Wang et al., ICCV 2021): the loss module that ties sampling, embedding and contrast.

:class:`PixelContrastLoss` resizes the labels, samples hard anchors (:mod:`pixcontrast.losses.sampling`),
embeds them (gathered from an embedding map, or projected from features), contrasts them among themselves,
with the anchors of all ranks or with a memory bank (which owns that contrast), and enqueues the batch into
the bank. Pure torch, device-agnostic and vectorised: sampling reads one number back from the device (the
number of anchor groups); projecting only the sampled pixels with a memory bank reads one more (the number of
new memory pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from pixcontrast.distributed import all_gather_padded, is_distributed, world_info
from pixcontrast.losses.contrast import contrast_rows, supervised_contrastive_loss
from pixcontrast.losses.sampling import (
    check_maps,
    downsample_labels,
    gather_pixels,
    sample_anchor_pixels,
)

if TYPE_CHECKING:
    from pixcontrast.losses.memory_bank import PixelMemoryBank

__all__ = ["PixelContrastLoss"]

Projection = Callable[[Tensor], Tensor]
"""Map from pixel features ``N x C`` to embeddings ``N x D``, e.g. :meth:`ProjectionHead.project_pixels`."""


class PixelContrastLoss(nn.Module):
    """Pixel-contrast loss: resize labels, sample hard anchors, contrast them (with a memory bank if given).

    Args:
        temperature: ``tau`` (0.1 in the paper's Cityscapes configs, 0.07 elsewhere).
        base_temperature: ``tau_base``.
        max_samples: anchor budget per batch (per rank).
        max_views: most views per (image, class) group (1 in the memory configs).
        ignore_index: label of unlabelled pixels.
        memory_bank: optional :class:`PixelMemoryBank`; the loss then contrasts the anchors with the bank's
            filled rows (the paper's memory variant), using the bank's hard mining if enabled.
        gather_anchors: under DDP, all-gather the sampled anchors so each rank contrasts its anchors with the
            whole global batch (gradients flow to the local anchors only; remote rows are constants). Costs a
            size exchange (one extra sync) and an all-gather of ``max_samples x D`` per rank per step, and a
            ``max_samples x (world * max_samples)`` similarity matrix. Off by default (the reference contrasts
            per GPU); ignored outside DDP. Not combinable with a memory bank, whose rows are already global.
        update_memory: with a memory bank, enqueue the batch after computing the loss (training mode only),
            through :meth:`PixelMemoryBank.enqueue_samples`. Set False to call ``memory_bank.enqueue`` yourself.

    Order with a memory bank: the loss uses the bank as it is before this batch, then (if ``update_memory``
    and the module is in training mode) the batch's detached embeddings are enqueued.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        max_samples: int = 1024,
        max_views: int = 100,
        ignore_index: int = 255,
        memory_bank: PixelMemoryBank | None = None,
        gather_anchors: bool = False,
        update_memory: bool = True,
    ) -> None:
        super().__init__()
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError(f"temperatures must be > 0, got {temperature} and {base_temperature}")
        if max_samples < 1 or max_views < 1:
            raise ValueError(f"max_samples and max_views must be >= 1, got {max_samples} and {max_views}")
        if memory_bank is not None and gather_anchors:
            raise ValueError("gather_anchors has no effect with a memory bank (its rows are gathered); drop one")
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.max_samples = max_samples
        self.max_views = max_views
        self.ignore_index = ignore_index
        self.memory_bank = memory_bank
        self.gather_anchors = gather_anchors
        self.update_memory = update_memory

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        predictions: Tensor,
        generator: torch.Generator | None = None,
        *,
        projection: Projection | None = None,
    ) -> Tensor:
        """Loss of a batch.

        Args:
            embeddings: ``B x D x h x w`` pixel embeddings (L2-normalised in the paper); with ``projection``,
                the ``B x C x h x w`` features the projection reads instead.
            labels: ``B x H x W`` ground truth, at the input or the embedding resolution (nearest-downsampled
                here to ``h x w``).
            predictions: ``B x h x w`` argmax of the segmentation logits at the embedding resolution.
            generator: optional ``torch.Generator`` on the embeddings' device.
            projection: optional map from pixel features ``N x C`` to embeddings ``N x D``, such as
                :meth:`ProjectionHead.project_pixels`. Given, only the pixels the loss uses are projected,
                in one call: the anchors and, when the memory bank is updated, the bank's new pixels (see
                :meth:`PixelMemoryBank.sample_pixels`). Sampling needs only labels and predictions, so the
                result equals projecting the whole map first, except that the projection's BatchNorm
                statistics come from these pixels.

        Returns:
            scalar float32 loss (a zero connected to the graph when no anchor has a positive).
        """
        check_maps(embeddings, labels, predictions)
        small = downsample_labels(labels, (embeddings.shape[-2], embeddings.shape[-1]))
        image, pixel, anchor_labels = sample_anchor_pixels(
            small, predictions, self.max_samples, self.max_views, self.ignore_index, generator
        )
        bank = self.memory_bank if self.update_memory and self.training else None  # the bank this batch writes to
        bank_pixel, bank_valid = bank.sample_pixels(small, generator) if bank is not None else (None, None)
        anchors, samples = self._embed(embeddings, projection, image, pixel, bank_pixel, bank_valid)
        loss = self._contrast(anchors, anchor_labels, generator)
        if bank is not None:
            assert samples is not None and bank_valid is not None  # embedded for the bank's pixels above
            bank.enqueue_samples(samples, bank_valid)
        return loss

    def _contrast(self, anchors: Tensor, anchor_labels: Tensor, generator: torch.Generator | None) -> Tensor:
        """The anchors against the bank, against the anchors of every rank, or among themselves."""
        if self.memory_bank is not None:
            return self.memory_bank.contrast(anchors, anchor_labels, self.temperature, self.base_temperature, generator)
        if self.gather_anchors and is_distributed():
            return self._global_contrast(anchors, anchor_labels)
        return supervised_contrastive_loss(anchors, anchor_labels, self.temperature, self.base_temperature)

    @staticmethod
    def _embed(
        maps: Tensor,
        projection: Projection | None,
        image: Tensor,
        pixel: Tensor,
        bank_pixel: Tensor | None,
        bank_valid: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        """Embeddings of the anchors (``image`` A, ``pixel`` A x V) and of the bank's new pixels (``B x K x S``).

        Returns ``A x V x D`` anchors and ``B x K x S x D`` bank samples (None without ``bank_pixel``). With a
        projection, one gather and one projection call cover the anchors and the valid bank pixels only, so
        they share the BatchNorm statistics (reading the number of valid bank pixels is a host sync).
        """
        batch_index = torch.arange(maps.shape[0], device=maps.device)[:, None, None]
        if projection is None:
            anchors = gather_pixels(maps, image[:, None], pixel)
            return anchors, None if bank_pixel is None else gather_pixels(maps, batch_index, bank_pixel)
        num_groups, n_view = pixel.shape
        images, pixels = image.repeat_interleave(n_view), pixel.flatten()
        if bank_pixel is not None:
            assert bank_valid is not None  # given with bank_pixel
            where = bank_valid.nonzero(as_tuple=True)
            images, pixels = torch.cat([images, where[0]]), torch.cat([pixels, bank_pixel[where]])
        embedded = projection(gather_pixels(maps, images, pixels))
        anchors = embedded[: num_groups * n_view].view(num_groups, n_view, embedded.shape[1])
        if bank_pixel is None:
            return anchors, None
        assert bank_valid is not None  # given with bank_pixel
        samples = embedded.new_zeros(*bank_valid.shape, embedded.shape[1])
        samples[where] = embedded[num_groups * n_view :]
        return anchors, samples

    def _global_contrast(self, anchors: Tensor, anchor_labels: Tensor) -> Tensor:
        """Local anchors against the anchors of all ranks (remote rows are constants)."""
        features = anchors.reshape(-1, anchors.shape[-1])
        labels = anchor_labels.repeat_interleave(anchors.shape[1])
        (contrast, contrast_labels), padded = all_gather_padded([features, labels], [0.0, -1])
        local = torch.arange(features.shape[0], device=features.device) + world_info()[0] * padded
        contrast = contrast.to(features.dtype).index_copy(0, local, features)  # local rows keep their gradient
        return contrast_rows(
            features, labels, self.temperature, self.base_temperature, contrast, contrast_labels, local
        )
