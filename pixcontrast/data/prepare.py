"""Dataset preparation behind ``pixcontrast prepare <dataset>``: parallel, idempotent converters.

- ``cityscapes --root R``: write ``*_gtFine_labelTrainIds.png`` next to every ``*_gtFine_labelIds.png``.
- ``pascal-context --root R --annotations F``: convert the PASCAL-Context release (``trainval.tar.gz``, or the
  folder it unpacks to) into ``VOC2010/SegmentationClassContext/<id>.png`` (0 = background, 1..59 = the 59
  standard classes), reading the ``.mat`` files with scipy (no Detail API needed).
- ``coco-stuff --root R --curate``: write IIC's curated image list (>= 360 px sides, >= 75 % stuff pixels).

Existing outputs are kept unless ``--overwrite`` is given; outputs are written atomically.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import re
import sys
import tarfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pixcontrast.data.base import IGNORE_INDEX
from pixcontrast.data.cityscapes import LABEL_ID_SUFFIX, TRAIN_ID_SUFFIX, CityscapesDataModule
from pixcontrast.data.coco_stuff import LABEL_DIR as COCO_LABEL_DIR
from pixcontrast.data.coco_stuff import COCOStuffDataModule
from pixcontrast.data.files import FileSegmentationDataModule
from pixcontrast.data.io import apply_lut, missing_files, read_label, write_label
from pixcontrast.data.label_maps import (
    CITYSCAPES_LOOKUPS,
    COCO_STUFF_FINE_TO_COARSE,
    PASCAL_CONTEXT_59_NAMES,
    PASCAL_CONTEXT_59_RAW_IDS,
)
from pixcontrast.data.pascal_context import LABEL_DIR as CONTEXT_LABEL_DIR
from pixcontrast.data.pascal_context import PascalContextDataModule, find_voc_root

T = TypeVar("T")
R = TypeVar("R")


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def run_parallel(function: Callable[[T], R], items: Sequence[T], workers: int | None, description: str) -> list[R]:
    """``[function(item) for item in items]`` over ``workers`` processes (default: all cores), with a
    progress bar on stderr. ``function`` must be a module-level function (it is pickled)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    pool = None
    if workers == 1 or len(items) < 2:
        results: Iterable[R] = map(function, items)
    else:
        # Forked workers start cheaply; map() submits everything now, so they fork before the progress
        # bar starts its thread.
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        pool = ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=context)
        results = pool.map(function, items, chunksize=max(1, min(64, len(items) // (4 * workers))))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    collected = []
    try:
        with Progress(*columns, console=Console(stderr=True)) as progress:
            task = progress.add_task(description, total=len(items))
            for result in results:
                collected.append(result)
                progress.advance(task)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return collected


def _layout_error(module: type[FileSegmentationDataModule], root: Path, problem: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{module.dataset_name}: {problem}\nExpected layout under root={str(root)!r}:\n{module.layout}"
    )


# ---------------------------------------------------------------------------------------------------- Cityscapes
def _write_train_ids(task: tuple[str, str]) -> None:
    source, target = task
    write_label(target, CITYSCAPES_LOOKUPS["19"](read_label(source), source))


def prepare_cityscapes(root: str | Path, workers: int | None = None, overwrite: bool = False) -> int:
    """Write ``<frame>_gtFine_labelTrainIds.png`` (train ids, 255 = ignore) next to each
    ``<frame>_gtFine_labelIds.png`` under ``root/gtFine``; returns the number of files written."""
    root = Path(root).expanduser()
    sources = sorted(str(p) for p in (root / "gtFine").glob(f"*/*/*{LABEL_ID_SUFFIX}"))
    if not sources:
        raise _layout_error(CityscapesDataModule, root, f"no *{LABEL_ID_SUFFIX} files under {str(root / 'gtFine')!r}")
    targets = [source[: -len(LABEL_ID_SUFFIX)] + TRAIN_ID_SUFFIX for source in sources]
    todo = set(targets if overwrite else missing_files(targets))
    tasks = [(s, t) for s, t in zip(sources, targets, strict=True) if t in todo]
    _log(f"Cityscapes: {len(sources)} label maps, {len(sources) - len(tasks)} already converted")
    run_parallel(_write_train_ids, tasks, workers, "labelTrainIds")
    return len(tasks)


# ----------------------------------------------------------------------------------------------- PASCAL-Context
def _normalize_name(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def parse_context_labels(text: str) -> dict[str, int]:
    """Parse the release's ``labels.txt`` (``"<id>: <name>"`` per line) into normalised name -> raw id."""
    table = {}
    for line in text.splitlines():
        match = re.match(r"\s*(\d+)\s*:\s*(.+?)\s*$", line)
        if match:
            table[_normalize_name(match.group(2))] = int(match.group(1))
    if not table:
        raise ValueError("the PASCAL-Context labels file has no '<id>: <name>' lines")
    return table


def context_lut(labels_text: str | None = None) -> np.ndarray:
    """Raw category id (0..459) -> prepared value: 1..59 for the 59 standard classes, 0 for all others.

    With ``labels_text`` (the release's ``labels.txt``) the 59 classes are found by name; without it the
    standard raw ids are used.
    """
    if labels_text is None:
        raw_ids = list(PASCAL_CONTEXT_59_RAW_IDS)
    else:
        table = parse_context_labels(labels_text)
        missing = [name for name in PASCAL_CONTEXT_59_NAMES if _normalize_name(name) not in table]
        if missing:
            raise ValueError(f"the PASCAL-Context labels file lacks {len(missing)} of the 59 classes: {missing}")
        raw_ids = [table[_normalize_name(name)] for name in PASCAL_CONTEXT_59_NAMES]
    lut = np.zeros(max(460, max(raw_ids) + 1), dtype=np.uint8)
    lut[raw_ids] = np.arange(1, 60, dtype=np.uint8)
    return lut


def _convert_context(task: tuple[str, str | bytes, str, np.ndarray]) -> None:
    name, source, target, lut = task
    from scipy.io import loadmat

    try:
        label_map = loadmat(io.BytesIO(source) if isinstance(source, bytes) else source)["LabelMap"]
    except KeyError:
        raise ValueError(f"{name!r} has no 'LabelMap' variable; is it a PASCAL-Context annotation?") from None
    except Exception as error:
        raise RuntimeError(f"cannot read PASCAL-Context annotation {name!r}: {error}") from error
    write_label(target, apply_lut(label_map, lut, outside=IGNORE_INDEX))


def _context_sources(annotations: Path, wanted: Callable[[str], bool]) -> tuple[list[tuple[str, Any]], str | None]:
    """``(name, path-or-bytes)`` of the ``.mat`` files whose stem is ``wanted``, and the labels.txt text if found."""
    if annotations.is_dir():
        mats = sorted(annotations.glob("*.mat")) or sorted(annotations.glob("trainval/*.mat"))
        candidates = (annotations / "labels.txt", annotations.parent / "labels.txt")
        labels_file = next((path for path in candidates if path.is_file()), None)
        text = labels_file.read_text(encoding="utf-8") if labels_file else None
        return [(str(p), str(p)) for p in mats if wanted(p.stem)], text
    if not tarfile.is_tarfile(annotations):
        raise ValueError(f"--annotations {str(annotations)!r} is neither a folder nor a tar archive")
    sources, text = [], None
    with tarfile.open(annotations) as archive:
        for member in archive:
            path = Path(member.name)
            if member.isfile() and path.name == "labels.txt":
                text = _member_bytes(archive, member).decode("utf-8")
            elif member.isfile() and path.suffix == ".mat" and wanted(path.stem):
                sources.append((f"{annotations}:{member.name}", _member_bytes(archive, member)))
    sibling = annotations.parent / "labels.txt"
    if text is None and sibling.is_file():
        text = sibling.read_text(encoding="utf-8")
    return sources, text


def _member_bytes(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The contents of ``member``, a regular file of ``archive``."""
    handle = archive.extractfile(member)
    assert handle is not None  # None only for members that are not regular files
    return handle.read()


def prepare_pascal_context(
    root: str | Path,
    annotations: str | Path,
    labels: str | Path | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> int:
    """Convert the PASCAL-Context release into ``<VOC2010>/SegmentationClassContext/<id>.png``.

    Args:
        root: VOC2010 folder (or a folder holding ``VOCdevkit/VOC2010``).
        annotations: ``trainval.tar.gz`` of the release, or the folder it unpacks to (``trainval/*.mat``).
        labels: the release's ``labels.txt`` (default: looked up inside / next to ``annotations``; without it
            the standard raw ids of the 59 classes are used).
    Returns the number of label maps written.
    """
    root, annotations = Path(root).expanduser(), Path(annotations).expanduser()
    voc = find_voc_root(root)
    if voc is None:
        raise _layout_error(PascalContextDataModule, root, "no VOC2010 JPEGImages folder found")
    if not annotations.exists():
        raise FileNotFoundError(
            f"--annotations {str(annotations)!r} does not exist; pass trainval.tar.gz of the "
            "PASCAL-Context release or the folder it unpacks to"
        )
    output = voc / CONTEXT_LABEL_DIR
    existing = set() if overwrite or not output.is_dir() else {p.stem for p in output.glob("*.png")}
    sources, text = _context_sources(annotations, lambda stem: stem not in existing)
    if labels is not None:
        text = Path(labels).expanduser().read_text(encoding="utf-8")
    if text is None:
        _log("PASCAL-Context: no labels.txt found; using the standard raw ids of the 59 classes")
    if not sources and not existing:
        raise FileNotFoundError(f"no .mat annotations found in {str(annotations)!r} (expected trainval/<id>.mat)")
    lut = context_lut(text)
    tasks = [(name, source, str(output / f"{Path(name).stem}.png"), lut) for name, source in sources]
    _log(f"PASCAL-Context: {len(tasks)} annotations to convert, {len(existing)} already converted")
    run_parallel(_convert_context, tasks, workers, CONTEXT_LABEL_DIR)
    return len(tasks)


# ---------------------------------------------------------------------------------------------------- COCO-Stuff
#: The fine classes (stuffthingmaps values) of the 15 stuff supercategories (coarse ids 12..26 of COCO-Stuff-27).
STUFF_FINE_VALUES = np.array([fine for fine, coarse in enumerate(COCO_STUFF_FINE_TO_COARSE) if coarse >= 12])
#: The file name of the curated lists of IIC (xu-ji/IIC), which PiCIE ships under ``curated/<split>2017/``.
CURATED_LIST_NAME = "Coco164kFull_Stuff_Coarse_7.txt"


def stuff_fraction(path: str) -> tuple[float, int, int]:
    """Fraction of ALL ``h x w`` pixels of a stuffthingmap (unlabelled ones included) whose value is a fine class
    of a stuff supercategory, with the map's height and width."""
    label = read_label(path)
    stuff = np.isin(label, STUFF_FINE_VALUES).sum()
    return float(stuff / label.size), label.shape[0], label.shape[1]


def curate_coco_stuff(
    root: str | Path,
    split: str = "train",
    min_stuff: float = 0.75,
    min_size: int = 360,
    output: str | Path | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write IIC's curated list of the ``split`` images, one id per line, to ``output`` (default
    ``<root>/curated/<split>2017/Coco164kFull_Stuff_Coarse_7.txt``, where PiCIE reads the official list); returns
    its path. An image is kept when both sides are at least ``min_size`` pixels and at least ``min_stuff`` of all
    its pixels belong to the stuff supercategories (xu-ji/IIC ``cocostuff_curate.py``: 0.75 and 360)."""
    root = Path(root).expanduser()
    if split not in ("train", "val"):
        raise ValueError(f"--split must be 'train' or 'val', got {split!r}")
    if not 0.0 <= min_stuff <= 1.0:
        raise ValueError(f"--min-stuff must be in [0, 1], got {min_stuff}")
    if min_size < 0:
        raise ValueError(f"--min-size must be >= 0 pixels, got {min_size}")
    output = Path(output).expanduser() if output else root / "curated" / f"{split}2017" / CURATED_LIST_NAME
    if output.exists() and not overwrite:
        _log(f"COCO-Stuff: {output} exists; keeping it (pass --overwrite to rebuild)")
        return output
    folder = root / COCO_LABEL_DIR / f"{split}2017"
    paths = sorted(str(p) for p in folder.glob("*.png"))
    if not paths:
        raise _layout_error(COCOStuffDataModule, root, f"no label maps in {str(folder)!r}")
    measured = run_parallel(stuff_fraction, paths, workers, f"stuff fraction {split}2017")
    ids = [
        Path(path).stem
        for path, (fraction, height, width) in zip(paths, measured, strict=True)
        if fraction >= min_stuff and min(height, width) >= min_size
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    temporary.write_text("".join(f"{image_id}\n" for image_id in ids), encoding="utf-8")
    os.replace(temporary, output)
    _log(
        f"COCO-Stuff: {len(ids)} of {len(paths)} {split} images are >= {min_size} px and >= {min_stuff:.0%} stuff "
        f"-> {output}"
    )
    return output


# ----------------------------------------------------------------------------------------------------------- CLI
def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="dataset root, as the official download unpacks")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Fill ``parser`` (or a new ``pixcontrast prepare`` parser) with the dataset subcommands.

    Parsed arguments carry ``handler``: ``args.handler(args)`` runs the command.
    """
    parser = parser or argparse.ArgumentParser(prog="pixcontrast prepare", description=__doc__.split("\n")[0])
    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    cityscapes = datasets.add_parser("cityscapes", help="write *_gtFine_labelTrainIds.png")
    _add_common(cityscapes)
    cityscapes.set_defaults(handler=lambda a: prepare_cityscapes(a.root, a.workers, a.overwrite))

    context = datasets.add_parser("pascal-context", help="convert the PASCAL-Context .mat release to PNG")
    _add_common(context)
    context.add_argument("--annotations", required=True, help="trainval.tar.gz of the release, or its folder")
    context.add_argument("--labels", default=None, help="the release's labels.txt (default: found automatically)")
    context.set_defaults(
        handler=lambda a: prepare_pascal_context(a.root, a.annotations, a.labels, a.workers, a.overwrite)
    )

    coco = datasets.add_parser("coco-stuff", help="build the curated (mostly stuff) image list")
    _add_common(coco)
    coco.add_argument("--curate", action="store_true", required=True, help="write the curated image list")
    coco.add_argument("--split", choices=("train", "val"), default="train")
    coco.add_argument("--min-stuff", type=float, default=0.75, help="minimum stuff fraction of all pixels")
    coco.add_argument("--min-size", type=int, default=360, help="minimum height and width in pixels")
    coco.add_argument(
        "--output", default=None, help=f"list path (default: <root>/curated/<split>2017/{CURATED_LIST_NAME})"
    )
    coco.set_defaults(
        handler=lambda a: curate_coco_stuff(a.root, a.split, a.min_stuff, a.min_size, a.output, a.workers, a.overwrite)
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pixcontrast prepare``: ``argv`` are the arguments after ``prepare``."""
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
