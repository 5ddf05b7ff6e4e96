"""Write predicted label maps (and colour overlays) to disk during ``trainer.predict``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter

from pixcontrast.data.base import default_palette, denormalize_image


class SegmentationPredictionWriter(BasePredictionWriter):
    """Save each predict batch as ``<output_dir>/labels/<name>.png`` and ``<output_dir>/overlays/<name>.png``.

    The module's ``predict_step`` returns a dict with ``label_map`` (B x H x W int64 class ids), ``name``
    (list of B file stems, may contain ``/`` for nested folders) and optionally ``image`` (B x 3 x H x W,
    ImageNet-normalised) and ``cluster_map`` (B x H x W cluster ids, as :class:`~pixcontrast.modules.PiCIE`
    returns). Label PNGs hold the class ids (uint8, or uint16 for more than 255 classes). Overlays blend the
    image with the class colours (``alpha`` = weight of the colours), or show the colours alone when no image is
    given. Colours come from ``trainer.datamodule.palette`` (K x 3 uint8) and fall back to a deterministic
    generated palette. A ``cluster_map`` is written the same way to ``clusters/`` and ``cluster_overlays/``, in
    generated colours (clusters have no class colours); on unlabelled data it is PiCIE's only output.
    A padded batch of images of different sizes (:func:`~pixcontrast.data.pad_collate`) names each item's own
    size in ``batch["mask_size"]`` and ``batch["image_size"]``: every map is cropped to its item's mask size
    (the image's original size) and its image cropped to the image size and resized to the map for the
    overlay, so the files are those of batches of one.

    Args:
        output_dir: folder to write into (created).
        write_overlay: also write the colour overlays.
        alpha: colour weight in the overlay, in [0, 1].
    """

    def __init__(self, output_dir: str | Path, write_overlay: bool = True, alpha: float = 0.5) -> None:
        super().__init__(write_interval="batch")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.output_dir = Path(output_dir)
        self.write_overlay = write_overlay
        self.alpha = alpha

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(prediction, Mapping) or "label_map" not in prediction:
            raise ValueError(
                "SegmentationPredictionWriter needs predict_step to return a dict with 'label_map' (B x H x W), "
                f"'name' and optionally 'image'; got {type(prediction).__name__}"
            )
        sizes = _sizes(batch, "mask_size")
        labels = _unpadded(prediction["label_map"], sizes)
        names = prediction.get("name") or [
            f"rank{trainer.global_rank}_batch{batch_idx}_{i}" for i in range(len(labels))
        ]
        if len(names) != len(labels):
            raise ValueError(f"predict_step returned {len(names)} names for {len(labels)} label maps")
        image = prediction.get("image")
        shapes = [label.shape for label in labels]
        images = None if image is None else _images_at(image, _sizes(batch, "image_size"), shapes)
        num_classes = _num_classes(trainer, pl_module)
        # Lightning sets Trainer.datamodule at run time without declaring it
        given = getattr(trainer.datamodule, "palette", None)  # type: ignore[attr-defined]
        self._write_maps("labels", "overlays", names, labels, num_classes, given, images)
        if prediction.get("cluster_map") is not None:
            clusters = _unpadded(prediction["cluster_map"], sizes)
            num_clusters = getattr(pl_module, "hparams", {}).get("num_clusters")
            self._write_maps("clusters", "cluster_overlays", names, clusters, num_clusters, None, images)

    def _write_maps(
        self,
        folder: str,
        overlay_folder: str,
        names: Sequence[str],
        labels: Sequence[np.ndarray],
        count: int | None,
        palette: np.ndarray | None,
        images: Sequence[torch.Tensor] | None,
    ) -> None:
        """Write each of ``labels`` (H x W) as an id PNG to ``folder`` and, if enabled, its overlay on the image
        (3 x H x W, normalised) to ``overlay_folder``."""
        largest = max(int(label.max(initial=0)) for label in labels)
        count = count if count is not None else largest + 1
        dtype = np.uint16 if count > 255 else np.uint8
        self._write(self.output_dir / folder, names, [label.astype(dtype) for label in labels])
        if self.write_overlay:
            colours = _palette(palette, max(count, largest + 1))
            pictures = [None] * len(labels) if images is None else images
            overlays = [
                self.overlay(label[None], colours, None if picture is None else picture[None])[0]
                for label, picture in zip(labels, pictures, strict=True)
            ]
            self._write(self.output_dir / overlay_folder, names, overlays)

    def overlay(self, labels: np.ndarray, palette: np.ndarray, image: torch.Tensor | None = None) -> np.ndarray:
        """Colour ``labels`` B x H x W with ``palette`` (K x 3 uint8), blend onto ``image`` -> B x H x W x 3 uint8."""
        colours = palette[labels].astype(np.float32)
        if image is None:
            return colours.astype(np.uint8)
        pixels = denormalize_image(image.detach()).permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
        if pixels.shape[:3] != labels.shape:
            raise ValueError(f"images {pixels.shape[:3]} and label maps {labels.shape} differ in size")
        return np.rint((1.0 - self.alpha) * pixels + self.alpha * colours).astype(np.uint8)

    @staticmethod
    def _write(folder: Path, names: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
        from PIL import Image

        for name, array in zip(names, arrays, strict=True):
            path = folder / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)


def _num_classes(trainer: L.Trainer, pl_module: L.LightningModule) -> int | None:
    """Classes of the datamodule's palette, else the module's ``num_classes`` hyperparameter, else None."""
    # Lightning sets Trainer.datamodule at run time without declaring it
    palette = getattr(trainer.datamodule, "palette", None)  # type: ignore[attr-defined]
    if palette is not None:
        return len(palette)
    hparams = getattr(pl_module, "hparams", {})
    return int(hparams["num_classes"]) if "num_classes" in hparams else None


def _palette(given: np.ndarray | None, needed: int) -> np.ndarray:
    """``given`` (e.g. the datamodule's palette), extended with generated colours to ``needed`` colours."""
    generated = default_palette(needed)
    if given is None:
        return generated
    given = np.asarray(given, dtype=np.uint8).reshape(-1, 3)
    return np.concatenate([given, generated[len(given) :]]) if len(given) < needed else given


def _sizes(batch: Any, key: str) -> list[list[int]] | None:
    """The batch's ``key`` (B x 2 unpadded sizes of :func:`~pixcontrast.data.pad_collate`) as lists, or None."""
    sizes = batch.get(key) if isinstance(batch, Mapping) else None
    return None if sizes is None else torch.as_tensor(sizes).tolist()


def _unpadded(maps: torch.Tensor, sizes: Sequence[Sequence[int]] | None) -> list[np.ndarray]:
    """``maps`` B x H x W as B int64 arrays, each cropped to its ``sizes`` entry (h, w) (``None``: uncropped)."""
    maps = maps.detach().to("cpu", torch.int64)
    if sizes is None:
        return list(maps.numpy())
    return [item[:h, :w].numpy() for item, (h, w) in zip(maps, sizes, strict=True)]


def _images_at(
    images: torch.Tensor, sizes: Sequence[Sequence[int]] | None, shapes: Sequence[Sequence[int]]
) -> list[torch.Tensor]:
    """Each image (3 x H x W of a padded batch) cropped to its ``sizes`` entry and resized (bilinear) to its
    label map's shape when the two differ (an image resized for evaluation, e.g. by ``short_side``)."""
    images = images.detach().float().cpu()
    sizes = sizes or [tuple(images.shape[-2:])] * len(images)
    out = []
    for image, (h, w), shape in zip(images, sizes, shapes, strict=True):
        image = image[:, :h, :w]
        if tuple(shape) != (h, w):
            image = F.interpolate(image[None], size=tuple(shape), mode="bilinear", align_corners=False)[0]
        out.append(image)
    return out
