"""pad_collate: evaluation batches of images of different sizes, and the loaders that use it."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from pixcontrast.data import SyntheticScenesDataModule, pad_collate


def _item(height: int, width: int, mask_size: tuple[int, int] | None = None, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    mask_h, mask_w = mask_size or (height, width)
    return {
        "image": torch.randn(3, height, width, generator=generator),
        "mask": torch.randint(0, 3, (mask_h, mask_w), generator=generator),
        "name": f"item{seed}",
        "index": seed,
    }


def test_pads_bottom_right_and_records_the_sizes() -> None:
    items = [_item(4, 6, seed=0), _item(5, 3, seed=1), _item(2, 2, mask_size=(4, 7), seed=2)]
    batch = pad_collate(items)
    assert batch["image"].shape == (3, 3, 5, 6) and batch["mask"].shape == (3, 5, 7)
    assert batch["image_size"].tolist() == [[4, 6], [5, 3], [2, 2]]
    assert batch["mask_size"].tolist() == [[4, 6], [5, 3], [4, 7]]
    assert batch["image_size"].dtype == torch.int64 and batch["name"] == ["item0", "item1", "item2"]
    assert torch.equal(batch["index"], torch.tensor([0, 1, 2]))
    for row, item in enumerate(items):
        (h, w), (mh, mw) = batch["image_size"][row].tolist(), batch["mask_size"][row].tolist()
        assert torch.equal(batch["image"][row, :, :h, :w], item["image"])
        assert torch.equal(batch["mask"][row, :mh, :mw], item["mask"])
        assert (batch["image"][row, :, h:] == 0).all() and (batch["image"][row, :, :, w:] == 0).all()
        assert (batch["mask"][row, mh:] == 255).all() and (batch["mask"][row, :, mw:] == 255).all()
    assert (pad_collate(items, ignore_index=-1)["mask"][1, :, 3:] == -1).all()


def test_items_of_one_size_collate_as_default_collate() -> None:
    items = [_item(4, 6, seed=seed) for seed in range(3)]
    batch, reference = pad_collate(items), default_collate(items)
    for key in ("image", "mask", "index"):
        assert torch.equal(batch[key], reference[key])
    assert batch["name"] == reference["name"] and batch["image_size"].tolist() == [[4, 6]] * 3


def test_bad_items_fail_clearly() -> None:
    with pytest.raises(ValueError, match="no items"):
        pad_collate([])
    with pytest.raises(KeyError, match="'image' and 'mask'"):
        pad_collate([{"image": torch.zeros(3, 2, 2)}])


def test_evaluation_loaders_pad_and_training_loaders_stack() -> None:
    datamodule = SyntheticScenesDataModule(num_classes=3, image_size=32, num_train=4, num_val=3, batch_size=2)
    datamodule.setup("fit")
    train = next(iter(datamodule.train_dataloader()))
    assert "image_size" not in train and train["image"].shape == (2, 3, 32, 32)
    for loader in (datamodule.val_dataloader(), datamodule.predict_dataloader()):
        batch = next(iter(loader))
        assert batch["image_size"].tolist() == [[32, 32]] * 2 and batch["mask_size"].tolist() == [[32, 32]] * 2
