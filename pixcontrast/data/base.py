"""Shared dataset and datamodule machinery: raw samples, tensor conversion, padded evaluation batches, loaders."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
# normalised = (pixel / 255 - mean) / std = pixel * _PIXEL_SCALE - _PIXEL_SHIFT, one multiply and one subtract
_PIXEL_SCALE = 1.0 / (255.0 * torch.tensor(IMAGENET_STD).view(3, 1, 1))
_PIXEL_SHIFT = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) / torch.tensor(IMAGENET_STD).view(3, 1, 1)

Transform = Callable[..., Mapping[str, Any]]


@dataclass(frozen=True)
class RawSample:
    """One sample as stored: ``image`` H x W x 3 uint8 RGB, ``mask`` H x W int64 (255 = ignore), ``name`` file stem."""

    image: np.ndarray
    mask: np.ndarray
    name: str


def normalize_image(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Turn an H x W x 3 image with values in [0, 255] into a normalised float32 3 x H x W tensor.

    A float tensor that is already 3 x H x W is taken as normalised and returned unchanged.
    """
    if isinstance(image, torch.Tensor) and image.is_floating_point() and image.ndim == 3 and image.shape[0] == 3:
        return image
    array = torch.as_tensor(np.ascontiguousarray(image))
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {tuple(array.shape)}")
    chw = array.permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format)
    return chw.mul_(_PIXEL_SCALE).sub_(_PIXEL_SHIFT)


def denormalize_image(image: torch.Tensor) -> torch.Tensor:
    """Invert :func:`normalize_image`: ``... x 3 x H x W`` normalised float -> uint8 in [0, 255]."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    return (image.float() * std + mean).mul(255.0).round().clamp(0, 255).to(torch.uint8)


def to_tensor_item(image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor, name: str) -> dict[str, Any]:
    """Build the item dict of the batch format: normalised ``image``, int64 ``mask``, ``name``."""
    return {
        "image": normalize_image(image),
        "mask": torch.as_tensor(np.ascontiguousarray(mask), dtype=torch.int64),
        "name": name,
    }


def default_palette(num_colors: int) -> np.ndarray:
    """A deterministic, well-spread ``num_colors x 3`` uint8 palette (golden-ratio hues)."""
    import colorsys

    hues = (np.arange(num_colors) * 0.618033988749895) % 1.0
    values = 0.95 - 0.3 * ((np.arange(num_colors) // 7) % 2)
    rgb = [colorsys.hsv_to_rgb(h, 0.75, v) for h, v in zip(hues, values, strict=True)]
    return (np.asarray(rgb).reshape(num_colors, 3) * 255).round().astype(np.uint8)


_PADDED_KEYS = ("image", "mask")


def pad_collate(items: Sequence[Mapping[str, Any]], ignore_index: int = IGNORE_INDEX) -> dict[str, Any]:
    """Batch items of any sizes: images and masks padded bottom/right to the largest size in the batch.

    ``image`` (3 x h x w, normalised) is padded with 0 (the mean colour) and ``mask`` (h x w) with
    ``ignore_index``, giving ``image`` B x 3 x H x W and ``mask`` B x H' x W'; ``image_size`` and ``mask_size``
    (B x 2 int64) hold each item's unpadded (height, width) (an image may differ in size from its mask, e.g.
    after an evaluation resize of the image alone). Every other entry is collated as ``default_collate`` does
    (``name``: a list). Items of one size give the stacked tensors of ``default_collate`` plus the two sizes.
    The modules run each size group of such a batch on its own (see
    :meth:`~pixcontrast.modules.SegmentationModule.evaluation_logits`); evaluation and predict loaders use it.
    """
    if not items:
        raise ValueError("pad_collate got no items; a batch needs at least one")
    if any(key not in items[0] for key in _PADDED_KEYS):
        raise KeyError(f"pad_collate needs items with 'image' and 'mask', got keys {sorted(items[0])}")
    batch = default_collate([{k: v for k, v in item.items() if k not in _PADDED_KEYS} for item in items])
    images = [item["image"] for item in items]
    masks = [item["mask"] for item in items]
    return {
        "image": _pad_stack(images, 0.0),
        "mask": _pad_stack(masks, ignore_index),
        **batch,
        "image_size": torch.tensor([image.shape[-2:] for image in images], dtype=torch.int64),
        "mask_size": torch.tensor([mask.shape[-2:] for mask in masks], dtype=torch.int64),
    }


def _pad_stack(tensors: Sequence[torch.Tensor], fill: float) -> torch.Tensor:
    """Stack ``... x h x w`` tensors into ``N x ... x H x W``, each in the top-left corner, the rest ``fill``."""
    height = max(tensor.shape[-2] for tensor in tensors)
    width = max(tensor.shape[-1] for tensor in tensors)
    if all(tensor.shape[-2:] == (height, width) for tensor in tensors):
        return torch.stack(list(tensors))
    first = tensors[0]
    out = first.new_full((len(tensors), *first.shape[:-2], height, width), fill)
    for slot, tensor in zip(out, tensors, strict=True):
        slot[..., : tensor.shape[-2], : tensor.shape[-1]] = tensor
    return out


class SegmentationDataset(Dataset):
    """Base dataset: subclasses implement ``__len__`` and :meth:`load_sample`.

    ``transform`` is called as ``transform(image=..., mask=...)`` (albumentations-compatible) on the raw
    numpy arrays and must return a mapping with ``image`` and ``mask``.
    """

    def __init__(self, transform: Transform | None = None) -> None:
        self.transform = transform

    def __len__(self) -> int:
        raise NotImplementedError

    def load_sample(self, index: int) -> RawSample:
        """Read sample ``index`` as stored, label ids already mapped to the label set."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.load_sample(index)
        image, mask = sample.image, sample.mask
        if self.transform is not None:
            transformed = self.transform(image=image, mask=mask)
            image, mask = transformed["image"], transformed["mask"]
        return to_tensor_item(image, mask, sample.name)


