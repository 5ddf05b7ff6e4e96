"""Datasets of image / label-map files and the datamodule base shared by the real-dataset modules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pixcontrast.data.base import IGNORE_INDEX, RawSample, SegmentationDataModule, SegmentationDataset, Transform
from pixcontrast.data.io import missing_files, read_image, read_label
from pixcontrast.data.label_maps import LabelSet, check_label_set
from pixcontrast.data.transforms import WorkerSeeded, build_eval_transform, build_train_transform

#: Reads one label map file: path -> raw values (``H x W``, or ``H x W x 3`` colours).
LabelReader = Callable[[str], np.ndarray]
#: Checked mapping of a file's raw values to class ids: ``(raw, path) -> H x W`` int64 (255 = ignore); raises
#: :class:`~pixcontrast.data.label_maps.LabelValueError` on values the label set does not know.
LabelMapping = Callable[[np.ndarray, str], np.ndarray]


class FileSegmentationDataset(SegmentationDataset):
    """Image files with optional label maps, raw label values mapped (and checked) as each map is read.

    Args:
        images: image paths (any format OpenCV reads).
        labels: label-map paths, one per image; ``None`` (or a ``None`` entry) for unlabelled images, whose
            masks are all ``ignore_index``.
        names: item names (default: the image file stems).
        label_mapping: raw values -> class ids, raising on values the label set does not know (e.g. a
            :class:`~pixcontrast.data.label_maps.LabelLookup`); ``None`` keeps the raw values.
        transform: ``transform(image=..., mask=...) -> {"image", "mask"}``.
        label_reader: reads one label map (default: single-channel PNG via OpenCV).
    """

    def __init__(
        self,
        images: Sequence[str | Path],
        labels: Sequence[str | Path | None] | None = None,
        names: Sequence[str] | None = None,
        label_mapping: LabelMapping | None = None,
        transform: Transform | None = None,
        label_reader: LabelReader = read_label,
    ) -> None:
        super().__init__(transform)
        self.images = [str(path) for path in images]
        self.labels = [None if p is None else str(p) for p in labels] if labels is not None else [None] * len(images)
        self.names = list(names) if names is not None else [Path(p).stem for p in self.images]
        if not len(self.images) == len(self.labels) == len(self.names):
            raise ValueError(
                f"got {len(self.images)} images, {len(self.labels)} labels and {len(self.names)} names; "
                "they must match one to one"
            )
        self.label_mapping = label_mapping
        self.label_reader = label_reader

    def __len__(self) -> int:
        return len(self.images)

    def load_sample(self, index: int) -> RawSample:
        image = read_image(self.images[index])
        label_path = self.labels[index]
        if label_path is None:
            mask = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.int64)
        else:
            raw = self.label_reader(label_path)
            if raw.shape[:2] != image.shape[:2]:
                raise ValueError(
                    f"label map {label_path!r} is {raw.shape[1]}x{raw.shape[0]} but image {self.images[index]!r} "
                    f"is {image.shape[1]}x{image.shape[0]} (width x height); they must match"
                )
            mask = raw.astype(np.int64) if self.label_mapping is None else self.label_mapping(raw, label_path)
        return RawSample(image=image, mask=mask, name=self.names[index])


class FileSegmentationDataModule(SegmentationDataModule):
    """Base of the datamodules that read image files: transform options, layout errors.

    Subclasses set ``dataset_name``, ``layout`` (the expected tree, for error messages) and ``prepare_hint``,
    and implement :meth:`build_dataset` with :meth:`transform_for` and :meth:`layout_error`, and the class
    names. Sizes are ``(height, width)``. The transform options are documented on
    :class:`~pixcontrast.data.cityscapes.CityscapesDataModule`.
    """

    dataset_name: ClassVar[str]
    layout: ClassVar[str]
    prepare_hint: ClassVar[str] = ""

    def __init__(
        self,
        root: str,
        crop_size: tuple[int, int] = (512, 512),
        scale_range: tuple[float, float] | None = (0.5, 2.0),
        hflip: bool = True,
        photometric: bool = False,
        eval_resize: int | None = None,
        eval_crop: tuple[int, int] | None = None,
        short_side: int | None = None,
        aspect_range: tuple[float, float] | None = None,
        brightness_shift: int = 0,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        **loader_options: Any,
    ) -> None:
        super().__init__(**loader_options)
        self.root = Path(root).expanduser()
        # Built now so that bad options fail at construction, before any data is touched.
        self.train_transform = train_transform or build_train_transform(
            crop_size,
            scale_range,
            hflip,
            photometric,
            short_side=short_side,
            aspect_range=aspect_range,
            brightness_shift=brightness_shift,
        )
        self.eval_transform = eval_transform or build_eval_transform(eval_resize, eval_crop, short_side=short_side)

    def transform_for(self, split: str) -> Transform | None:
        """The (worker-seeded) transform of ``split``: the training pipeline for ``train``, else evaluation."""
        transform = self.train_transform if split == "train" else self.eval_transform
        return None if transform is None else WorkerSeeded(transform)

    def layout_error(self, problem: str) -> FileNotFoundError:
        """One error naming the problem, the expected layout and, where one exists, the prepare command."""
        hint = f"\n{self.prepare_hint.format(root=self.root)}" if self.prepare_hint else ""
        return FileNotFoundError(
            f"{self.dataset_name}: {problem}\nExpected layout under root={str(self.root)!r}:\n{self.layout}{hint}"
        )

    def check_files(self, paths: Sequence[str | Path], what: str) -> None:
        """Raise :meth:`layout_error` when any of ``paths`` is missing, naming the first and the count."""
        missing = missing_files(paths)
        if missing:
            raise self.layout_error(f"{len(missing)} of {len(paths)} {what} are missing, e.g. {missing[0]!r}")


class BenchmarkDataModule(FileSegmentationDataModule):
    """A published dataset with named label sets (``label_sets``, chosen by ``label_set``)."""

    label_sets: ClassVar[dict[str, LabelSet]]

    def __init__(self, root: str, label_set: str, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.label_set = check_label_set(self.dataset_name, label_set, self.label_sets)

    @property
    def class_names(self) -> Sequence[str]:
        return self.label_sets[self.label_set].names

    @property
    def palette(self) -> np.ndarray:
        return self.label_sets[self.label_set].palette
