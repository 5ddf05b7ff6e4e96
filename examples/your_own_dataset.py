"""Train on your own dataset: a ``SegmentationDataModule`` subclass in a few lines.

Expected layout (any image format OpenCV reads; masks are PNG class ids, 255 = unlabelled)::

    root/train/images/x.jpg   root/train/masks/x.png
    root/val/images/y.jpg     root/val/masks/y.png

Run: python examples/your_own_dataset.py  (writes a tiny dataset in that layout to a temporary folder, then
trains ContrastiveSegmenter on it for one short epoch)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import lightning as L
import numpy as np

from pixcontrast.data.base import SegmentationDataModule
from pixcontrast.data.files import FileSegmentationDataset
from pixcontrast.losses import PixelContrastSettings
from pixcontrast.modules import ContrastiveSegmenter


class MyDataModule(SegmentationDataModule):
    """``root/<split>/images/*`` with same-stem ``root/<split>/masks/*.png``; the loader options of the base."""

    class_names = ("background", "square", "disc")

    def __init__(self, root: str, **loader_options) -> None:
        super().__init__(**loader_options)
        self.root = Path(root)

    def build_dataset(self, split: str) -> FileSegmentationDataset:
        images = sorted((self.root / split / "images").glob("*"))
        return FileSegmentationDataset(images, [self.root / split / "masks" / f"{p.stem}.png" for p in images])


def write_toy_dataset(root: Path, size: int = 96) -> None:
    """A few images with a square (class 1) and a disc (class 2) on a background, in the layout above."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for index in range(count):
            mask = np.zeros((size, size), np.uint8)
            x, y = rng.integers(0, size // 2, 2)
            mask[y : y + size // 3, x : x + size // 3] = 1
            cv2.circle(mask, tuple(int(v) for v in rng.integers(size // 4, 3 * size // 4, 2)), size // 6, 2, -1)
            image = np.array([[40, 40, 40], [200, 60, 60], [60, 60, 200]], np.uint8)[mask] + rng.integers(
                0, 30, (size, size, 3), dtype=np.uint8
            )
            cv2.imwrite(str(root / split / "images" / f"{index:03d}.jpg"), image[..., ::-1])  # OpenCV writes BGR
            cv2.imwrite(str(root / split / "masks" / f"{index:03d}.png"), mask)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        write_toy_dataset(Path(folder))
        data = MyDataModule(folder, batch_size=4)
        model = ContrastiveSegmenter(
            num_classes=data.num_classes,
            head_channels=32,
            contrast=PixelContrastSettings(proj_dim=32, warmup_steps=1, max_views=5),
            lr=1e-3,
            optimizer="adamw",
        )
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False)
        trainer.fit(model, datamodule=data)
        metrics = trainer.callback_metrics
        print(f"contrast {float(metrics['train/contrast']):.3f}, val mIoU {float(metrics['val/miou']):.3f}")
        assert metrics["train/contrast"] > 0  # the term ran after the warm-up
