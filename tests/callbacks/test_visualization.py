import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tiny_runs import quiet_trainer

from pixcontrast.callbacks.visualization import SegmentationVisualizer, confusion_counts
from pixcontrast.data.base import denormalize_image
from pixcontrast.data.synthetic import SyntheticScenesDataModule
from pixcontrast.losses.sampling import sample_per_group
from pixcontrast.visualization_utils import GRID_PANELS, HEADER_HEIGHT, tile_scale

SIZE = 48
NUM_CLASSES = 4


class ToySegmenter(L.LightningModule):
    """Two convolutions; ``visualization_outputs`` gives predictions and stride-4 embeddings."""

    def __init__(self, clusters: bool = False, marker_dir: str | None = None) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.classifier = torch.nn.Conv2d(8, NUM_CLASSES, 1)
        self.clusters = clusters
        self.marker_dir = marker_dir
        self.hook_calls = 0

    def logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(images)
        logits = F.interpolate(self.classifier(features), size=images.shape[-2:], mode="bilinear")
        return logits, features

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.logits(batch["image"])[0], batch["mask"], ignore_index=255)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.cross_entropy(self.logits(batch["image"])[0], batch["mask"], ignore_index=255))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def visualization_outputs(self, batch):
        assert not self.training and not torch.is_grad_enabled()
        self.hook_calls += 1
        if self.marker_dir is not None:
            Path(self.marker_dir, f"hook_rank{self.global_rank}").touch()
        logits, features = self.logits(batch["image"])
        outputs = {"prediction": logits.argmax(dim=1), "embeddings": F.normalize(features, dim=1)}
        if self.clusters:
            outputs["cluster_map"] = logits.argmax(dim=1) + 2 * (batch["mask"] == 0)
        return outputs


class MarkingVisualizer(SegmentationVisualizer):
    def _write(self, trainer, pictures):
        Path(self.output_dir, f"write_rank{trainer.global_rank}").touch()
        super()._write(trainer, pictures)


def _datamodule(**kwargs) -> SyntheticScenesDataModule:
    options = dict(num_classes=NUM_CLASSES, image_size=SIZE, num_train=8, num_val=6, num_test=2, batch_size=4)
    return SyntheticScenesDataModule(**{**options, **kwargs})


def _fit(
    tmp_path,
    callback,
    module=None,
    max_epochs: int = 1,
    tensorboard: bool = True,
    num_sanity_val_steps: int = 1,
    **options: Any,
) -> ToySegmenter:
    """Fit ``module`` (a new ToySegmenter) on one training and one validation batch an epoch with ``callback``,
    logging to TensorBoard under ``tmp_path`` if asked; ``options``: further Trainer arguments."""
    module = module or ToySegmenter()
    trainer = quiet_trainer(
        max_epochs=max_epochs,
        logger=TensorBoardLogger(str(tmp_path), name="run") if tensorboard else False,
        callbacks=[callback],
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=num_sanity_val_steps,
        **options,
    )
    trainer.fit(module, datamodule=_datamodule())
    return module


def _pngs(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: np.asarray(Image.open(path).convert("RGB")) for path in sorted(folder.glob("*.png"))}


def test_writes_grid_embeddings_and_confusion_pngs_and_logs_them(tmp_path):
    module = _fit(tmp_path, SegmentationVisualizer(num_images=3, sample_images=5))
    folder = tmp_path / "run" / "version_0" / "visualizations"
    pictures = _pngs(folder)
    assert sorted(pictures) == [
        "confusion_matrix_epoch000.png",
        "embeddings_epoch000.png",
        "segmentation_grid_epoch000.png",
    ]
    assert module.hook_calls == 2  # 5 fixed images in chunks of the eval batch size (4); not in the sanity check
    grid = pictures["segmentation_grid_epoch000.png"]
    scale = tile_scale(SIZE)
    tile = SIZE * scale
    assert grid.shape[1] == len(GRID_PANELS) * tile
    assert grid.shape[0] > HEADER_HEIGHT + 3 * tile
    datamodule = _datamodule()
    datamodule.setup("validate")
    first = denormalize_image(datamodule.val_dataset[0]["image"]).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(grid[HEADER_HEIGHT : HEADER_HEIGHT + tile : scale, :tile:scale], first)
    for name in ("confusion_matrix_epoch000.png", "embeddings_epoch000.png"):
        assert min(pictures[name].shape[:2]) > 200

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"images": 0}).Reload()
    assert {"val/segmentation_grid", "val/embeddings", "val/confusion_matrix"} <= set(events.Tags()["images"])


def test_every_n_epochs_and_chosen_parts(tmp_path):
    callback = SegmentationVisualizer(
        num_images=2, every_n_epochs=2, embeddings=False, confusion_matrix=False, output_dir=str(tmp_path / "pictures")
    )
    _fit(tmp_path, callback, max_epochs=2)
    assert sorted(_pngs(tmp_path / "pictures")) == ["segmentation_grid_epoch001.png"]


def test_disabled_costs_nothing(tmp_path):
    module = _fit(tmp_path, SegmentationVisualizer(grid=False, embeddings=False, confusion_matrix=False))
    assert module.hook_calls == 0
    assert not list(tmp_path.rglob("visualizations"))


