"""PiCIE on the synthetic scenes against two baselines, over several seeds (Hungarian-matched val mIoU).

    python examples/picie_baselines.py --seeds 0 1 2

For every seed:

- **raw colours**: k-means (K clusters) on the RGB values of training pixels, each val pixel labelled by its
  nearest centroid;
- **untrained encoder**: the same network as PiCIE (ResNet-18 + light FPN) at its random initialisation, batch-norm
  statistics estimated on the training images, k-means (K, cosine) on its training-pixel features;
- **PiCIE**: ``examples/configs/synthetic_picie.yaml`` trained with ``pixcontrast fit`` (wall time reported).

All three are scored the same way: clusters matched one-to-one to classes on the val set
(:class:`~pixcontrast.metrics.HungarianMatchedSegmentation`). Prints one line per seed and the mean +- std.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from pixcontrast.cluster import KMeans
from pixcontrast.data.base import IMAGENET_MEAN, IMAGENET_STD
from pixcontrast.data.picie_views import PiCIEDataModule
from pixcontrast.data.synthetic import SyntheticScenesDataModule
from pixcontrast.metrics import HungarianMatchedSegmentation
from pixcontrast.models.fpn import PiCIENetwork

CONFIG = Path(__file__).resolve().parent / "configs" / "synthetic_picie.yaml"
MAX_CLUSTER_POINTS = 200_000


def build_datamodule(config: dict) -> PiCIEDataModule:
    """The config's datamodule (synthetic scenes wrapped for PiCIE), set up for fitting."""
    data = config["data"]["init_args"]
    inner = SyntheticScenesDataModule(**data["datamodule"]["init_args"])
    datamodule = PiCIEDataModule(inner, **{k: v for k, v in data.items() if k != "datamodule"})
    datamodule.setup("fit")
    return datamodule


def _pixels(maps: torch.Tensor) -> torch.Tensor:
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def _score(datamodule: PiCIEDataModule, num_clusters: int, label_fn) -> float:
    """Hungarian-matched val mIoU of ``label_fn(images) -> B x H x W cluster ids``."""
    metric = HungarianMatchedSegmentation(datamodule.num_classes, num_clusters)
    for batch in datamodule.val_dataloader():
        metric.update(label_fn(batch["image"]), batch["mask"])
    return metric.compute()["miou"].item()


def _subsample(points: torch.Tensor, seed: int) -> torch.Tensor:
    if len(points) <= MAX_CLUSTER_POINTS:
        return points
    generator = torch.Generator().manual_seed(seed)
    return points[torch.randperm(len(points), generator=generator)[:MAX_CLUSTER_POINTS]]


def raw_colour_kmeans(datamodule: PiCIEDataModule, num_clusters: int, seed: int) -> float:
    """k-means on the training pixels' colours, evaluated on the val set."""
    dataset = datamodule.datamodule.build_dataset("train")
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = torch.stack([torch.from_numpy(dataset.load_sample(i).image).permute(2, 0, 1) for i in range(len(dataset))])
    colours = _subsample(_pixels((images.float() / 255 - mean) / std), seed)
    kmeans = KMeans(num_clusters, metric="euclidean", seed=seed).fit(colours)

    def label(images: torch.Tensor) -> torch.Tensor:
        return kmeans.predict(_pixels(images)).view(images.shape[0], *images.shape[-2:])

    return _score(datamodule, num_clusters, label)


@torch.no_grad()
def untrained_encoder_kmeans(datamodule: PiCIEDataModule, config: dict, seed: int) -> float:
    """k-means on the features of the randomly initialised PiCIE network, evaluated on the val set."""
    model_args = config["model"]["init_args"]
    num_clusters = model_args["num_clusters"]
    torch.manual_seed(seed)
    network = PiCIENetwork(model_args.get("encoder", "resnet18"), model_args.get("feature_dim", 128))
    train = datamodule.train_dataloader()
    for module in network.modules():  # cumulative batch-norm statistics over the training images
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

    return _score(datamodule, num_clusters, label)


def train_picie(config_path: Path, seed: int) -> tuple[float, float]:
    """Train PiCIE with the config and ``seed``; return (final val mIoU, wall seconds)."""
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
            ]
        )
        seconds = time.perf_counter() - start
    return cli.trainer.callback_metrics["val/miou"].item(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--skip-picie", action="store_true", help="only compute the two baselines")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    num_clusters = config["model"]["init_args"]["num_clusters"]
    results: dict[str, list[float]] = {"raw colours": [], "untrained encoder": [], "PiCIE": []}
    for seed in args.seeds:
        datamodule = build_datamodule(config)
        results["raw colours"].append(raw_colour_kmeans(datamodule, num_clusters, seed))
        results["untrained encoder"].append(untrained_encoder_kmeans(datamodule, config, seed))
        line = f"seed {seed}: raw colours {results['raw colours'][-1]:.4f}  "
        line += f"untrained encoder {results['untrained encoder'][-1]:.4f}"
        if not args.skip_picie:
            miou, seconds = train_picie(args.config, seed)
            results["PiCIE"].append(miou)
            line += f"  PiCIE {miou:.4f} ({seconds:.0f} s)"
        print(line, flush=True)
    for name, values in results.items():
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"{name:18s} mIoU {100 * statistics.mean(values):.2f} +- {100 * spread:.2f}")


if __name__ == "__main__":
    main()
