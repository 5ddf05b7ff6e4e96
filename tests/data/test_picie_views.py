from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from tiny_runs import quiet_trainer
from torch.utils.data import DataLoader, RandomSampler, default_collate

from pixcontrast.callbacks import KMeansRefresh
from pixcontrast.data.base import RawSample, SegmentationDataModule, SegmentationDataset
from pixcontrast.data.picie_views import (
    BLUR_SIGMA_RANGE,
    CenterCropDataset,
    EpochViewsLoader,
    GeometricParams,
    PhotometricParams,
    PiCIEDataModule,
    PiCIEViews,
)
from pixcontrast.losses.picie import ViewGeometry, warp_features
from pixcontrast.modules import PiCIE


class TinyDataset(SegmentationDataset):
    """Random images of 40 x 56 with a two-class mask (left/right halves), ignore on the first row."""

    def __init__(self, length: int = 6) -> None:
        super().__init__()
        self.length = length

    def __len__(self) -> int:
        return self.length

    def load_sample(self, index: int) -> RawSample:
        rng = np.random.default_rng(index)
        image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
        mask = np.zeros((40, 56), dtype=np.int64)
        mask[:, 28:] = 1
        mask[0] = 255
        return RawSample(image, mask, f"img{index}")


class TinyDataModule(SegmentationDataModule):
    class_names = ("left", "right")

    def build_dataset(self, split: str) -> SegmentationDataset:
        return TinyDataset()


def _smooth_image(size: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([torch.sin(3 * x + y), torch.cos(2 * y - x), x * y])


def test_items_depend_only_on_seed_epoch_and_index():
    views = PiCIEViews(TinyDataset(), view_size=32, input_size=16, seed=3)
    first = views[2]
    assert [views[i]["name"] for i in (4, 0)] == ["img4", "img0"]  # other items in between
    again = views[2]
    for key in ("image1", "image2", "mask"):
        assert torch.equal(first[key], again[key])
    assert all(map(torch.equal, first["geometry"], again["geometry"]))
    assert first["image1"].shape == first["image2"].shape == (3, 16, 16)
    assert isinstance(first["geometry"], ViewGeometry) and first["mask"].shape == (16, 16)
    assert first["geometry"].boxes.shape == (4,) and first["geometry"].flips.shape == ()
    views.set_epoch(1)
    assert not torch.equal(views[2]["image2"], first["image2"])
    assert not torch.equal(PiCIEViews(TinyDataset(), 32, 16, seed=4)[2]["image2"], first["image2"])


def test_epoch_reaches_persistent_workers():
    views = PiCIEViews(TinyDataset(length=2), view_size=16, input_size=8)
    loader = DataLoader(views, batch_size=2, num_workers=1, persistent_workers=True)
    epoch0 = next(iter(loader))["geometry"].boxes
    views.set_epoch(5)
    epoch5 = next(iter(loader))["geometry"].boxes
    views.set_epoch(0)
    assert torch.equal(next(iter(loader))["geometry"].boxes, epoch0)
    assert not torch.equal(epoch5, epoch0)
    views.set_epoch(5)
    assert torch.equal(torch.stack([views[0]["geometry"].boxes, views[1]["geometry"].boxes]), epoch5)


def test_item_is_the_photometric_then_geometric_transform_of_the_view():
    views = PiCIEViews(TinyDataset(), view_size=32, input_size=16, seed=1)
    geometric, photometric1, _ = views.draw_params(3)
    crop = CenterCropDataset(TinyDataset(), 32)[3]
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    view = crop["image"] * std + mean
    item = views[3]
    expected1 = geometric.apply(photometric1.apply(view), 16).clamp(0, 1)
    assert torch.allclose(item["image1"] * std + mean, expected1, atol=1e-4)
    box = item["geometry"].boxes * 32
    assert bool(item["geometry"].flips) == geometric.flip
    assert torch.equal(
        box,
        torch.tensor(
            [geometric.left, geometric.top, geometric.left + geometric.size, geometric.top + geometric.size],
            dtype=torch.float32,
        ),
    )


def test_geometric_parameters_follow_the_paper():
    generator = torch.Generator().manual_seed(0)
    draws = [GeometricParams.draw(generator, 100) for _ in range(400)]
    sizes = np.array([d.size for d in draws])
    assert sizes.min() >= 50 and sizes.max() <= 100 and sizes.max() - sizes.min() > 40
    assert all(0 <= d.left <= 100 - d.size and 0 <= d.top <= 100 - d.size for d in draws)
    assert 0.4 < np.mean([d.flip for d in draws]) < 0.6


def test_photometric_parameters_follow_the_paper():
    generator = torch.Generator().manual_seed(0)
    draws = [PhotometricParams.draw(generator) for _ in range(2000)]
    for name, low, high in (
        ("brightness", 0.7, 1.3),
        ("contrast", 0.7, 1.3),
        ("saturation", 0.7, 1.3),
        ("hue", -0.1, 0.1),
    ):
        values = [getattr(d, name) for d in draws if getattr(d, name) is not None]
        assert 0.77 < len(values) / len(draws) < 0.83
        assert low <= min(values) and max(values) <= high
    assert 0.17 < np.mean([d.grayscale for d in draws]) < 0.23
    sigmas = [d.blur_sigma for d in draws if d.blur_sigma is not None]
    assert 0.47 < len(sigmas) / len(draws) < 0.53
    assert BLUR_SIGMA_RANGE[0] <= min(sigmas) < 0.2 and 1.9 < max(sigmas) <= BLUR_SIGMA_RANGE[1]


def test_grayscale_is_applied_and_blur_uses_sigma():
    image = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0))
    gray = PhotometricParams(None, None, None, None, True, None).apply(image)
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    assert not torch.allclose(gray[0], image[0])
    soft = PhotometricParams(None, None, None, None, False, 0.5).apply(image)
    softer = PhotometricParams(None, None, None, None, False, 2.0).apply(image)
    assert softer.std() < soft.std() < image.std()
    assert torch.equal(PhotometricParams(None, None, None, None, False, None).apply(image), image)


