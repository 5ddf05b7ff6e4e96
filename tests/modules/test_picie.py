"""PiCIE module: cluster hooks, view alignment, training, evaluation and prediction."""

import pytest
import torch
import torch.nn.functional as F
import yaml

from pixcontrast.bundled_configs import CONFIG_DIR
from pixcontrast.losses.picie import ViewGeometry, picie_loss
from pixcontrast.modules.picie import PiCIE


def _batch(batch_size: int = 2, size: int = 32, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "image1": torch.randn(batch_size, 3, size, size, generator=generator),
        "image2": torch.randn(batch_size, 3, size, size, generator=generator),
        "geometry": ViewGeometry(
            torch.tensor([[0.1, 0.0, 0.8, 0.7], [0.0, 0.0, 1.0, 1.0]])[:batch_size],
            torch.tensor([True, False])[:batch_size],
        ),
    }


def _model(**kwargs) -> PiCIE:
    torch.manual_seed(0)
    return PiCIE(**{"num_classes": 3, "num_clusters": 4, "feature_dim": 16, **kwargs})


def _fit_centroids(model: PiCIE, batch: dict) -> None:
    features = model.cluster_features(batch)
    model.set_centroids(
        {
            key: value[:: max(1, len(value) // count)][:count]
            for key, value, count in ((k, features[k], c) for k, c in model.cluster_counts().items())
        }
    )


def test_official_class_weights_use_the_cluster_sizes_of_the_clustering_pass():
    batch = _batch()
    model = _model(class_weights="official", over_clusters=6)
    _fit_centroids(model, batch)
    batch_weighted = model.compute_losses(batch)["loss"]  # no sizes reported yet: the batch's counts
    sizes = {key: torch.arange(1.0, count + 1) for key, count in model.cluster_counts().items()}
    model.set_cluster_sizes(sizes)
    assert torch.equal(model.state_dict()["over_heads.1.sizes"], sizes["view2_over"])  # in checkpoints
    features1, features2 = model.view_features(batch)
    expected = 0.0
    for heads in (model.heads, model.over_heads):
        labels = (heads[0].assign(features1), heads[1].assign(features2))
        expected += picie_loss(features1, features2, *heads, labels, 1.0).loss
        weights = heads[1].weights(labels[1])
        assert torch.allclose(weights, heads[1].sizes / heads[1].sizes.sum())  # the epoch's frequencies
    loss = model.compute_losses(batch)["loss"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(batch_weighted.item(), rel=1e-3)
    balanced = _model(over_clusters=6)
    balanced.load_state_dict(model.state_dict())
    before = balanced.compute_losses(batch)["loss"]
    balanced.set_cluster_sizes({key: value * 7 for key, value in sizes.items()})
    assert balanced.compute_losses(batch)["loss"].item() == pytest.approx(before.item())  # per batch
    with pytest.raises(ValueError, match="set_cluster_sizes expects the keys"):
        model.set_cluster_sizes({"view1": sizes["view1"]})
    with pytest.raises(ValueError, match=r"set_cluster_sizes 'view1': cluster sizes must be \(4,\)"):
        model.set_cluster_sizes({**sizes, "view1": torch.ones(5)})


def test_cluster_hooks_shapes_and_keys():
    model = _model(over_clusters=6)
    assert model.cluster_counts() == {"view1": 4, "view2": 4, "view1_over": 6, "view2_over": 6}
    features = model.cluster_features(_batch())
    assert set(features) == set(model.cluster_counts())
    assert features["view1"].shape == (2 * 8 * 8, 16)
    assert torch.allclose(features["view1"].norm(dim=1), torch.ones(128), atol=1e-5)
    assert not model.has_centroids
    _fit_centroids(model, _batch())
    assert model.has_centroids and all(bool(head.clustered) for _, _, head in model.feature_sets())
    assert [(name, view) for name, view, _ in model.feature_sets()] == [
        ("view1", 0),
        ("view2", 1),
        ("view1_over", 0),
        ("view2_over", 1),
    ]
    assert torch.allclose(model.over_heads[1].centroids.norm(dim=1), torch.ones(6), atol=1e-5)
    state = model.state_dict()
    assert {"heads.0.centroids", "heads.1.sizes", "over_heads.0.clustered", "assignment"} <= set(state)


def test_set_centroids_rejects_wrong_keys_and_shapes():
    model = _model()
    with pytest.raises(ValueError, match="keys"):
        model.set_centroids({"view1": torch.randn(4, 16)})
    with pytest.raises(ValueError, match=r"set_centroids 'view2': centroids must be \(4, 16\), got \(5, 16\)"):
        model.set_centroids({"view1": torch.randn(4, 16), "view2": torch.randn(5, 16)})


def test_view_features_align_the_second_view_with_the_first():
    model = _model().eval()
    image = torch.randn(1, 3, 32, 32)
    geometry = ViewGeometry(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([True]))
    batch = {"image1": image.flip(-1), "image2": image, "geometry": geometry}
    with torch.no_grad():
        features1, features2 = model.view_features(batch)
        direct = model(image).flip(-1)
    assert torch.allclose(features2, direct, atol=1e-5)
    assert features1.shape == features2.shape == (1, 16, 8, 8)


def test_training_needs_centroids_and_trains_the_network_only():
    model = _model(over_clusters=6)
    batch = _batch()
    with pytest.raises(RuntimeError, match="KMeansRefresh"):
        model.on_train_epoch_start()  # checked once per epoch, after KMeansRefresh's refresh
    _fit_centroids(model, batch)
    model.on_train_epoch_start()
    losses = model.compute_losses(batch)
    assert set(losses) >= {"loss", "within_view", "across_view", "over_loss", "clusters_used"}
    losses["loss"].backward()
    grads = [p.grad for p in model.network.parameters()]
    assert all(g is not None for g in grads) and all(torch.isfinite(g).all() for g in grads)
    assert not any("heads" in name for name, _ in model.named_parameters())
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 1e-4


def test_epoch_labels_come_from_a_frozen_copy_taken_with_the_centroids():
    model = _model(label_source="epoch")
    batch = _batch()
    _fit_centroids(model, batch)
    frozen = model.label_network
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert all(
        torch.equal(a, b)
        for a, b in zip(frozen.state_dict().values(), model.network.state_dict().values(), strict=True)
    )
    optimizer = torch.optim.SGD(model.network.parameters(), lr=1.0)
    for _ in range(2):  # the trained network moves away from the copy ...
        optimizer.zero_grad()
        model.compute_losses(batch)["loss"].backward()
        optimizer.step()
    model.train()
    assert not frozen.training  # ... which stays frozen and in eval mode
    with torch.no_grad():
        expected = [F.normalize(f, dim=1) for f in model.view_features(batch, frozen)]
        centroids = [head.centroids for head in model.heads]
        labels = [torch.einsum("bdhw,kd->bkhw", f, c).argmax(1) for f, c in zip(expected, centroids, strict=True)]
    captured = {}
    import pixcontrast.modules.picie as picie_module

    original = picie_module.picie_loss

    def spy(*args):
        captured["labels"] = args[4]  # picie_loss(f1, f2, head1, head2, labels, temperature)
        return original(*args)

    picie_module.picie_loss = spy
    try:
        model.compute_losses(batch)
    finally:
        picie_module.picie_loss = original
    assert all(torch.equal(a, b) for a, b in zip(captured["labels"], labels, strict=True))
    assert "label_network.encoder.model.conv1.weight" in model.state_dict()  # exact resumes
    _fit_centroids(model, batch)  # a new epoch: the copy follows the network again
    assert torch.equal(frozen.fpn.laterals[0].weight, model.network.fpn.laterals[0].weight)
    assert _model().label_network is None  # live labels: no copy


def test_dot_logits_keep_the_raw_centroids_and_score_with_them():
    model = _model(logits="dot", temperature=1.0).eval()
    raw = {key: torch.randn(count, 16) * 0.3 for key, count in model.cluster_counts().items()}
    model.set_centroids(raw)
    assert torch.equal(model.heads[0].centroids, raw["view1"])
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        features = model(images)
        scores = model.cluster_logits(images, features=features)
    expected = F.interpolate(torch.einsum("bdhw,kd->bkhw", features, raw["view1"]), size=(32, 32), mode="bilinear")
    assert torch.allclose(scores, expected, atol=1e-5)
    assert torch.isfinite(model.compute_losses(_batch())["loss"])


@pytest.mark.parametrize("training", [True, False])
def test_clustering_pass_uses_batch_statistics_and_restores_the_mode(training):
    """The clustering hooks own the mode: train mode while collecting, the previous mode back afterwards."""
    model = _model(label_source="epoch")
    batchnorm = next(m for m in model.network.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = batchnorm.running_mean.clone()
    model.train(training)
    model.on_cluster_start()
    assert model.training and batchnorm.momentum == 0.0 and not model.label_network.training
    model.cluster_features(_batch())
    model.on_cluster_end()
    assert torch.equal(batchnorm.running_mean, before) and batchnorm.momentum == 0.1
    assert model.training == training and not model.label_network.training


def test_predict_maps_clusters_to_classes_by_the_last_matching():
    model = _model().eval()
    with pytest.raises(RuntimeError, match="trained checkpoint"):
        model.on_predict_start()
    _fit_centroids(model, _batch())
    model.on_predict_start()
    images = torch.randn(2, 3, 32, 32)
    output = model.predict_step({"image": images, "name": ["a", "b"]}, 0)
    assert output["cluster_map"].shape == (2, 32, 32) and torch.equal(output["label_map"], output["cluster_map"])
    model.assignment.copy_(torch.tensor([2, -1, 0, 1]))
    cluster_map, label_map = model.predict_maps(images)
    assert torch.equal(label_map, torch.tensor([2, 255, 0, 1])[cluster_map])
    outputs = model.visualization_outputs({"image": images})
    assert set(outputs) == {"prediction", "cluster_map", "embeddings"}


def test_validation_metrics_are_logged_after_clustering():
    model = _model(over_clusters=6).eval()
    logged = {}
    model.log_dict = lambda values, **_: logged.update(values)
    masks = torch.randint(0, 3, (2, 32, 32))
    model.validation_step({"image": torch.randn(2, 3, 32, 32), "mask": masks}, 0)  # before clustering: skipped
    assert model.val_metric.histogram.sum() == 0
    _fit_centroids(model, _batch())
    model.validation_step({"image": torch.randn(2, 3, 32, 32), "mask": masks}, 0)
    model.on_validation_epoch_end()
    assert {"val/miou", "val/pixel_accuracy", "val/iou_0", "val/over_miou"} <= set(logged)
    assert (model.assignment >= 0).sum() == 3  # 3 classes matched to 3 of the 4 clusters


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"over_clusters": 4}, "over_clusters"),
        ({"num_clusters": 1}, "num_clusters"),
        ({"temperature": 0.0}, "temperature"),
        ({"class_weights": "inverse"}, "class_weights"),
        ({"logits": "euclidean"}, "logits"),
        ({"label_source": "files"}, "label_source"),
        ({"class_names": ["a"]}, "class_names"),
        ({"encoder": "resnet_eighteen"}, "unknown encoder"),
        ({"num_classes": -1}, "num_classes must be >= 0"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _model(**kwargs)


def test_without_ground_truth_classes_there_is_nothing_to_evaluate():
    model = _model(num_classes=0)  # unlabelled data: the CLI links num_classes = 0 from the datamodule
    assert not hasattr(model, "val_metric")
    _fit_centroids(model, _batch())
    model.eval()
    model.validation_step({"image": torch.randn(2, 3, 32, 32), "mask": torch.full((2, 32, 32), 255)}, 0)
    model.on_validation_epoch_end()  # skipped, no metric to compute
    cluster_map, label_map = model.predict_maps(torch.randn(2, 3, 32, 32))
    assert torch.equal(cluster_map, label_map) and int(cluster_map.max()) < 4


def test_batches_without_two_views_are_rejected():
    with pytest.raises(KeyError, match="PiCIEDataModule"):
        _model().cluster_features({"image": torch.randn(1, 3, 32, 32)})


@pytest.mark.parametrize("name", ["synthetic_picie.yaml", "cocostuff27_picie.yaml", "cityscapes27_picie.yaml"])
def test_configs_name_the_paper_settings(name):
    config = yaml.safe_load((CONFIG_DIR / name).read_text())
    model = config["model"]["init_args"]
    assert config["model"]["class_path"] == "pixcontrast.modules.PiCIE"
    assert config["data"]["class_path"] == "pixcontrast.data.PiCIEDataModule"
    callbacks = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert "pixcontrast.callbacks.KMeansRefresh" in callbacks
    if name != "synthetic_picie.yaml":
        assert model["num_clusters"] == 27 and model["encoder"] == "resnet18.tv_in1k" and model["pretrained"]
        assert config["trainer"]["max_epochs"] == 10
        assert config["data"]["init_args"]["input_size"] == 320 and config["data"]["init_args"]["eval_size"] == 320
        assert config["data"]["init_args"]["datamodule"]["init_args"]["label_set"] == "27"
        assert model["lr"] == (1e-4 if name.startswith("coco") else 1e-3)


def test_validation_and_test_steps_are_shared_with_the_segmentation_module():
    from pixcontrast.modules import SegmentationModule
    from pixcontrast.modules.evaluation import StageEvaluation

    for hook in ("validation_step", "test_step", "on_validation_epoch_end", "on_test_epoch_end"):
        assert getattr(PiCIE, hook) is getattr(SegmentationModule, hook) is getattr(StageEvaluation, hook)
