"""Time of one PiCIE training epoch on the synthetic scenes, split into the clustering pass and training.

    python benchmarks/bench_picie_epoch.py [--quick]

Runs ``pixcontrast.modules.PiCIE`` with ``KMeansRefresh`` under a Lightning ``Trainer`` (CPU or the first GPU)
for two epochs and reports the second (the first includes warm-up). Clustering = from the module's
``on_cluster_start`` to ``on_cluster_end`` hook plus the centroid fit up to ``set_centroids``; training = the
rest of the epoch (forward, loss, backward, optimiser). The baseline of the ratio is the whole epoch: the
target is ``cluster_fraction <= 0.15``. Prints one JSON line; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import lightning as L
import torch

from pixcontrast.callbacks import KMeansRefresh
from pixcontrast.data.picie_views import PiCIEDataModule
from pixcontrast.data.synthetic import SyntheticScenesDataModule
from pixcontrast.modules.picie import PiCIE

TARGET_CLUSTER_FRACTION = 0.15


class TimedPiCIE(PiCIE):
    """PiCIE that records the wall time of each clustering pass (hook to ``set_centroids``)."""

    def on_cluster_start(self) -> None:
        _synchronize(self.device)
        self._cluster_started = time.perf_counter()
        super().on_cluster_start()

    def set_centroids(self, centroids) -> None:
        super().set_centroids(centroids)
        _synchronize(self.device)
        self.cluster_seconds.append(time.perf_counter() - self._cluster_started)


class EpochTimer(L.Callback):
    """Wall time of each training epoch, from before the clustering pass to the end of training."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _synchronize(pl_module.device)
        self.seconds.append(time.perf_counter() - self._started)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller images (a smoke run)")
    parser.add_argument(
        "--cluster-fraction",
        type=float,
        default=0.25,
        help="fraction of the training batches the clustering pass reads (KMeansRefresh max_batches; "
        "synthetic_picie.yaml reads 4 of 16 batches = 0.25)",
    )
    parser.add_argument("--max-points", type=int, default=1_000_000, help="KMeansRefresh max_points per view")
    args = parser.parse_args()
    if not 0.0 < args.cluster_fraction <= 1.0:
        raise ValueError(f"--cluster-fraction must be in (0, 1], got {args.cluster_fraction}")
    num_train, size, batch_size = (32, 48, 8) if args.quick else (256, 64, 16)
    max_batches = max(1, math.ceil(args.cluster_fraction * num_train / batch_size))
    L.seed_everything(0, verbose=False)
    inner = SyntheticScenesDataModule(
        num_classes=8, image_size=size, num_train=num_train, num_val=8, batch_size=batch_size
    )
    datamodule = PiCIEDataModule(inner, view_size=size, input_size=size, eval_size=size)
    model = TimedPiCIE(num_classes=8, num_clusters=8, lr=1e-3)
    model.cluster_seconds = []
    timer = EpochTimer()  # listed before KMeansRefresh so that its epoch start precedes the clustering pass
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer, KMeansRefresh(max_batches=max_batches, max_points=args.max_points, progress_bar=False)],
    )
    trainer.fit(model, datamodule=datamodule)
    epoch, cluster = timer.seconds[-1], model.cluster_seconds[-1]
    result = {
        "benchmark": "picie_epoch",
        "device": str(model.device),
        "images_per_epoch": num_train,
        "image_size": size,
        "batch_size": batch_size,
        "cluster_batches": max_batches,
        "cluster_max_points": args.max_points,
        "epoch_s": round(epoch, 3),
        "cluster_s": round(cluster, 3),
        "train_s": round(epoch - cluster, 3),
        "cluster_fraction": round(cluster / epoch, 4),
        "target_cluster_fraction": TARGET_CLUSTER_FRACTION,
        "meets_target": cluster / epoch <= TARGET_CLUSTER_FRACTION,
    }
    print(f"epochs: {timer.seconds}, clustering: {model.cluster_seconds}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
