"""SegmentationVisualizer: overlays, embedding plots and a confusion matrix at the end of validation.

The callback talks to the LightningModule through one hook, documented on :class:`SegmentationVisualizer`:

``visualization_outputs(batch) -> Mapping[str, Tensor]``, called in eval mode under ``torch.no_grad`` with a
batch in the batch format, unpadded (``image`` B x 3 x H x W on the module's device, ``mask`` B x H' x W' --
the image's size unless the image alone was resized for evaluation --, ``name``):

- ``prediction`` (required): B x H x W int64 class ids at the mask's size, or at the image's size (resized,
  nearest, to the mask's when an evaluation resize of the image alone made them differ). Cluster models return
  clusters already mapped to classes by their Hungarian matching (``ignore_index`` for unmatched clusters).
- ``embeddings`` (optional): B x D x h x w pixel embeddings / features, for the embedding plot.
- ``cluster_map`` (optional): B x H x W int64 raw cluster ids; when given, the embedding plot is coloured
  by cluster instead of by ground-truth class.

An empty mapping means "nothing to show yet" (e.g. PiCIE before its first clustering) and skips the epoch.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from pixcontrast.data.base import IGNORE_INDEX, default_palette, denormalize_image, pad_collate
from pixcontrast.losses.sampling import downsample_labels, gather_pixels, sample_per_group

PROJECTIONS = {"pca": None, "tsne": "sklearn", "umap": "umap"}


def confusion_counts(target: Tensor, prediction: Tensor, num_classes: int) -> Tensor:
    """``num_classes x num_classes`` int64 pixel counts (rows: ground truth, columns: prediction).

    Pixels whose target or prediction is outside ``[0, num_classes)`` (ignore, unmatched clusters) are left out.
    """
    valid = (target >= 0) & (target < num_classes) & (prediction >= 0) & (prediction < num_classes)
    index = torch.where(valid, target * num_classes + prediction, num_classes * num_classes)
    counts = torch.bincount(index.flatten(), minlength=num_classes * num_classes + 1)
    return counts[:-1].view(num_classes, num_classes)


def _size_chunks(image_sizes: Sequence[tuple[int, int]], mask_sizes: Sequence[tuple[int, int]], chunk: int) -> list:
    """Item indices in chunks of at most ``chunk`` items of one (image size, mask size), sizes in order of first
    appearance and items in order within each: the same sequence of items for any ``chunk``."""
    groups: dict[tuple[tuple[int, int], tuple[int, int]], list[int]] = {}
    for index, key in enumerate(zip(image_sizes, mask_sizes, strict=True)):
        groups.setdefault(key, []).append(index)
    return [items[start : start + chunk] for items in groups.values() for start in range(0, len(items), chunk)]


class SegmentationVisualizer(L.Callback):
    """Log pictures of what a segmentation model learned at the end of validation (rank 0 writes).

    A fixed set of ``sample_images`` validation images, spread evenly over the validation set and chosen once
    (so epochs are comparable), is run through ``module.visualization_outputs`` (see the module docstring for
    the hook) every ``every_n_epochs`` validation epochs, after the module's own ``on_validation_epoch_end``
    (so cluster models use their newest matching). From it the callback draws:

    - ``grid``: one row per image for the first ``num_images`` images: image | ground-truth overlay |
      prediction overlay | error map (wrong pixels red), with the datamodule's ``palette`` and a legend of its
      ``class_names``;
    - ``embeddings``: a 2-D projection (``projection``: ``"pca"`` via ``torch.pca_lowrank``; ``"tsne"`` needs
      scikit-learn, ``"umap"`` needs umap-learn) of at most ``max_points_per_class`` pixel embeddings per class
      (per cluster when the module returns ``cluster_map``), coloured by class (cluster);
    - ``confusion_matrix``: the row-normalised confusion matrix over the pixels of the fixed set.

    Images go to every logger that takes them (TensorBoard's ``add_image``, or a ``log_image(key, images,
    step)`` method as in the W&B logger) under ``val/segmentation_grid``, ``val/embeddings`` and
    ``val/confusion_matrix``, and as PNG files ``<name>_epoch<NNN>.png`` in ``output_dir`` (default:
    ``<trainer.log_dir>/visualizations``). Every rank runs the forward pass (so sharded strategies work);
    only global rank 0 draws and writes. With ``grid``, ``embeddings`` and ``confusion_matrix`` all off the
    callback does nothing at all. The hook sees the images unpadded, in chunks of one size of at most the
    validation batch size, and embeddings are sampled per image, so the pictures do not depend on the batch
    size; in the grid, images of different sizes are padded (bottom/right, unlabelled) to the largest. Needs a
    datamodule with ``class_names`` and ``palette`` (all pixcontrast datamodules).

    Args:
        num_images: rows of the grid (the first images of the fixed set).
        every_n_epochs: draw every this many validation epochs.
        grid: draw the image / ground truth / prediction / error grid.
        embeddings: draw the 2-D projection of pixel embeddings.
        confusion_matrix: draw the row-normalised confusion matrix.
        max_points_per_class: most embeddings projected per class (or cluster).
        sample_images: size of the fixed set of validation images.
        projection: ``"pca"``, ``"tsne"`` (scikit-learn) or ``"umap"`` (umap-learn).
        output_dir: folder of the PNG files; None: ``<trainer.log_dir>/visualizations``.
        seed: seed of the embedding sampling and of the t-SNE / UMAP projections.
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 1,
        grid: bool = True,
        embeddings: bool = True,
        confusion_matrix: bool = True,
        max_points_per_class: int = 200,
        sample_images: int = 16,
        projection: str = "pca",
        output_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_images", num_images),
            ("every_n_epochs", every_n_epochs),
            ("max_points_per_class", max_points_per_class),
            ("sample_images", sample_images),
        ):
            if value < 1:
                raise ValueError(f"SegmentationVisualizer: {name} must be >= 1, got {value}")
        if projection not in PROJECTIONS:
            raise ValueError(
                f"SegmentationVisualizer: projection must be one of {sorted(PROJECTIONS)}, got {projection!r}"
            )
        package = PROJECTIONS[projection]
        if embeddings and package is not None and importlib.util.find_spec(package) is None:
            raise ValueError(
                f"SegmentationVisualizer: projection={projection!r} needs the {package!r} package; "
                f"install it (pip install {'scikit-learn' if package == 'sklearn' else 'umap-learn'}) or use 'pca'"
            )
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.grid = grid
        self.embeddings = embeddings
        self.confusion_matrix = confusion_matrix
        self.max_points_per_class = max_points_per_class
        self.sample_images = max(sample_images, num_images) if grid else sample_images
        self.projection = projection
        self.output_dir = output_dir
        self.seed = seed
        self._fixed: dict[str, Any] | None = None

    @property
    def enabled(self) -> bool:
        return self.grid or self.embeddings or self.confusion_matrix

    # ------------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.enabled and not callable(getattr(pl_module, "visualization_outputs", None)):
            raise RuntimeError(
                f"SegmentationVisualizer needs {type(pl_module).__name__}.visualization_outputs(batch) returning a "
                "mapping with 'prediction' (B x H x W class ids); implement it or remove the callback"
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        collected = self._collect(trainer, pl_module)
        if collected is None or not trainer.is_global_zero:
            return
        # Lightning sets Trainer.datamodule at run time without declaring it
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        pictures = self.render(
            collected,
            list(datamodule.class_names),
            np.asarray(datamodule.palette),
            title=f"epoch {trainer.current_epoch}",
        )
        self._write(trainer, pictures)

    # ------------------------------------------------------------------------------------------ collecting
    def _fixed_batch(self, trainer: L.Trainer) -> dict[str, Any]:
        """The fixed validation items (CPU), loaded once and padded by :func:`~pixcontrast.data.pad_collate`:
        ``image`` N x 3 x H x W, ``mask`` N x H' x W', ``name``, ``image_size`` and ``mask_size`` (N (h, w))."""
        if self._fixed is not None:
            return self._fixed
        # Lightning sets Trainer.datamodule at run time without declaring it
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        if datamodule is None or not hasattr(datamodule, "class_names") or not hasattr(datamodule, "palette"):
            raise RuntimeError(
                "SegmentationVisualizer needs a datamodule with class_names and palette (any pixcontrast datamodule)"
            )
        dataset = getattr(datamodule, "val_dataset", None)
        if dataset is None:
            dataset = self._val_loader(trainer).dataset
        count = min(len(dataset), self.sample_images)
        indices = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
        fixed = pad_collate([dataset[i] for i in indices], datamodule.ignore_index)
        fixed["name"] = [str(name) for name in fixed.get("name", indices)]
        for key in ("image_size", "mask_size"):
            fixed[key] = [tuple(size) for size in fixed[key].tolist()]
        self._fixed = fixed
        return fixed

    @staticmethod
    def _val_loader(trainer: L.Trainer) -> Any:
        loaders = trainer.val_dataloaders
        return loaders[0] if isinstance(loaders, Sequence) else loaders

    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any] | None:
        """Run the hook over the fixed set in chunks of one size; keep grid predictions, confusion counts and
        embeddings sampled per image (so that nothing depends on the chunk size)."""
        fixed = self._fixed_batch(trainer)
        # Lightning sets Trainer.datamodule at run time without declaring it
        num_classes = len(trainer.datamodule.class_names)  # type: ignore[attr-defined]
        ignore_index = getattr(trainer.datamodule, "ignore_index", IGNORE_INDEX)  # type: ignore[attr-defined]
        chunk = getattr(self._val_loader(trainer), "batch_size", None) or 1
        generator = torch.Generator().manual_seed(self.seed)
        shown = min(self.num_images, len(fixed["name"])) if self.grid else 0
        predictions: list[Tensor] = [torch.empty(0)] * shown
        points, groups = [], []
        by_cluster = False
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                for indices in _size_chunks(fixed["image_size"], fixed["mask_size"], chunk):
                    batch = _unpadded_batch(fixed, indices, pl_module.device)
                    # a hook of the module, checked in setup; nn.Module's __getattr__ types it Tensor | Module
                    outputs = pl_module.visualization_outputs(batch)  # type: ignore[operator]
                    if not outputs:
                        return None
                    prediction = _prediction_at_mask_size(outputs.get("prediction"), batch)
                    if self.confusion_matrix:
                        confusion += confusion_counts(batch["mask"], prediction, num_classes).cpu()
                    for row, index in enumerate(indices):
                        if index < shown:
                            predictions[index] = prediction[row].cpu()
                    if self.embeddings and "embeddings" in outputs:
                        by_cluster = "cluster_map" in outputs
                        colour_by = outputs["cluster_map"] if by_cluster else batch["mask"]
                        for row in range(len(indices)):
                            sampled = self._sample_embeddings(
                                outputs["embeddings"][row : row + 1], colour_by[row : row + 1], generator, ignore_index
                            )
                            points.append(sampled[0])
                            groups.append(sampled[1])
        finally:
            pl_module.train(was_training)
        if self.embeddings and not points:
            rank_zero_warn("SegmentationVisualizer: visualization_outputs returned no 'embeddings'; no embedding plot")
        images, masks, predicted = _grid_arrays(fixed, predictions, ignore_index) if shown else (None, None, None)
        return {
            "images": images,
            "masks": masks,
            "predictions": predicted,
            "confusion": confusion if self.confusion_matrix else None,
            "points": torch.cat(points) if points else None,
            "groups": torch.cat(groups) if groups else None,
            "by_cluster": by_cluster,
            "ignore_index": ignore_index,
        }

    def _sample_embeddings(
        self, embeddings: Tensor, labels: Tensor, generator: torch.Generator, ignore_index: int
    ) -> tuple[Tensor, Tensor]:
        """At most ``max_points_per_class`` embeddings (N x D, CPU) per label, with their labels (N)."""
        num_pixels = embeddings.shape[-2] * embeddings.shape[-1]
        small = downsample_labels(labels, (embeddings.shape[-2], embeddings.shape[-1])).cpu()
        chosen = sample_per_group(small.flatten(), self.max_points_per_class, generator, ignore_index)
        image, pixel = chosen // num_pixels, chosen % num_pixels
        vectors = gather_pixels(embeddings, image.to(embeddings.device), pixel.to(embeddings.device))
        return vectors.float().cpu(), small.flatten()[chosen]

    # ------------------------------------------------------------------------------------------ drawing
    def render(
        self, collected: Mapping[str, Any], class_names: Sequence[str], palette: np.ndarray, title: str = ""
    ) -> dict[str, np.ndarray]:
        """Draw the enabled pictures from :meth:`_collect`'s output: name -> H x W x 3 uint8."""
        from pixcontrast.visualization_utils import confusion_figure, embedding_figure, project_2d, segmentation_grid

        pictures = {}
        ignore_index = collected["ignore_index"]
        if collected["predictions"] is not None:
            pictures["segmentation_grid"] = segmentation_grid(
                collected["images"],
                collected["masks"],
                collected["predictions"],
                palette,
                class_names,
                ignore_index=ignore_index,
            )
        if collected["confusion"] is not None:
            pictures["confusion_matrix"] = confusion_figure(collected["confusion"], class_names, title)
        if collected["points"] is not None:
            groups = collected["groups"]
            keep = sample_per_group(
                groups, self.max_points_per_class, torch.Generator().manual_seed(self.seed), ignore_index
            )
            points, groups = collected["points"][keep], groups[keep]
            if collected["by_cluster"]:
                count = int(groups.max()) + 1 if groups.numel() else 1
                colours, names = default_palette(count), [f"cluster {c}" for c in range(count)]
            else:
                colours, names = palette, list(class_names)
            projected = project_2d(points, self.projection, self.seed)
            pictures["embeddings"] = embedding_figure(
                projected, groups, colours, names, f"{title}, {self.projection.upper()} of pixel embeddings"
            )
        return pictures

    def _write(self, trainer: L.Trainer, pictures: Mapping[str, np.ndarray]) -> None:
        from PIL import Image

        folder = self.output_dir or os.path.join(trainer.log_dir or trainer.default_root_dir, "visualizations")
        os.makedirs(folder, exist_ok=True)
        for name, picture in pictures.items():
            Image.fromarray(picture).save(os.path.join(folder, f"{name}_epoch{trainer.current_epoch:03d}.png"))
            for logger in trainer.loggers:
                experiment = getattr(logger, "experiment", None)
                if experiment is not None and hasattr(experiment, "add_image"):
                    experiment.add_image(f"val/{name}", picture, trainer.global_step, dataformats="HWC")
                elif callable(log_image := getattr(logger, "log_image", None)):
                    log_image(key=f"val/{name}", images=[picture], step=trainer.global_step)