def test_flip_is_exactly_equivariant():
    image = _smooth_image(32)
    geometric = GeometricParams(left=0, top=0, size=32, flip=True, view_size=32)
    view1 = geometric.apply(image, 16)
    resized = F.interpolate(image[None], size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    warped = warp_features(resized, default_collate([geometric.geometry()]))
    assert torch.allclose(warped[0], view1, atol=1e-5)
    assert torch.allclose(warped, resized.flip(-1), atol=1e-5)


@pytest.mark.parametrize("left, top, size, flip", [(8, 4, 48, False), (20, 0, 44, True), (3, 17, 33, True)])
def test_crop_is_equivariant_within_interpolation_error(left, top, size, flip):
    image = _smooth_image(64)
    geometric = GeometricParams(left, top, size, flip, view_size=64)
    # "Feature maps" at stride 4 from an average-pooling network: f(G(x)) against G(f(x)).
    features_of_view1 = F.avg_pool2d(geometric.apply(image, 32)[None], 4)
    features_of_view2 = F.avg_pool2d(F.interpolate(image[None], size=(32, 32), mode="bilinear", antialias=True), 4)
    warped = warp_features(features_of_view2, default_collate([geometric.geometry()]), output_size=(8, 8))
    error = (warped - features_of_view1).abs()
    assert error[..., 1:-1, 1:-1].max() < 0.05  # interior: interpolation error only
    whole_view = ViewGeometry(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([not flip]))
    misaligned = warp_features(features_of_view2, whole_view, (8, 8))
    assert error.mean() < 0.2 * (misaligned - features_of_view1).abs().mean()


def test_warp_is_vectorised_over_the_batch():
    features = torch.randn(3, 4, 10, 10, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]])
    geometry = ViewGeometry(boxes, torch.tensor([False, True, False]))
    warped = warp_features(features, geometry)
    assert torch.allclose(warped[0], features[0], atol=1e-5)
    assert torch.allclose(warped[1], features[1].flip(-1), atol=1e-5)
    assert torch.allclose(warped[2], warp_features(features[2:], ViewGeometry(boxes[2:], geometry.flips[2:]))[0])
    with pytest.raises(ValueError, match="geometry must hold B x 4 boxes and B flips with B=3"):
        warp_features(features, ViewGeometry(boxes[:2], geometry.flips[:2]))
    with pytest.raises(TypeError, match="ViewGeometry"):
        warp_features(features, torch.cat([boxes, geometry.flips[:, None].float()], dim=1))  # the 0.1 layout


def test_center_crop_dataset_follows_the_evaluation_protocol():
    item = CenterCropDataset(TinyDataset(), 20)[0]
    assert item["image"].shape == (3, 20, 20) and item["mask"].shape == (20, 20)
    assert item["mask"].dtype == torch.int64
    assert set(item["mask"].unique().tolist()) <= {0, 1, 255}
    assert (item["mask"][1:, :10] == 0).all() and (item["mask"][1:, 10:] == 1).all()
    with pytest.raises(ValueError, match="size"):
        CenterCropDataset(TinyDataset(), 0)


