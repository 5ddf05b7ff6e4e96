"""The PiCIE demo table: PiCIE against its starting points and baselines, over several seeds (val mIoU).

    pixcontrast fit --config synthetic_pretrain   # once: the pretrained encoder
    python examples/picie_baselines.py --seeds 0 1 2

The paper's protocol on the synthetic scenes: PiCIE starts from an encoder pretrained with labels on another task
(``synthetic_pretrain.yaml``: other classes, other images; the paper uses ImageNet) and learns the demo's classes
without labels. For every seed:

- **raw colours**: k-means (K clusters) on the RGB values of training pixels, each val pixel labelled by its
  nearest centroid;
- **pretrained encoder + k-means**: PiCIE's network (ResNet-18 + light FPN) as PiCIE starts it (the pretrained
  encoder, a fresh FPN), batch-norm statistics re-estimated on the demo's training images, k-means (K, cosine) on
  its training-pixel features: the paper's "before training" row;
- **PiCIE**: ``synthetic_picie.yaml`` trained with ``pixcontrast fit`` from the pretrained encoder;
- **PiCIE from random weights**: the same with ``weights_path: null``;
- **PiCIE+H**: the same as PiCIE with the auxiliary over-clustering head (``--over-clusters``) trained jointly;
  scored like PiCIE on its main head (K clusters, one-to-one), as the paper's PiCIE+H row;
- **PiCIE+H, over-clustering head**: the same run's auxiliary head, scored by many-to-one matching of its
  clusters (``val/over_miou``).

Clusters are matched to classes on the val set (:class:`~pixcontrast.metrics.HungarianMatchedSegmentation`,
one-to-one; many-to-one for the over-clustering head). Prints one line per seed, then mean +- std and the ratios
of PiCIE and PiCIE+H to their start.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from pixcontrast.bundled_configs import bundled_config
from pixcontrast.cluster import KMeans
from pixcontrast.data.base import IMAGENET_MEAN, IMAGENET_STD
from pixcontrast.data.picie_views import PiCIEDataModule
from pixcontrast.data.synthetic import SyntheticScenesDataModule
from pixcontrast.metrics import HungarianMatchedSegmentation
from pixcontrast.models.fpn import PiCIENetwork

CONFIG = bundled_config("synthetic_picie")
MAX_CLUSTER_POINTS = 200_000
ROWS = (
    "raw colours",
    "pretrained encoder + k-means",
    "PiCIE",
    "PiCIE from random weights",
    "PiCIE+H",
    "PiCIE+H, over-clustering head",
)


def build_datamodule(config: dict) -> PiCIEDataModule:
    """The config's datamodule (synthetic scenes wrapped for PiCIE), set up for fitting."""
    data = config["data"]["init_args"]
    inner = SyntheticScenesDataModule(**data["datamodule"]["init_args"])
    datamodule = PiCIEDataModule(inner, **{k: v for k, v in data.items() if k != "datamodule"})
    datamodule.setup("fit")
    return datamodule