def _unpadded_batch(fixed: Mapping[str, Any], indices: Sequence[int], device: torch.device) -> dict[str, Any]:
    """The items ``indices`` (all of one image size and one mask size) of the padded fixed set, unpadded."""
    (height, width), (mask_height, mask_width) = fixed["image_size"][indices[0]], fixed["mask_size"][indices[0]]
    index = torch.tensor(indices)
    return {
        "image": fixed["image"][index, :, :height, :width].to(device),
        "mask": fixed["mask"][index, :mask_height, :mask_width].to(device),
        "name": [fixed["name"][i] for i in indices],
    }


def _prediction_at_mask_size(prediction: Tensor | None, batch: Mapping[str, Tensor]) -> Tensor:
    """The hook's ``prediction`` at the masks' size: given at it, or at the images' size and resized (nearest)."""
    masks, images = batch["mask"], batch["image"]
    if prediction is not None and prediction.shape == masks.shape:
        return prediction
    if prediction is not None and prediction.shape == (images.shape[0], *images.shape[-2:]):
        return F.interpolate(prediction[:, None].float(), size=masks.shape[-2:], mode="nearest-exact")[:, 0].long()
    got = None if prediction is None else tuple(prediction.shape)
    raise RuntimeError(
        f"visualization_outputs: 'prediction' must be B x H x W like the mask {tuple(masks.shape)} or the image "
        f"{tuple(images.shape[-2:])}, got {got}"
    )