def test_datamodule_wraps_any_segmentation_datamodule():
    inner = TinyDataModule(batch_size=2, num_workers=0)
    datamodule = PiCIEDataModule(inner, view_size=24, input_size=16, eval_size=12)
    assert datamodule.num_classes == 2 and list(datamodule.class_names) == ["left", "right"]
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image1"].shape == (2, 3, 16, 16) and isinstance(batch["geometry"], ViewGeometry)
    assert batch["geometry"].boxes.shape == (2, 4) and batch["geometry"].flips.dtype == torch.bool
    assert next(iter(datamodule.val_dataloader()))["image"].shape == (2, 3, 12, 12)
    with pytest.raises(ValueError, match="input_size"):
        PiCIEDataModule(inner, input_size=1)
    with pytest.raises(ValueError, match="view_size"):
        PiCIEViews(TinyDataset(), view_size=1)


def test_the_geometry_survives_collation_and_the_batch_transfer():
    views = PiCIEViews(TinyDataset(), view_size=24, input_size=16)
    batch = default_collate([views[0], views[1], views[2]])
    geometry = batch["geometry"]
    assert isinstance(geometry, ViewGeometry) and geometry.boxes.shape == (3, 4) and geometry.flips.shape == (3,)
    assert torch.equal(geometry.boxes[1], views[1]["geometry"].boxes)
    moved = move_data_to_device(batch, torch.device("cpu"))  # what Lightning's batch transfer does
    assert isinstance(moved["geometry"], ViewGeometry) and torch.equal(moved["geometry"].flips, geometry.flips)
    assert isinstance(geometry.to("cpu"), ViewGeometry)


def test_the_train_loader_selects_the_trainer_epoch_at_every_pass():
    datamodule = PiCIEDataModule(TinyDataModule(batch_size=2, num_workers=0), view_size=24, input_size=16)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    plain = SegmentationDataModule.train_dataloader(datamodule)
    assert isinstance(loader, EpochViewsLoader) and loader.dataset is datamodule.train_dataset
    assert isinstance(loader.sampler, RandomSampler) and loader.collate_fn is plain.collate_fn
    assert (loader.batch_size, loader.drop_last, loader.num_workers) == (plain.batch_size, plain.drop_last, 0)
    datamodule.train_dataset.set_epoch(2)
    next(iter(loader))  # no trainer: the dataset's epoch stays
    assert datamodule.train_dataset.epoch == 2
    datamodule.trainer = SimpleNamespace(current_epoch=3)  # e.g. a run resumed inside epoch 3: no epoch hook
    item = next(iter(loader))
    assert datamodule.train_dataset.epoch == 3
    index = int(item["index"][0])
    assert torch.equal(item["geometry"].boxes[0], datamodule.train_dataset[index]["geometry"].boxes)


class ViewsSeen(PiCIE):
    """PiCIE that records the crop box of every item it clusters or trains on, per epoch and pass."""

    def __init__(self) -> None:
        super().__init__(num_classes=2, num_clusters=2, encoder="test_efficientnet", feature_dim=4)
        self.seen: dict[tuple[int, str], dict[int, torch.Tensor]] = {}

    def _record(self, batch, stage: str) -> None:
        boxes = self.seen.setdefault((self.current_epoch, stage), {})
        boxes.update(zip(batch["index"].tolist(), batch["geometry"].boxes, strict=True))

    def cluster_features(self, batch):
        self._record(batch, "cluster")
        return super().cluster_features(batch)

    def training_step(self, batch, batch_idx):
        self._record(batch, "train")
        return super().training_step(batch, batch_idx)


def test_the_clustering_and_training_passes_of_an_epoch_see_the_same_views(tmp_path):
    datamodule = PiCIEDataModule(TinyDataModule(batch_size=2, num_workers=0), view_size=32, input_size=32)
    model = ViewsSeen()
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[KMeansRefresh(progress_bar=False)])
    trainer.fit(model, datamodule=datamodule)
    for epoch in (0, 1):
        cluster, train = model.seen[(epoch, "cluster")], model.seen[(epoch, "train")]
        assert sorted(cluster) == sorted(train) == list(range(6))
        assert all(torch.equal(cluster[i], train[i]) for i in range(6))
    assert not all(torch.equal(model.seen[(0, "train")][i], model.seen[(1, "train")][i]) for i in range(6))
