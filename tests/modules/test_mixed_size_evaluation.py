"""Evaluation batches of images of different sizes: metrics, written predictions and pictures at eval batch size 4
equal those at batch size 1, in every datamodule that yields images of different sizes, with and without the
evaluation short-side resize (scored at the label's own resolution)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dataset_layouts import make_cityscapes, make_coco_stuff, make_folder, make_pascal_context
from PIL import Image
from tiny_runs import quiet_trainer

from pixcontrast.callbacks import SegmentationPredictionWriter, SegmentationVisualizer
from pixcontrast.data import (
    CityscapesDataModule,
    COCOStuffDataModule,
    FolderSegmentationDataModule,
    PascalContextDataModule,
)
from pixcontrast.data.prepare import prepare_pascal_context
from pixcontrast.modules import SegmentationModule

SIZES = ((32, 64), (24, 40), (40, 28))  # (height, width), cycled over the 5 validation images: A B C A B
VAL_IDS = ["2008_000009", "2008_000016", "2008_000021", "2008_000023", "2008_000028"]


def dataset_factory(name: str, root: Path):
    """Write the dataset ``name`` in its official layout with 5 validation images of 3 sizes; return a function
    building its datamodule from options."""
    if name == "cityscapes":  # eval_resize off: full-size evaluation
        make_cityscapes(root, counts={"train": 1, "val": 5}, sizes=SIZES)
        return lambda **options: CityscapesDataModule(str(root), **options)
    if name == "pascal_context":
        voc, _ = make_pascal_context(root, root / "release", sizes=SIZES, splits={"train": VAL_IDS[:1], "val": VAL_IDS})
        prepare_pascal_context(voc, root / "release", workers=1)
        return lambda **options: PascalContextDataModule(str(voc), **options)
    if name == "coco_stuff":
        make_coco_stuff(root, counts={"train": 1, "val": 5}, sizes=SIZES)
        return lambda **options: COCOStuffDataModule(str(root), **options)
    make_folder(root, count=5, sizes=SIZES)
    names = ["a", "b", "c"]
    return lambda **options: FolderSegmentationDataModule(
        str(root), class_names=names, val_images="images", val_masks="masks", **options
    )


def _module(num_classes: int) -> SegmentationModule:
    torch.manual_seed(0)
    return SegmentationModule(num_classes=num_classes, encoder="resnet18", head="fcn", head_channels=16).eval()


def _evaluate(module, datamodule, out: Path, pictures: bool) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Validation metrics, then every file that validation (pictures) and predict (label maps) write."""
    callbacks: list[L.Callback] = [SegmentationPredictionWriter(out / "predictions")]
    if pictures:
        callbacks.append(
            SegmentationVisualizer(num_images=5, sample_images=5, embeddings=False, output_dir=str(out / "pictures"))
        )
    trainer = quiet_trainer(callbacks=callbacks)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = {key: value.clone() for key, value in trainer.callback_metrics.items() if key != "val/loss"}
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    files = {str(path.relative_to(out)): np.asarray(Image.open(path)) for path in sorted(out.rglob("*.png"))}
    return metrics, files


def _expected_pixel_accuracy(module: SegmentationModule, dataset) -> torch.Tensor:
    """Each image alone, its logits upsampled to its mask's (the label's) size: correct / labelled pixels."""
    correct = labelled = 0
    with torch.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            logits = module.predict_logits(item["image"][None])
            logits = F.interpolate(logits, size=item["mask"].shape, mode="bilinear", align_corners=False)
            valid = item["mask"] != 255
            correct += int((logits[0].argmax(dim=0) == item["mask"])[valid].sum())
            labelled += int(valid.sum())
    return torch.tensor(correct / labelled)


@pytest.mark.parametrize(
    ("name", "short_side", "pictures"),
    [
        ("folder", None, True),
        ("folder", 20, True),
        ("cityscapes", None, False),
        ("pascal_context", None, False),
        ("pascal_context", 20, False),
        ("coco_stuff", None, False),
    ],
)
def test_batch_size_four_equals_batch_size_one(name, short_side, pictures, tmp_path) -> None:
    """The pictures do not depend on the dataset: checked on the folder, with and without short_side."""
    build = dataset_factory(name, tmp_path / name)
    options = dict(batch_size=1, num_workers=0, short_side=short_side)
    module = _module(build(**options).num_classes)
    metrics_one, files_one = _evaluate(module, build(eval_batch_size=1, **options), tmp_path / "one", pictures)
    four = build(eval_batch_size=4, **options)
    four.setup("validate")
    batch = next(iter(four.val_dataloader()))
    assert batch["image"].shape[0] == 4 and len({tuple(size) for size in batch["image_size"].tolist()}) == 3
    metrics_four, files_four = _evaluate(module, four, tmp_path / "four", pictures)

    assert metrics_one.keys() == metrics_four.keys() and {"val/miou", "val/pixel_accuracy"} <= metrics_one.keys()
    for key, value in metrics_one.items():
        torch.testing.assert_close(metrics_four[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
    torch.testing.assert_close(metrics_one["val/pixel_accuracy"], _expected_pixel_accuracy(module, four.val_dataset))

    assert files_one.keys() == files_four.keys()
    assert sum(key.startswith("predictions/labels/") for key in files_one) == 5
    drawn = {"pictures/segmentation_grid_epoch000.png", "pictures/confusion_matrix_epoch000.png"}
    assert drawn <= files_one.keys() if pictures else not drawn & files_one.keys()
    for key, array in files_one.items():
        np.testing.assert_array_equal(files_four[key], array, err_msg=key)
    for index in range(len(four.val_dataset)):  # each prediction at its image's own (the label's) size
        item = four.val_dataset[index]
        assert files_one[f"predictions/labels/{item['name']}.png"].shape == tuple(item["mask"].shape)
        assert files_one[f"predictions/overlays/{item['name']}.png"].shape == (*item["mask"].shape, 3)
        if short_side is not None:
            assert min(item["image"].shape[-2:]) == short_side and item["image"].shape[-2:] != item["mask"].shape
