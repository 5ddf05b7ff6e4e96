"""Writers of tiny datasets in the exact official on-disk layouts and label encodings (imported by the tests)."""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from scipy.io import savemat

from pixcontrast.data.label_maps import COCO_STUFF_UNUSED, PASCAL_CONTEXT_59_NAMES, PASCAL_CONTEXT_59_RAW_IDS

HEIGHT, WIDTH = 32, 64
#: Image sizes (height, width) of the writers below, cycled over the images of each split.
Sizes = Sequence[tuple[int, int]]
#: stuffthingmaps values that real annotations hold (the 11 unused category ids never occur).
COCO_USED_VALUES = np.array([v for v in range(182) if v not in COCO_STUFF_UNUSED])


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (HEIGHT, WIDTH)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def write_png_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label.astype(np.uint8))


def make_cityscapes(
    root: Path, counts: dict[str, int] | None = None, seed: int = 0, sizes: Sizes = ((HEIGHT, WIDTH),)
) -> Path:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png`` (ids 0..33)."""
    rng = np.random.default_rng(seed)
    for split, count in (counts or {"train": 3, "val": 2}).items():
        for index in range(count):
            city = ("aachen", "bochum")[index % 2]
            frame = f"{city}_{index:06d}_000019"
            size = sizes[index % len(sizes)]
            write_image(root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png", rng, size)
            label = rng.integers(0, 34, size)
            write_png_label(root / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png", label)
    return root


def context_labels_text(shift: int = 0) -> str:
    """A 459-line ``labels.txt``: the 59 classes at their standard ids (+ ``shift``), filler names elsewhere."""
    names = {raw + shift: name for raw, name in zip(PASCAL_CONTEXT_59_RAW_IDS, PASCAL_CONTEXT_59_NAMES, strict=True)}
    return "".join(f"{i}: {names.get(i, f'other {i}')}\n" for i in range(1, 460))


def make_pascal_context(
    root: Path,
    release: Path,
    seed: int = 0,
    sizes: Sizes = ((HEIGHT, WIDTH),),
    splits: dict[str, list[str]] | None = None,
) -> tuple[Path, dict[str, np.ndarray]]:
    """VOC2010 under ``root/VOCdevkit/VOC2010`` and the release folder ``release/{trainval/*.mat,labels.txt}``.

    Returns the VOC2010 folder and the raw ``LabelMap`` of every id.
    """
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2010"
    splits = splits or {"train": ["2008_000002", "2008_000003", "2008_000007"], "val": ["2008_000009", "2008_000016"]}
    raw_maps = {}
    for split, ids in splits.items():
        (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for index, image_id in enumerate(ids):
            size = sizes[index % len(sizes)]
            write_image(voc / "JPEGImages" / f"{image_id}.jpg", rng, size)
            raw = rng.integers(1, 460, size).astype(np.uint16)
            raw[:4] = PASCAL_CONTEXT_59_RAW_IDS[0]  # make sure a selected class is present
            raw_maps[image_id] = raw
            (release / "trainval").mkdir(parents=True, exist_ok=True)
            savemat(release / "trainval" / f"{image_id}.mat", {"LabelMap": raw}, do_compression=True)
    (release / "labels.txt").write_text(context_labels_text())
    return voc, raw_maps


def tar_release(release: Path, target: Path) -> Path:
    """Pack the release folder as the official ``trainval.tar.gz`` (``trainval/<id>.mat``)."""
    with tarfile.open(target, "w:gz") as archive:
        archive.add(release / "trainval", arcname="trainval")
    return target


def make_coco_stuff(
    root: Path, counts: dict[str, int] | None = None, seed: int = 0, sizes: Sizes = ((HEIGHT, WIDTH),)
) -> Path:
    """``{train,val}2017/<id>.jpg`` + ``stuffthingmaps_trainval2017/{train,val}2017/<id>.png`` (used values of
    0..181, 255 unlabelled)."""
    rng = np.random.default_rng(seed)
    for split, count in (counts or {"train": 3, "val": 2}).items():
        for index in range(count):
            image_id = f"{index + (1 if split == 'train' else 100):012d}"
            size = sizes[index % len(sizes)]
            write_image(root / f"{split}2017" / f"{image_id}.jpg", rng, size)
            label = rng.choice(COCO_USED_VALUES, size)
            label[:2] = 255
            write_png_label(root / "stuffthingmaps_trainval2017" / f"{split}2017" / f"{image_id}.png", label)
    return root


def make_coco_stuff_10k(root: Path, seed: int = 0) -> Path:
    """``images/<name>.jpg``, ``annotations/<name>.mat`` (key ``S``: 0 unlabelled, used category ids of 1..182),
    ``imageLists``."""
    rng = np.random.default_rng(seed)
    lists = {"train": ["COCO_train2014_000000000077", "COCO_train2014_000000000078"],
             "test": ["COCO_train2014_000000000081"]}  # fmt: skip
    for split, names in lists.items():
        (root / "imageLists").mkdir(parents=True, exist_ok=True)
        (root / "imageLists" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        for name in names:
            write_image(root / "images" / f"{name}.jpg", rng)
            (root / "annotations").mkdir(parents=True, exist_ok=True)
            labels = rng.choice(np.append(COCO_USED_VALUES + 1, 0), (HEIGHT, WIDTH)).astype(np.uint16)
            savemat(root / "annotations" / f"{name}.mat", {"S": labels, "names": np.array(["x"], dtype=object)})
    return root


#: Colours of the three classes of :func:`make_folder` with ``colour_masks`` (and the ignore colour).
FOLDER_PALETTE = ((128, 0, 0), (0, 128, 0), (0, 0, 128))
FOLDER_IGNORE_COLOUR = (255, 255, 255)


def make_folder(
    root: Path,
    count: int = 6,
    masks: bool = True,
    colour_masks: bool = False,
    seed: int = 0,
    sizes: Sizes = ((HEIGHT, WIDTH),),
) -> Path:
    """Your own data: ``images/<nested path>/<name>.{jpg,png}`` and, with ``masks``, ``masks/<same>.png`` with class
    ids 0..2 and 255 (``colour_masks``: the same classes painted in :data:`FOLDER_PALETTE`, white = ignore)."""
    rng = np.random.default_rng(seed)
    colours = np.array([*FOLDER_PALETTE, FOLDER_IGNORE_COLOUR], dtype=np.uint8)
    for index in range(count):
        relative = Path(("field", "city/day", "city/night")[index % 3]) / f"shot_{index:03d}"
        size = sizes[index % len(sizes)]
        write_image(root / "images" / relative.with_suffix((".jpg", ".png")[index % 2]), rng, size)
        if not masks:
            continue
        label = rng.integers(0, 3, size)
        label[:, :2] = 255
        path = root / "masks" / relative.with_suffix(".png")
        if colour_masks:
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), np.ascontiguousarray(colours[np.where(label == 255, 3, label)][..., ::-1]))
        else:
            write_png_label(path, label)
    return root