class SegmentationDataModule(L.LightningDataModule):
    """Base datamodule: loaders, class names, palette and split checks.

    Subclasses set ``class_names`` (or override the property) and implement :meth:`build_dataset`.
    ``predict`` uses the validation split.

    Args:
        batch_size: images per training batch (per device under DDP).
        num_workers: loader worker processes; 0 loads in the main process.
        pin_memory: pin host memory for faster copies to the GPU.
        persistent_workers: keep the workers alive between epochs (with ``num_workers > 0``).
        drop_last: drop the last incomplete training batch (batch-norm and the contrast term prefer full ones).
        eval_batch_size: images per validation/test/predict batch (padded when sizes differ); None:
            ``batch_size``.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        drop_last: bool = True,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.drop_last = drop_last
        # map-style datasets: SegmentationDataset, except e.g. PiCIE's two-view training set
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    @property
    def class_names(self) -> Sequence[str]:
        """Names of the classes of the label set, index = class id."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_labels(self) -> bool:
        """Whether the data comes with labels (``False``: unlabelled images, every mask pixel 255)."""
        return True

    @property
    def palette(self) -> np.ndarray:
        """``num_classes x 3`` uint8 colours, index = class id."""
        return default_palette(self.num_classes)

    def build_dataset(self, split: str) -> Dataset:
        """Create the dataset of ``split`` (one of ``train``, ``val``, ``test``)."""
        raise NotImplementedError

    def _checked_dataset(self, split: str) -> Dataset:
        dataset = self.build_dataset(split)
        if len(cast(Sized, dataset)) == 0:  # map-style: sized
            raise ValueError(
                f"{type(self).__name__}: the {split!r} split is empty; check the dataset root and the split's files"
            )
        return dataset

    def setup(self, stage: str | None = None) -> None:
        needed = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("val",),
        }.get(stage or "", SPLITS)
        for split in needed:
            if getattr(self, f"{split}_dataset") is None:
                setattr(self, f"{split}_dataset", self._checked_dataset(split))

    def _loader(self, dataset: Dataset | None, split: str, train: bool) -> DataLoader:
        """Training: shuffled, ``default_collate`` (fixed crops). Evaluation and predict: in order,
        :func:`pad_collate`, so images of different sizes batch together."""
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for the {split} loader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            collate_fn=None if train else partial(pad_collate, ignore_index=self.ignore_index),
            drop_last=train and self.drop_last and len(cast(Sized, dataset)) >= self.batch_size,  # map-style: sized
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val", train=False)
