"""PiCIE's two views per image: photometric transforms per view, one geometric transform per image.

View 1 is ``G(P1(x))`` resized to the network input; view 2 is ``P2(x)`` resized to the network input, and
``G`` (a :class:`~pixcontrast.losses.picie.ViewGeometry` in the batch) is applied to its feature map by
:func:`pixcontrast.losses.picie.warp_features`, so the two feature maps correspond pixel to pixel. All random
parameters come from a generator seeded by ``(seed, epoch, index)``: within an epoch the clustering pass and the
training pass see exactly the same views, in any order and in any worker.

:class:`PiCIEDataModule` wraps any :class:`~pixcontrast.data.base.SegmentationDataModule`: training items are
two-view dicts, evaluation items are the paper's center crops. Its training loader (:class:`EpochViewsLoader`)
is the one place the epoch is set: every pass over it (the clustering pass, the training pass, a resumed epoch)
first selects the views of the trainer's current epoch. The epoch lives in shared memory, so persistent
data-loader workers see the new value too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import _BaseDataLoaderIter
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from pixcontrast.data.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RawSample,
    SegmentationDataModule,
    SegmentationDataset,
)
from pixcontrast.losses.picie import ViewGeometry

# The paper's photometric parameters.
JITTER_PROB = 0.8
BRIGHTNESS_RANGE = (0.7, 1.3)
CONTRAST_RANGE = (0.7, 1.3)
SATURATION_RANGE = (0.7, 1.3)
HUE_RANGE = (-0.1, 0.1)
GRAYSCALE_PROB = 0.2
BLUR_PROB = 0.5
BLUR_SIGMA_RANGE = (0.1, 2.0)
# The paper's geometric parameters: square crop side as a fraction of the view side, flip probability.
CROP_SCALE = (0.5, 1.0)
FLIP_PROB = 0.5


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _chance(generator: torch.Generator, probability: float) -> bool:
    return torch.rand((), generator=generator).item() < probability


@dataclass(frozen=True)
class PhotometricParams:
    """One draw of PiCIE's photometric transform; ``None`` means the operation is skipped."""

    brightness: float | None
    contrast: float | None
    saturation: float | None
    hue: float | None
    grayscale: bool
    blur_sigma: float | None

    @classmethod
    def draw(cls, generator: torch.Generator) -> PhotometricParams:
        """Draw every operation independently with the paper's probabilities and ranges."""

        def jitter(bounds: tuple[float, float]) -> float | None:
            applied = _chance(generator, JITTER_PROB)
            value = _uniform(generator, *bounds)  # always drawn: the stream does not depend on outcomes
            return value if applied else None

        brightness = jitter(BRIGHTNESS_RANGE)
        contrast = jitter(CONTRAST_RANGE)
        saturation = jitter(SATURATION_RANGE)
        hue = jitter(HUE_RANGE)
        grayscale = _chance(generator, GRAYSCALE_PROB)
        blurred = _chance(generator, BLUR_PROB)
        sigma = _uniform(generator, *BLUR_SIGMA_RANGE)
        return cls(brightness, contrast, saturation, hue, grayscale, sigma if blurred else None)

    def apply(self, image: Tensor) -> Tensor:
        """Transform a ``3 x H x W`` float image in ``[0, 1]``: jitter (brightness, contrast, saturation, hue,
        in that order), grayscale, Gaussian blur (kernel ``2 * ceil(3 sigma) + 1``)."""
        if self.brightness is not None:
            image = TF.adjust_brightness(image, self.brightness)
        if self.contrast is not None:
            image = TF.adjust_contrast(image, self.contrast)
        if self.saturation is not None:
            image = TF.adjust_saturation(image, self.saturation)
        if self.hue is not None:
            image = TF.adjust_hue(image, self.hue)
        if self.grayscale:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        if self.blur_sigma is not None:
            kernel = 2 * int(np.ceil(3.0 * self.blur_sigma)) + 1
            image = TF.gaussian_blur(image, kernel_size=[kernel, kernel], sigma=[self.blur_sigma, self.blur_sigma])
        return image


@dataclass(frozen=True)
class GeometricParams:
    """One draw of PiCIE's geometric transform on a square view of side ``view_size`` pixels."""

    left: int
    top: int
    size: int
    flip: bool
    view_size: int

    @classmethod
    def draw(cls, generator: torch.Generator, view_size: int) -> GeometricParams:
        """Square crop of side ``U(0.5, 1) * view_size`` (whole pixels) at a uniform position, flip with p=0.5."""
        size = max(1, min(view_size, round(_uniform(generator, *CROP_SCALE) * view_size)))
        left = int(torch.randint(0, view_size - size + 1, (), generator=generator))
        top = int(torch.randint(0, view_size - size + 1, (), generator=generator))
        return cls(left, top, size, _chance(generator, FLIP_PROB), view_size)

    def geometry(self) -> ViewGeometry:
        """The transform as the batch carries it: crop box ``x0, y0, x1, y1`` (``4`` float32 fractions of the
        view side) and the flip (bool scalar)."""
        box = (self.left, self.top, self.left + self.size, self.top + self.size)
        return ViewGeometry(
            torch.tensor([c / self.view_size for c in box], dtype=torch.float32), torch.tensor(self.flip)
        )

    def apply(self, image: Tensor, output_size: int) -> Tensor:
        """Crop, resize to ``output_size`` (bilinear, antialiased) and flip a ``C x H x W`` image of the view."""
        image = TF.resized_crop(
            image, self.top, self.left, self.size, self.size, [output_size, output_size], antialias=True
        )
        return TF.horizontal_flip(image) if self.flip else image


