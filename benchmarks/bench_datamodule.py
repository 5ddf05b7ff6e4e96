"""Train-loader throughput of the Cityscapes pipeline vs a PIL + torchvision.transforms.v2 baseline.

Both read the same generated 2048 x 1024 Cityscapes tree (PNG images, labelIds mapped to train ids) and do the
same augmentation: random scale 0.5-2, pad (image 0, mask 255), random 512 x 1024 crop, horizontal flip,
normalisation. Throughput (images/s) over one epoch after a warm-up batch, for 0, 1 and 2 workers.

    python benchmarks/bench_datamodule.py [--quick]

Prints one JSON line (figures and ratios ours / baseline); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pixcontrast.data.cityscapes import CityscapesDataModule
from pixcontrast.data.label_maps import CITYSCAPES_LOOKUPS

HEIGHT, WIDTH = 1024, 2048
CROP = (512, 1024)


def generate(root: Path, count: int, seed: int = 0) -> None:
    """Street-scene-like images (smooth regions plus sensor noise) and blocky label-id maps."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        frame = f"bench_{index:06d}_000019"
        coarse = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
        image = cv2.add(image, rng.integers(0, 6, image.shape, dtype=np.uint8))
        blocks = rng.integers(0, 34, (16, 32), dtype=np.uint8)
        labels = cv2.resize(blocks, (WIDTH, HEIGHT), interpolation=cv2.INTER_NEAREST)
        for folder, name, array in (("leftImg8bit", "leftImg8bit", image), ("gtFine", "gtFine_labelIds", labels)):
            path = root / folder / "train" / "bench" / f"{frame}_{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), array)
        (root / "leftImg8bit" / "val").mkdir(parents=True, exist_ok=True)


class BaselineDataset(Dataset):
    """PIL decoding + torchvision.transforms.v2 augmentation of the same files."""

    def __init__(self, images: list[str], labels: list[str]) -> None:
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        self.images, self.labels, self.tv_tensors = images, labels, tv_tensors
        self.lut = CITYSCAPES_LOOKUPS["19"].table  # unchecked look-up, as a plain reimplementation would do
        self.transform = v2.Compose(
            [
                v2.ScaleJitter(target_size=(HEIGHT, WIDTH), scale_range=(0.5, 2.0)),
                v2.ToImage(),
                v2.RandomCrop(CROP, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
                v2.RandomHorizontalFlip(),
                v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
                v2.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        image = Image.open(self.images[index]).convert("RGB")
        mask = self.tv_tensors.Mask(torch.from_numpy(self.lut[np.asarray(Image.open(self.labels[index]))]))
        image, mask = self.transform(image, mask)
        return {"image": image.as_subclass(torch.Tensor), "mask": mask.as_subclass(torch.Tensor)}


def throughput(loader: DataLoader) -> float:
    """Images/s over one epoch, after a warm-up batch (workers started, caches warm)."""
    next(iter(loader))
    start, images = time.perf_counter(), 0
    for batch in loader:
        images += batch["image"].shape[0]
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few images (a smoke run)")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    count = args.images or (4 if args.quick else 24)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        print(f"generating {count} {WIDTH}x{HEIGHT} images ...", file=sys.stderr)
        generate(root, count)
        ours, baseline = {}, {}
        for workers in (0, 1, 2):
            datamodule = CityscapesDataModule(
                str(root), batch_size=args.batch_size, num_workers=workers, crop_size=CROP, pin_memory=False
            )
            dataset = datamodule.build_dataset("train")
            datamodule.train_dataset = dataset
            ours[str(workers)] = throughput(datamodule.train_dataloader())
            plain = BaselineDataset(dataset.images, [str(p) for p in dataset.labels])
            loader = DataLoader(
                plain, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                persistent_workers=workers > 0,
            )  # fmt: skip
            baseline[str(workers)] = throughput(loader)
            figures = f"ours {ours[str(workers)]:.2f} img/s, baseline {baseline[str(workers)]:.2f} img/s"
            print(f"workers={workers}: {figures}", file=sys.stderr)
    result = {
        "benchmark": "datamodule",
        "pipeline": "cityscapes train: scale 0.5-2, pad, crop 512x1024, flip, normalise",
        "image_size_hw": [HEIGHT, WIDTH],
        "crop_hw": list(CROP),
        "images": count,
        "batch_size": args.batch_size,
        "ours_images_per_s": {k: round(v, 3) for k, v in ours.items()},
        "baseline_images_per_s": {k: round(v, 3) for k, v in baseline.items()},
        "ratio_ours_over_baseline": {k: round(ours[k] / baseline[k], 3) for k in ours},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
