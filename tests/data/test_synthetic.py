import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pixcontrast.data.base import IGNORE_INDEX
from pixcontrast.data.scenes import generate_scene, scene_classes
from pixcontrast.data.synthetic import SyntheticScenesDataModule, SyntheticScenesDataset

SIZE = 64


def _dataset(num_images: int = 24, seed: int = 0, split: str = "train", **kwargs) -> SyntheticScenesDataset:
    return SyntheticScenesDataset(num_images, split, image_size=SIZE, seed=seed, **kwargs)


def _stack(dataset: SyntheticScenesDataset) -> tuple[np.ndarray, np.ndarray]:
    samples = [dataset.load_sample(i) for i in range(len(dataset))]
    return np.stack([s.image for s in samples]), np.stack([s.mask for s in samples])


def test_same_seed_same_images_different_seed_or_split_different():
    images, masks = _stack(_dataset(4))
    again_images, again_masks = _stack(_dataset(4))
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(masks, again_masks)
    assert not np.array_equal(images, _stack(_dataset(4, seed=1))[0])
    assert not np.array_equal(images, _stack(_dataset(4, split="val"))[0])


def test_items_do_not_depend_on_call_order():
    dataset = _dataset(6)
    forward = [dataset.load_sample(i).image for i in range(6)]
    backward = [dataset.load_sample(i).image for i in reversed(range(6))][::-1]
    np.testing.assert_array_equal(np.stack(forward), np.stack(backward))


def test_workers_give_the_same_batches():
    dataset = _dataset(8)
    single = list(DataLoader(dataset, batch_size=4, num_workers=0))
    multi = list(DataLoader(dataset, batch_size=4, num_workers=2))
    for a, b in zip(single, multi, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert a["name"] == b["name"]


def test_datamodule_batch_format_and_metadata():
    datamodule = SyntheticScenesDataModule(
        num_classes=5, image_size=(48, 80), num_train=4, num_val=3, num_test=2, batch_size=2
    )
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (2, 3, 48, 80) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 48, 80) and batch["mask"].dtype == torch.int64
    assert len(batch["name"]) == 2 and batch["name"][0].startswith("train_")
    assert len(datamodule.val_dataset) == 3 and datamodule.test_dataset is None
    assert datamodule.num_classes == len(datamodule.class_names) == 5
    assert len(set(datamodule.class_names)) == 5
    assert datamodule.palette.shape == (5, 3) and datamodule.palette.dtype == np.uint8
    assert len({tuple(c) for c in datamodule.palette}) == 5


@pytest.mark.parametrize("num_classes", [2, 8, 16])
def test_labels_in_range_ignore_fraction_sane_and_every_class_present(num_classes):
    _, masks = _stack(_dataset(32, num_classes=num_classes))
    labelled = masks[masks != IGNORE_INDEX]
    assert labelled.min() >= 0 and labelled.max() < num_classes
    assert 0.02 < (masks == IGNORE_INDEX).mean() < 0.25
    assert set(np.unique(labelled)) == set(range(num_classes))


def test_colour_alone_cannot_solve_it():
    """A nearest-mean colour classifier fit on one set scores far below a usable segmenter on another."""
    classes = scene_classes(8).num_classes
    train_images, train_masks = _stack(_dataset(24))
    test_images, test_masks = _stack(_dataset(24, split="val"))

    def pixels(images, masks):
        keep = masks != IGNORE_INDEX
        return images[keep].astype(np.float64) / 255.0, masks[keep]

    x, y = pixels(train_images, train_masks)
    means = np.stack([x[y == k].mean(axis=0) for k in range(classes)])
    # Class colour means lie close together relative to the spread within each class.
    spread = np.mean([x[y == k].std(axis=0).mean() for k in range(classes)])
    centre_gap = np.linalg.norm(means[:, None] - means[None], axis=-1).max()
    assert centre_gap < 3 * spread
    x_test, y_test = pixels(test_images, test_masks)
    predicted = np.linalg.norm(x_test[:, None] - means[None], axis=-1).argmin(axis=1)
    balanced_accuracy = np.mean([(predicted[y_test == k] == k).mean() for k in range(classes)])
    assert balanced_accuracy < 0.4


def test_scenes_of_the_demo_size():
    """The demo's 128 px scenes (their generation speed: benchmarks/bench_synthetic_scenes.py)."""
    image, mask = generate_scene(np.random.default_rng(0), 128, 96, scene_classes(8))
    assert image.shape == (128, 96, 3) and image.dtype == np.uint8
    assert mask.shape == (128, 96) and mask.dtype == np.int64
    assert set(np.unique(mask)) <= set(range(8)) | {IGNORE_INDEX}


def test_class_family_1_is_another_task_from_the_same_vocabulary():
    base, other = scene_classes(8), scene_classes(8, class_family=1)
    assert scene_classes(8, 0).names == base.names  # family 0 is the default label set
    assert not set(base.names) & set(other.names)
    assert set(zip(base.kind, base.freq.round(3), base.angle.round(3), strict=True)).isdisjoint(
        zip(other.kind, other.freq.round(3), other.angle.round(3), strict=True)
    )  # no texture (kind, frequency, orientation) of family 0 in family 1
    assert set(other.kind.tolist()) <= set(range(6)) and other.is_thing.sum() == base.is_thing.sum()
    assert not np.allclose(base.hue, other.hue)
    module = SyntheticScenesDataModule(num_classes=8, image_size=SIZE, class_family=1, num_train=2)
    dataset = module.build_dataset("train")
    assert module.class_names == dataset.class_names == other.names
    sample = dataset.load_sample(0)
    assert sample.image.shape == (SIZE, SIZE, 3) and set(np.unique(sample.mask)) <= set(range(8)) | {IGNORE_INDEX}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 17}, "num_classes"),
        ({"image_size": 16}, "image_size"),
        ({"image_size": (128, 8)}, "image_size"),
        ({"num_train": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
        ({"seed": -3}, "seed"),
        ({"batch_size": 0}, "batch_size"),
        ({"class_family": 2}, "class_family"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticScenesDataModule(**kwargs)


def test_dataset_rejects_bad_split_and_index():
    with pytest.raises(ValueError, match="split"):
        SyntheticScenesDataset(4, split="training")
    with pytest.raises(IndexError, match="out of range"):
        _dataset(4).load_sample(4)