def view_seed(seed: int, epoch: int, index: int) -> int:
    """The generator seed of sample ``index`` in ``epoch``: distinct per triple, stable across runs."""
    return (((seed * 1_000_003) ^ epoch) * 1_000_033 + index) % (2**63 - 1)


def _resize_uint8(image: Tensor, size: list[int] | int, interpolation: InterpolationMode) -> Tensor:
    return TF.resize(image, size, interpolation=interpolation, antialias=interpolation == InterpolationMode.BILINEAR)


def _square_crop(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[Tensor, Tensor]:
    """Resize the short side to ``size`` and center-crop ``size x size``: uint8 ``3 x S x S``, int64 ``S x S``."""
    rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    labels = torch.from_numpy(np.ascontiguousarray(mask)).to(torch.float32)[None]
    rgb = TF.center_crop(_resize_uint8(rgb, size, InterpolationMode.BILINEAR), [size, size])
    labels = TF.center_crop(TF.resize(labels, size, interpolation=InterpolationMode.NEAREST_EXACT), [size, size])
    return rgb, labels[0].to(torch.int64)


def _normalize(image: Tensor) -> Tensor:
    """``3 x H x W`` float in ``[0, 1]`` -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image - mean) / std


class CenterCropDataset(SegmentationDataset):
    """Any segmentation dataset seen through a short-side resize to ``size`` and a ``size x size`` center crop.

    The evaluation protocol of PiCIE (``size=320``). Items are the usual batch-format dicts (``image``
    normalised ``3 x size x size``, ``mask`` ``size x size``, ``name``).
    """

    def __init__(self, dataset: SegmentationDataset, size: int) -> None:
        super().__init__(transform=None)
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.dataset = dataset
        self.size = size

    def __len__(self) -> int:
        return len(self.dataset)

    def load_sample(self, index: int) -> RawSample:
        sample = self.dataset.load_sample(index)
        image, mask = _square_crop(sample.image, sample.mask, self.size)
        return RawSample(image.permute(1, 2, 0).numpy(), mask.numpy(), sample.name)


class PiCIEViews(Dataset):
    """Two-view training items for PiCIE from any :class:`SegmentationDataset` (through ``load_sample``).

    Args:
        dataset: the source dataset; its own ``transform`` is not used.
        view_size: side of the square view the transforms work on (short-side resize + center crop; paper 640).
        input_size: side of both network inputs (paper 320).
        seed: base seed of the per-sample generators.

    Items: ``image1`` ``3 x S x S`` (view 1: ``G(P1(x))``), ``image2`` ``3 x S x S`` (view 2: ``P2(x)``), both
    normalised with ``S = input_size``; ``geometry`` (see :meth:`GeometricParams.geometry`); ``mask``
    ``S x S`` int64 (labels of view 2, for visualisation only); ``name``; ``index``.
    """

    def __init__(
        self, dataset: SegmentationDataset, view_size: int = 640, input_size: int = 320, seed: int = 0
    ) -> None:
        if view_size < 2 or input_size < 2:
            raise ValueError(f"view_size and input_size must be >= 2, got {view_size} and {input_size}")
        self.dataset = dataset
        self.view_size = view_size
        self.input_size = input_size
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the views of ``epoch`` (shared with data-loader worker processes)."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def draw_params(self, index: int) -> tuple[GeometricParams, PhotometricParams, PhotometricParams]:
        """The random parameters of item ``index`` in the current epoch: ``G``, ``P1``, ``P2``."""
        generator = torch.Generator().manual_seed(view_seed(self.seed, self.epoch, index))
        geometric = GeometricParams.draw(generator, self.view_size)
        return geometric, PhotometricParams.draw(generator), PhotometricParams.draw(generator)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset.load_sample(index)
        image, mask = _square_crop(sample.image, sample.mask, self.view_size)
        image = image.float().div_(255.0)
        geometric, photometric1, photometric2 = self.draw_params(index)
        view1 = geometric.apply(photometric1.apply(image), self.input_size)
        view2 = TF.resize(photometric2.apply(image), [self.input_size] * 2, antialias=True)
        mask = TF.resize(mask[None], [self.input_size] * 2, interpolation=InterpolationMode.NEAREST_EXACT)[0]
        return {
            "image1": _normalize(view1.clamp(0.0, 1.0)),
            "image2": _normalize(view2.clamp(0.0, 1.0)),
            "geometry": geometric.geometry(),
            "mask": mask,
            "name": sample.name,
            "index": index,
        }


class PiCIEDataModule(SegmentationDataModule):
    """Turn any segmentation datamodule into PiCIE's: two-view training items, center-cropped evaluation.

    Loader settings (``batch_size``, ``num_workers``, ...) and the label set come from the wrapped datamodule.

    Args:
        datamodule: the dataset's datamodule (e.g. ``COCOStuffDataModule(label_set="27")``).
        view_size: side of the square view before the transforms (paper 640).
        input_size: side of the network inputs in training (paper 320).
        eval_size: short-side resize and center crop for validation, test and predict (paper 320).
        seed: base seed of the views.
    """

    def __init__(
        self,
        datamodule: SegmentationDataModule,
        view_size: int = 640,
        input_size: int = 320,
        eval_size: int = 320,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=datamodule.batch_size,
            num_workers=datamodule.num_workers,
            pin_memory=datamodule.pin_memory,
            persistent_workers=datamodule.persistent_workers,
            drop_last=datamodule.drop_last,
            eval_batch_size=datamodule.eval_batch_size,
        )
        for label, value in (("view_size", view_size), ("input_size", input_size), ("eval_size", eval_size)):
            if value < 2:
                raise ValueError(f"{label} must be >= 2, got {value}")
        self.datamodule = datamodule
        self.view_size = view_size
        self.input_size = input_size
        self.eval_size = eval_size
        self.seed = seed

    @property
    def class_names(self):
        return self.datamodule.class_names

    @property
    def palette(self) -> np.ndarray:
        return self.datamodule.palette

    @property
    def has_labels(self) -> bool:
        return self.datamodule.has_labels

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def build_dataset(self, split: str) -> SegmentationDataset | PiCIEViews:
        dataset = self._inner_dataset(split)
        if split == "train":
            return PiCIEViews(dataset, self.view_size, self.input_size, self.seed)
        return CenterCropDataset(dataset, self.eval_size)

    def train_dataloader(self) -> EpochViewsLoader:
        """The usual training loader as an :class:`EpochViewsLoader` that follows the trainer's current epoch."""
        return EpochViewsLoader.like(super().train_dataloader(), epoch=self._trainer_epoch)

    def train_eval_dataloader(self) -> DataLoader:
        """The training images with their masks through the evaluation transform (short side to ``eval_size``,
        center crop), in order: what ``FreshClusterEvaluation`` clusters and ``LinearProbe`` trains on."""
        dataset = CenterCropDataset(self._inner_dataset("train"), self.eval_size)
        return self._loader(dataset, "train", train=False)

    def _inner_dataset(self, split: str) -> SegmentationDataset:
        """The wrapped datamodule's dataset of ``split`` (a benchmark or folder datamodule: a SegmentationDataset)."""
        dataset = self.datamodule.build_dataset(split)
        assert isinstance(dataset, SegmentationDataset)
        return dataset

    def _trainer_epoch(self) -> int | None:
        return None if self.trainer is None else self.trainer.current_epoch


class EpochViewsLoader(DataLoader):
    """A loader of :class:`PiCIEViews` that selects the views of ``epoch()`` each time a pass over it starts.

    Every pass (``iter``) first calls ``dataset.set_epoch(epoch())``, so the clustering pass and the training
    pass of an epoch, and a run resumed inside an epoch, read the same views without any epoch hook; ``epoch()``
    returning None (no trainer) keeps the dataset's epoch. Other arguments are the :class:`DataLoader`'s (a
    subclass, so Lightning can put a distributed sampler in it).
    """

    dataset: PiCIEViews

    def __init__(self, dataset: PiCIEViews, *args: Any, epoch: Callable[[], int | None], **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self.epoch = epoch

    @classmethod
    def like(cls, loader: DataLoader, epoch: Callable[[], int | None]) -> EpochViewsLoader:
        """A loader with the dataset and every setting of ``loader`` (built with ``batch_size``, not a
        ``batch_sampler``): batch size, sampler (shuffled or not), collate function, workers, ..."""
        settings = {
            name: getattr(loader, name)
            for name in inspect.signature(DataLoader).parameters
            if name not in ("dataset", "shuffle", "batch_sampler")  # the sampler carries the shuffling
        }
        dataset = loader.dataset
        assert isinstance(dataset, PiCIEViews)  # the training loader of PiCIEDataModule
        return cls(dataset, epoch=epoch, **settings)

    def __iter__(self) -> _BaseDataLoaderIter:
        epoch = self.epoch()
        if epoch is not None:
            self.dataset.set_epoch(epoch)
        return super().__iter__()