def _pixels(maps: torch.Tensor) -> torch.Tensor:
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def score(datamodule: PiCIEDataModule, num_clusters: int, label_fn: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """Hungarian-matched val ``miou`` and ``pixel_accuracy`` of ``label_fn(images) -> B x H x W cluster ids``."""
    metric = HungarianMatchedSegmentation(datamodule.num_classes, num_clusters)
    for batch in datamodule.val_dataloader():
        metric.update(label_fn(batch["image"]), batch["mask"])
    result = metric.compute()
    return {"miou": result["miou"].item(), "pixel_accuracy": result["pixel_accuracy"].item()}


def _subsample(points: torch.Tensor, seed: int) -> torch.Tensor:
    if len(points) <= MAX_CLUSTER_POINTS:
        return points
    generator = torch.Generator().manual_seed(seed)
    return points[torch.randperm(len(points), generator=generator)[:MAX_CLUSTER_POINTS]]


def raw_colour_kmeans(datamodule: PiCIEDataModule, num_clusters: int, seed: int) -> dict:
    """k-means on the training pixels' colours, evaluated on the val set."""
    dataset = datamodule.datamodule.build_dataset("train")
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = torch.stack([torch.from_numpy(dataset.load_sample(i).image).permute(2, 0, 1) for i in range(len(dataset))])
    colours = _subsample(_pixels((images.float() / 255 - mean) / std), seed)
    kmeans = KMeans(num_clusters, metric="euclidean", seed=seed).fit(colours)

    def label(images: torch.Tensor) -> torch.Tensor:
        return kmeans.predict(_pixels(images)).view(images.shape[0], *images.shape[-2:])

    return score(datamodule, num_clusters, label)


@torch.no_grad()
def network_kmeans(datamodule: PiCIEDataModule, config: dict, seed: int) -> dict:
    """k-means on the features of PiCIE's network as the config builds it before training, on the val set.

    The FPN is drawn with ``seed``; the encoder has the config's ``weights_path`` (random when null). Batch-norm
    statistics are re-estimated on the training images (cumulative average) before the features are taken.
    """
    model_args = config["model"]["init_args"]
    num_clusters = model_args["num_clusters"]
    torch.manual_seed(seed)
    network = PiCIENetwork(
        model_args.get("encoder", "resnet18"),
        model_args.get("feature_dim", 128),
        weights_path=model_args.get("weights_path"),
    )
    train = datamodule.train_dataloader()
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    network.train()
    for batch in train:
        network(batch["image2"])
    network.eval()
    features = _subsample(torch.cat([_pixels(network(batch["image2"])) for batch in train]), seed)
    kmeans = KMeans(num_clusters, metric="cosine", seed=seed).fit(features)

    def label(images: torch.Tensor) -> torch.Tensor:
        maps = network(images)
        clusters = kmeans.predict(_pixels(maps)).view(maps.shape[0], 1, *maps.shape[-2:]).float()
        return F.interpolate(clusters, size=images.shape[-2:], mode="nearest").long()[:, 0]

    return score(datamodule, num_clusters, label)


def train_picie(config_path: Path, seed: int, extra_args: list[str] = ()) -> tuple[dict, float]:
    """Train PiCIE with the config, ``seed`` and extra CLI arguments; return (final val metrics, wall seconds)."""
    from pixcontrast.cli import run_lightning

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        cli = run_lightning(
            [
                "fit",
                "--config",
                str(config_path),
                f"--seed_everything={seed}",
                f"--trainer.default_root_dir={root}",
                "--trainer.logger=false",
                "--trainer.enable_progress_bar=false",
                *extra_args,
            ]
        )
        seconds = time.perf_counter() - start
    return {
        key.removeprefix("val/"): value.item()
        for key, value in cli.trainer.callback_metrics.items()
        if key.startswith("val/") and value.numel() == 1
    }, seconds


def measure_seed(config_path: Path, config: dict, seed: int, over_clusters: int, skip_picie: bool) -> dict:
    """Every row of the table for one seed: row name -> {miou, pixel_accuracy[, seconds]}."""
    num_clusters = config["model"]["init_args"]["num_clusters"]
    datamodule = build_datamodule(config)
    rows = {
        "raw colours": raw_colour_kmeans(datamodule, num_clusters, seed),
        "pretrained encoder + k-means": network_kmeans(datamodule, config, seed),
    }
    if skip_picie:
        return rows
    runs = {
        "PiCIE": [],
        "PiCIE from random weights": ["--model.init_args.weights_path=null"],
        "PiCIE+H": [f"--model.init_args.over_clusters={over_clusters}"],
    }
    for name, extra in runs.items():
        metrics, seconds = train_picie(config_path, seed, extra)
        rows[name] = {"miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"], "seconds": seconds}
        if name == "PiCIE+H":
            rows["PiCIE+H, over-clustering head"] = {
                "miou": metrics["over_miou"],
                "pixel_accuracy": metrics["over_pixel_accuracy"],
            }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--over-clusters", type=int, default=24, help="K of PiCIE+H's over-clustering head")
    parser.add_argument("--skip-picie", action="store_true", help="only compute the two k-means baselines")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    results: dict[str, list[float]] = {name: [] for name in ROWS}
    for seed in args.seeds:
        rows = measure_seed(args.config, config, seed, args.over_clusters, args.skip_picie)
        parts = []
        for name, values in rows.items():
            results[name].append(values["miou"])
            timing = f" ({values['seconds']:.0f} s)" if "seconds" in values else ""
            parts.append(f"{name} {100 * values['miou']:.2f}{timing}")
        print(f"seed {seed}: " + " | ".join(parts), flush=True)
    for name, values in results.items():
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"{name:30s} mIoU {100 * statistics.mean(values):.2f} +- {100 * spread:.2f}")
    start = statistics.mean(results["pretrained encoder + k-means"])
    for name in ("PiCIE", "PiCIE+H"):
        if results[name]:
            print(f"{name} / pretrained encoder + k-means: {statistics.mean(results[name]) / start:.2f}x")


if __name__ == "__main__":
    main()