def _fake_trainer(tmp_path, is_global_zero: bool) -> SimpleNamespace:
    datamodule = _datamodule()
    datamodule.setup("validate")
    return SimpleNamespace(
        sanity_checking=False,
        current_epoch=0,
        global_step=7,
        is_global_zero=is_global_zero,
        global_rank=0,
        datamodule=datamodule,
        val_dataloaders=datamodule.val_dataloader(),
        log_dir=str(tmp_path),
        default_root_dir=str(tmp_path),
        loggers=[],
    )


@pytest.mark.parametrize("is_global_zero", [True, False])
def test_only_rank_zero_writes(tmp_path, is_global_zero):
    module = ToySegmenter()
    SegmentationVisualizer().on_validation_end(_fake_trainer(tmp_path, is_global_zero), module)
    assert module.hook_calls > 0  # every rank runs the forward pass (sharded strategies need it)
    assert bool(list(tmp_path.rglob("*.png"))) == is_global_zero


def test_cluster_maps_colour_the_embedding_plot(tmp_path):
    module = ToySegmenter(clusters=True)
    callback = SegmentationVisualizer(grid=False, confusion_matrix=False, max_points_per_class=5)
    collected = callback._collect(_fake_trainer(tmp_path, True), module)
    assert collected["by_cluster"] and collected["points"].shape[1] == 8
    assert torch.bincount(collected["groups"]).max() <= 5 * 6  # at most 5 per cluster per image (6 images)
    callback.on_validation_end(_fake_trainer(tmp_path, True), module)
    assert [p.name for p in tmp_path.rglob("*.png")] == ["embeddings_epoch000.png"]


def test_empty_outputs_skip_the_epoch(tmp_path):
    module = ToySegmenter()
    module.visualization_outputs = lambda batch: {}
    SegmentationVisualizer().on_validation_end(_fake_trainer(tmp_path, True), module)
    assert not list(tmp_path.rglob("*.png"))


def test_confusion_counts_and_per_group_sampling():
    target = torch.tensor([[0, 0, 1, 255], [2, 1, 1, 0]])
    prediction = torch.tensor([[0, 1, 1, 2], [2, 2, 255, 0]])
    expected = torch.tensor([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert torch.equal(confusion_counts(target, prediction, 3), expected)
    groups = torch.tensor([3, 3, 3, 3, 0, 255, 1, 1, 3, 0])
    chosen = sample_per_group(groups, 2, torch.Generator().manual_seed(0), ignore_index=255)
    assert torch.equal(torch.bincount(groups[chosen], minlength=4), torch.tensor([2, 2, 0, 2]))
    assert len(set(chosen.tolist())) == len(chosen)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_images": 0}, "num_images"),
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"max_points_per_class": 0}, "max_points_per_class"),
        ({"projection": "mds"}, "projection"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentationVisualizer(**kwargs)


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is not None, reason="scikit-learn is installed")
def test_tsne_without_scikit_learn_says_what_to_install():
    with pytest.raises(ValueError, match="scikit-learn"):
        SegmentationVisualizer(projection="tsne")


def test_module_without_hook_fails_early(tmp_path):
    module = ToySegmenter()
    module.visualization_outputs = None
    with pytest.raises(RuntimeError, match="visualization_outputs"):
        SegmentationVisualizer().setup(_fake_trainer(tmp_path, True), module, "fit")


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_two_processes_only_rank_zero_writes(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    callback = MarkingVisualizer(num_images=2, sample_images=2, output_dir=str(markers))
    module = ToySegmenter(marker_dir=str(markers))
    _fit(tmp_path, callback, module, tensorboard=False, num_sanity_val_steps=0, devices=2, strategy="ddp_spawn")
    names = sorted(os.listdir(markers))
    assert {"hook_rank0", "hook_rank1", "write_rank0"} <= set(names) and "write_rank1" not in names
    assert "segmentation_grid_epoch000.png" in names


def test_grid_layout_overlays_and_projection():
    from pixcontrast.visualization_utils import overlay, project_2d, segmentation_grid

    palette = np.array([[255, 0, 0], [0, 0, 255]], dtype=np.uint8)
    images = np.full((2, 32, 40, 3), 100, dtype=np.uint8)
    targets = np.zeros((2, 32, 40), dtype=np.int64)
    targets[:, :, :4] = 255
    predictions = np.ones_like(targets)
    grid = segmentation_grid(images, targets, predictions, palette, ["a", "b"])
    scale = tile_scale(40)
    assert scale == 4 and grid.shape[1] == 4 * 40 * scale and grid.shape[0] > HEADER_HEIGHT + 2 * 32 * scale
    errors = grid[HEADER_HEIGHT : HEADER_HEIGHT + 32 * scale, 3 * 40 * scale :]
    assert (errors[:, 4 * scale :] == [255, 0, 0]).all()  # every labelled pixel is wrong
    assert not (errors[:, : 4 * scale] == [255, 0, 0]).all(axis=-1).any()  # unlabelled pixels are not errors
    blended = overlay(images[0], targets[0], palette, alpha=0.5)
    assert (blended[:, :4] == 100).all() and (blended[:, 4:] == [178, 50, 50]).all()
    points = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    assert project_2d(points).shape == (50, 2)
    assert torch.equal(project_2d(points), project_2d(points))