def _grid_arrays(
    fixed: Mapping[str, Any], predictions: Sequence[Tensor], ignore_index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (uint8 N x H x W x 3), masks and predictions (N x H x W) of the first N fixed items at their masks'
    size (images resized to it when they were resized for evaluation), padded bottom/right (unlabelled)."""
    sizes = fixed["mask_size"][: len(predictions)]
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    images = torch.zeros(len(predictions), 3, height, width)
    masks = torch.full((len(predictions), height, width), ignore_index, dtype=torch.int64)
    predicted = masks.clone()
    for index, ((mask_h, mask_w), prediction) in enumerate(zip(sizes, predictions, strict=True)):
        image_h, image_w = fixed["image_size"][index]
        image = fixed["image"][index, :, :image_h, :image_w].float()
        if (image_h, image_w) != (mask_h, mask_w):
            image = F.interpolate(image[None], size=(mask_h, mask_w), mode="bilinear", align_corners=False)[0]
        images[index, :, :mask_h, :mask_w] = image
        masks[index, :mask_h, :mask_w] = fixed["mask"][index, :mask_h, :mask_w]
        predicted[index, :mask_h, :mask_w] = prediction
    return denormalize_image(images).permute(0, 2, 3, 1).numpy(), masks.numpy(), predicted.numpy()
