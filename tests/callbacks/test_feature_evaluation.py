import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tiny_runs import picie_scenes, quiet_trainer

from pixcontrast.callbacks import FreshClusterEvaluation, KMeansRefresh, LinearProbe
from pixcontrast.cluster import KMeans
from pixcontrast.data import PiCIEDataModule
from pixcontrast.metrics import HungarianMatchedSegmentation
from pixcontrast.modules import FrozenEncoder, PiCIE


def picie_data(num_classes: int = 4, num_train: int = 8) -> PiCIEDataModule:
    """32 px scenes in PiCIE's views: ``num_train`` training, 4 validation and 4 test images, batches of 4."""
    return picie_scenes(32, num_classes=num_classes, num_train=num_train, num_val=4, num_test=4, batch_size=4)


def trainer(tmp_path, callbacks) -> L.Trainer:
    """One epoch on the CPU with ``callbacks``."""
    return quiet_trainer(tmp_path, max_epochs=1, callbacks=callbacks)


def training_features(model: PiCIE, data: PiCIEDataModule) -> torch.Tensor:
    """The features FreshClusterEvaluation clusters, by hand: every training image, PiCIE's clustering mode."""
    model.on_cluster_start()
    with torch.no_grad():
        features = [model.evaluation_features(batch["image"]) for batch in data.train_eval_dataloader()]
    model.on_cluster_end()
    return torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in features])


def test_fresh_clusters_refit_on_training_features_and_score_like_a_hand_computation(tmp_path):
    torch.manual_seed(0)
    data = picie_data()
    model = PiCIE(num_classes=4, num_clusters=4, feature_dim=16, lr=1e-3, temperature=0.1)
    fresh = FreshClusterEvaluation(max_iter=50, progress_bar=False)
    run = trainer(tmp_path, [KMeansRefresh(progress_bar=False), fresh])
    run.fit(model, datamodule=data)
    assert {"val/fresh_miou", "val/fresh_pixel_accuracy", "val/miou"} <= set(run.callback_metrics)

    run.test(model, datamodule=data)
    centroids = fresh.head.centroids
    assert not torch.allclose(centroids, model.heads[0].centroids)  # not the epoch's centroids
    # A refit on the training images' features: the centroids are a fixed point of Lloyd's iteration on them.
    points = training_features(model, data)
    again = KMeans(4, metric="euclidean", max_iter=1).fit(points, init_centroids=centroids).centroids
    torch.testing.assert_close(again, centroids, atol=1e-5, rtol=1e-5)

    # The test score: dot products with the raw centroids, upsampled to the masks, arg-max, Hungarian matching.
    metric = HungarianMatchedSegmentation(num_classes=4, num_clusters=4)
    model.eval()
    with torch.no_grad():
        for batch in data.test_dataloader():
            scores = torch.einsum("bdhw,kd->bkhw", model.evaluation_features(batch["image"]), centroids)
            metric.update(
                F.interpolate(scores, size=batch["mask"].shape[-2:], mode="bilinear").argmax(1), batch["mask"]
            )
    expected = metric.compute()
    assert run.callback_metrics["test/fresh_miou"].item() == pytest.approx(expected["miou"].item(), abs=1e-6)
    assert run.callback_metrics["test/fresh_pixel_accuracy"].item() == pytest.approx(
        expected["pixel_accuracy"].item(), abs=1e-6
    )


def test_linear_probe_learns_and_leaves_the_encoder_alone(tmp_path):
    torch.manual_seed(0)
    data = picie_data(num_classes=2, num_train=16)
    model = PiCIE(num_classes=2, num_clusters=2, feature_dim=16)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    run = trainer(tmp_path, [LinearProbe(epochs=30, lr=0.05)])
    run.validate(model, datamodule=data)
    miou = run.callback_metrics["val/probe_miou"].item()
    accuracy = run.callback_metrics["val/probe_pixel_accuracy"].item()
    assert miou > 0.5 and accuracy > 0.6  # chance: about 1/3 mIoU for a constant prediction of 2 classes
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)


def test_settings_and_hooks_are_checked(tmp_path):
    with pytest.raises(ValueError, match="stages"):
        LinearProbe(stages=["train"])
    with pytest.raises(ValueError, match="logits"):
        FreshClusterEvaluation(logits="l2")
    run = trainer(tmp_path, [LinearProbe()])
    with pytest.raises(RuntimeError, match="evaluation_features"):
        run.validate(NoFeatures(), dataloaders=[torch.zeros(1)])
    run = trainer(tmp_path, [FreshClusterEvaluation(progress_bar=False)])
    with pytest.raises(ValueError, match="num_clusters"):  # checked before any feature is collected
        run.test(FrozenEncoder("resnet18", num_classes=2), datamodule=picie_data(num_classes=2))


class NoFeatures(L.LightningModule):
    """A module without the ``evaluation_features`` hook."""

    def validation_step(self, batch, batch_idx) -> None:
        pass


def test_any_encoder_frozen_is_probed_and_clustered(tmp_path):
    torch.manual_seed(0)
    data = picie_data(num_classes=2, num_train=16)
    model = FrozenEncoder("resnet18", num_classes=2, output_stride=8)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert not any(p.requires_grad for p in model.parameters())
    run = trainer(
        tmp_path, [LinearProbe(epochs=30, lr=0.05), FreshClusterEvaluation(num_clusters=2, progress_bar=False)]
    )
    run.test(model, datamodule=data)
    assert run.callback_metrics["test/probe_miou"].item() > 0.5
    assert {"test/fresh_miou", "test/fresh_pixel_accuracy", "test/probe_pixel_accuracy"} <= set(run.callback_metrics)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)
