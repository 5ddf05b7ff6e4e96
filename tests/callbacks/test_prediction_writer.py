"""SegmentationPredictionWriter through Trainer.predict with a toy module and datamodule."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import quiet_trainer
from torch.utils.data import DataLoader

from pixcontrast.callbacks.prediction_writer import SegmentationPredictionWriter
from pixcontrast.data.base import default_palette, denormalize_image

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


def _items(count: int, num_classes: int):
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randn(3, 6, 5, generator=generator),
            "label": torch.randint(0, num_classes, (6, 5), generator=generator),
            "name": f"sample_{i}",
        }
        for i in range(count)
    ]


class _ToyModule(L.LightningModule):
    def __init__(self, num_classes: int = 3, with_image: bool = True):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Identity()

    def predict_step(self, batch, batch_idx):
        output = {"label_map": batch["label"], "name": batch["name"]}
        if self.hparams.with_image:
            output["image"] = batch["image"]
        return output


class _ToyData(L.LightningDataModule):
    def __init__(self, items, palette=None):
        super().__init__()
        self.items = items
        if palette is not None:
            self.palette = palette

    def predict_dataloader(self):
        return DataLoader(self.items, batch_size=2)


def _predict(tmp_path, module, datamodule, **writer_kwargs):
    writer = SegmentationPredictionWriter(tmp_path / "out", **writer_kwargs)
    trainer = quiet_trainer(tmp_path, callbacks=[writer])
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    return tmp_path / "out"


def test_writes_labels_and_overlays_with_the_datamodule_palette(tmp_path):
    items = _items(3, 3)
    out = _predict(tmp_path, _ToyModule(), _ToyData(items, PALETTE), alpha=0.25)
    for item in items:
        labels = np.array(Image.open(out / "labels" / f"{item['name']}.png"))
        assert labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, item["label"].numpy())
        overlay = np.array(Image.open(out / "overlays" / f"{item['name']}.png"))
        pixels = denormalize_image(item["image"]).permute(1, 2, 0).numpy().astype(np.float32)
        expected = np.rint(0.75 * pixels + 0.25 * PALETTE[item["label"].numpy()]).astype(np.uint8)
        np.testing.assert_array_equal(overlay, expected)


def test_without_image_or_palette_writes_generated_colours(tmp_path):
    items = _items(2, 4)
    out = _predict(tmp_path, _ToyModule(num_classes=4, with_image=False), _ToyData(items))
    overlay = np.array(Image.open(out / "overlays" / "sample_1.png"))
    np.testing.assert_array_equal(overlay, default_palette(4)[items[1]["label"].numpy()])


def test_many_classes_write_uint16_labels(tmp_path):
    items = _items(2, 3)
    items[0]["label"][0, 0] = 299
    out = _predict(tmp_path, _ToyModule(num_classes=300), _ToyData(items), write_overlay=False)
    labels = np.array(Image.open(out / "labels" / "sample_0.png"))
    assert labels.dtype == np.uint16 and labels[0, 0] == 299
    assert not (out / "overlays").exists()


def test_rejects_bad_alpha_and_bad_predictions(tmp_path):
    with pytest.raises(ValueError, match="alpha"):
        SegmentationPredictionWriter(tmp_path, alpha=1.5)
    writer = SegmentationPredictionWriter(tmp_path)
    with pytest.raises(ValueError, match="label_map"):
        writer.write_on_batch_end(None, None, torch.zeros(1, 2, 2), None, None, 0)


class _ClusterModule(_ToyModule):
    """Returns PiCIE's outputs: class maps and cluster maps (here the labels shifted by one)."""

    def __init__(self, num_clusters: int = 5):
        super().__init__(num_classes=3)
        self.save_hyperparameters()

    def predict_step(self, batch, batch_idx):
        return {**super().predict_step(batch, batch_idx), "cluster_map": batch["label"] + 1}


def test_cluster_maps_are_written_with_generated_colours(tmp_path):
    items = _items(2, 3)
    out = _predict(tmp_path, _ClusterModule(), _ToyData(items, PALETTE), alpha=1.0)
    for item in items:
        clusters = np.array(Image.open(out / "clusters" / f"{item['name']}.png"))
        np.testing.assert_array_equal(clusters, item["label"].numpy() + 1)
        overlay = np.array(Image.open(out / "cluster_overlays" / f"{item['name']}.png"))
        np.testing.assert_array_equal(overlay, default_palette(5)[clusters])
        assert (out / "labels" / f"{item['name']}.png").is_file()
