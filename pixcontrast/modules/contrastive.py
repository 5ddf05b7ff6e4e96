"""ContrastiveSegmenter: cross-entropy plus supervised pixel contrast (Wang et al., ICCV 2021)."""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor

from pixcontrast.models import SegmenterOutput
from pixcontrast.modules.base import SegmentationModule
from pixcontrast.modules.pixel_contrast import PixelContrast


class ContrastiveSegmenter(SegmentationModule):
    """A :class:`SegmentationModule` trained with CE + ``loss_weight`` x pixel contrast.

    The term is a :class:`PixelContrast` (``self.contrast``): its projection head (``proj_dim`` channels,
    L2-normalised) reads the features the paper uses for the chosen encoder and runs in training only, so
    ``forward``, validation, test, predict and export never touch it. The term is switched on once
    ``global_step >= warmup_steps``, in every run (single-process too); before that the head does not run and
    gets zero gradients (DDP needs no ``find_unused_parameters``). ``memory_size > 0`` turns on the memory
    variant (per-class pixel and segment queues of that many rows): the loss contrasts with the bank as it was
    before the batch, then enqueues the batch (in training mode); ``memory_dtype="bfloat16"`` stores the bank in
    half the memory and runs its products on the bfloat16 units. ``gather_anchors=True`` contrasts the anchors
    of all GPUs together. ``project_sampled_pixels=True`` (default) embeds only the sampled pixels (see
    :class:`PixelContrast`).

    Override :meth:`contrast_inputs` to change what the term sees (another feature map, other masks) without
    copying :meth:`compute_losses`; when the features have another channel count, also build ``self.contrast``
    for it in :meth:`configure_losses`. All other arguments are those of :class:`SegmentationModule`.
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
        memory_dtype: Literal["float32", "bfloat16"] = "float32",
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, **kwargs)

    def configure_losses(self) -> None:
        """The pixel-contrast term on the map the decode head reads (with a memory bank when ``memory_size > 0``)."""
        hp = self.hparams
        self.contrast = PixelContrast(
            self.model.encoder.head_channels,
            hp.num_classes,
            hp.proj_dim,
            loss_weight=hp.loss_weight,
            warmup_steps=hp.warmup_steps,
            temperature=hp.temperature,
            base_temperature=hp.base_temperature,
            max_samples=hp.max_samples,
            max_views=hp.max_views,
            ignore_index=hp.ignore_index,
            memory_size=hp.memory_size,
            pixels_per_image=hp.pixels_per_image,
            segment_pixels=hp.segment_pixels,
            memory_dtype=hp.memory_dtype,
            gather_anchors=hp.gather_anchors,
            project_sampled_pixels=hp.project_sampled_pixels,
        )

    def contrast_inputs(self, batch: dict[str, Any], output: SegmenterOutput) -> dict[str, Tensor]:
        """What the contrast term sees: ``features`` B x C x h x w, ``masks`` B x H x W, ``logits`` B x K x h x w.

        Default: the map the decode head reads, the batch's masks and the decode head's logits.
        """
        return {"features": output.features, "masks": batch["mask"], "logits": output.logits}

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        output = self.model.forward_train(batch["image"])
        losses = self.supervised_losses(output, batch["mask"])
        contrast = self.contrast.loss(**self.contrast_inputs(batch, output), step=self.global_step)
        if contrast is None:  # warm-up: zero gradients for the idle head keep DDP's reducer complete
            losses["loss"] = losses["loss"] + self.contrast.idle()
            return losses
        losses["contrast"] = contrast
        losses["loss"] = losses["loss"] + self.contrast.loss_weight * contrast
        return losses

    def visualization_outputs(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Hook for :class:`SegmentationVisualizer`: ``prediction`` B x H x W and the ``embeddings`` B x D x h x w."""
        output = self.model.forward_train(batch["image"])
        prediction = F.interpolate(output.logits, size=batch["image"].shape[-2:], mode="bilinear", align_corners=False)
        return {"prediction": prediction.argmax(dim=1), "embeddings": self.contrast.embed(output.features)}
