"""PixelContrastSettings: every option of the pixel-contrast term, its loss and its memory bank, declared once."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["PixelContrastSettings"]


@dataclass(frozen=True)
class PixelContrastSettings:
    """The options of :class:`~pixcontrast.losses.PixelContrast`: its own, its loss's and its memory bank's.

    One frozen record, the only place these options are declared. ``PixelContrast(in_channels, num_classes,
    settings, **options)`` builds the term from it; :class:`~pixcontrast.modules.ContrastiveSegmenter` takes it as
    one argument, ``contrast`` (``model.init_args.contrast.<option>`` in a config). Each value is checked by the
    part that uses it, when the term is built (the memory bank's options only with ``memory_size > 0``).

    Args:
        proj_dim: embedding size ``D`` of the projection head.
        loss_weight: weight of the term in the total loss (``lambda``).
        warmup_steps: training steps before the term switches on (the papers: 5000).
        project_sampled_pixels: embed only the sampled pixels (default) or the whole map first (the reference code).
        temperature: ``tau`` (0.1 in the paper's Cityscapes configs, 0.07 elsewhere).
        base_temperature: ``tau_base``.
        max_samples: anchor budget per batch (per rank).
        max_views: most views per (image, class) group (1 in the memory configs).
        ignore_index: label of unlabelled pixels.
        gather_anchors: under DDP, contrast each rank's anchors with the anchors of all ranks (not with a bank).
        update_memory: enqueue each training batch into the memory bank after its loss (False: enqueue yourself).
        memory_size: rows per class and queue of the memory bank (5000 in the paper); 0: no memory bank.
        pixels_per_image: memory bank: pixel rows written per class and image (10 in the paper).
        segment_pixels: memory bank: most random pixels averaged into a segment row.
        memory_dtype: memory bank: storage of the rows, float32 (exact) or bfloat16 (half the memory, bf16 products).
        hard_mining: memory bank: semi-hard mining of the rows each anchor uses (the paper's variant; off: all rows).
        mining_fraction: memory bank, hard mining: fraction of nearest negatives / farthest positives to draw from.
        num_hard_positives: memory bank, hard mining: positives kept per anchor.
        num_hard_negatives: memory bank, hard mining: negatives kept per anchor.
        gather_distributed: memory bank: all-gather the new rows of all DDP ranks (every rank holds the same queues).
    """

    proj_dim: int = 256
    loss_weight: float = 0.1
    warmup_steps: int = 0
    project_sampled_pixels: bool = True
    temperature: float = 0.1
    base_temperature: float = 0.07
    max_samples: int = 1024
    max_views: int = 100
    ignore_index: int = 255
    gather_anchors: bool = False
    update_memory: bool = True
    memory_size: int = 0
    pixels_per_image: int = 10
    segment_pixels: int = 64
    memory_dtype: Literal["float32", "bfloat16"] = "float32"
    hard_mining: bool = False
    mining_fraction: float = 0.1
    num_hard_positives: int = 1024
    num_hard_negatives: int = 2048
    gather_distributed: bool = True

    def replace(self, **options: Any) -> PixelContrastSettings:
        """A copy with ``options`` changed; unknown names are a ``TypeError`` naming them and their close matches."""
        names = [field.name for field in dataclasses.fields(self)]
        unknown = [name for name in options if name not in names]
        if unknown:
            raise TypeError(
                f"unknown contrast option {', '.join(_with_close_matches(name, names) for name in unknown)}; "
                "the options are the fields of PixelContrastSettings"
            )
        return dataclasses.replace(self, **options)


def _with_close_matches(name: str, names: list[str]) -> str:
    """``'name'``, followed by the close matches among ``names`` if there are any."""
    close = difflib.get_close_matches(name, names)
    return f"{name!r} (did you mean {' or '.join(map(repr, close))}?)" if close else repr(name)
