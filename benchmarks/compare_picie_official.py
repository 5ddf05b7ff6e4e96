"""PiCIE side by side: the official training procedure vs ours, on the same embedded data, with ablations.

    pixcontrast fit --config synthetic_pretrain        # once: the pretrained encoder
    python benchmarks/compare_picie_official.py --official /path/to/PiCIE [--seeds 0 1 2] [--variants ours]

``--official`` is a checkout of https://github.com/janghyuncho/PiCIE. Nothing of it is part of this project: it is
imported from that path at run time and its own functions run the official procedure (``run_mini_batch_kmeans``:
faiss k-means on the first batches, then mini-batch updates; ``compute_labels``: a labelling pass in eval mode
that writes the labels to files, here in a temporary folder; ``initialize_classifier`` + ``freeze_all``: frozen
1x1-convolution heads with the raw centroids; its frequency weights in ``CrossEntropyLoss``; ``train``: the
within/across-view loss and the optimiser steps; ``evaluate``). Its CUDA calls run on the CPU: ``Tensor.cuda``
and ``Module.cuda`` become no-ops and faiss's GPU index becomes faiss-cpu's ``IndexFlatL2`` while it runs. Two
imports that newer libraries removed (``sklearn.utils.linear_assignment_``, ``torchvision.models.utils``) are
provided from scipy and torch.hub. Its COCO loaders are replaced by adapters over our data: the same images, the
same views (``G(P1 x)``, ``P2 x`` and ``G`` on the features, per epoch), the same center crops.

The official k-means runs with the settings of its training scripts (``sh_files/train_picie.sh``; the Cityscapes
script has the same), scaled to the data: cluster batches twice the training batch (256 vs 128), faiss k-means
(20 iterations) on the same fraction of an epoch's cluster batches as the script's 20 of COCO-Stuff's 194 (at
least one batch), then one mini-batch centroid update per later batch. The JSON line prints the scaled values.

Both sides start from the same network (PiCIE's ResNet-18 + FPN, the pretrained encoder of
``synthetic_picie.yaml``, the FPN drawn from the seed), train the config's epochs with its optimiser, training
batch size and K, and are scored by the same Hungarian matching on the val set (the official run also by its own
``evaluate``), in two evaluations after the last epoch:

- **last centroids**: the official run's view-1 head of its last epoch; our module's own val metrics;
- **fresh clusters**: k-means fitted afresh on the trained network's features of the training images through
  the evaluation transform (center crops, no labels), its centroids as a frozen head on the val crops. The
  official run: its own "Evaluate with fresh clusters" (``run_mini_batch_kmeans`` with ``view=-1`` over the
  shuffled crops in cluster batches, the settings above, ``--repeats 1``); ours: the
  :class:`~pixcontrast.callbacks.FreshClusterEvaluation` callback in the same run (``val/fresh_miou``).

Our run validates once, after its last epoch (``check_val_every_n_epoch`` = the epochs), where both evaluations
run; the official run is evaluated once too. Our module runs with its defaults (``ours``) and, as ablations, with
each of the official choices switched on alone (``label_source: epoch``, ``class_weights: official``,
``logits: dot`` with ``temperature: 1`` and Euclidean k-means), and with all three. Variants are interleaved per
seed; the JSON line gives the medians over seeds and the per-seed values.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from picie_baselines import CONFIG, build_datamodule, score, train_picie  # noqa: E402

from pixcontrast.data.picie_views import PiCIEDataModule  # noqa: E402
from pixcontrast.losses.picie import warp_features  # noqa: E402
from pixcontrast.models.fpn import PiCIENetwork  # noqa: E402

# Our module's switches: each official choice alone, then all three (the official procedure in our code).
OFFICIAL_LABELS = {"label_source": "epoch"}
OFFICIAL_WEIGHTS = {"class_weights": "official"}
OFFICIAL_LOGITS = {"logits": "dot", "temperature": 1.0}
VARIANTS = {
    "ours": {},
    "ours + labels fixed per epoch": OFFICIAL_LABELS,
    "ours + official class weights": OFFICIAL_WEIGHTS,
    "ours + dot logits, raw centroids": OFFICIAL_LOGITS,
    "ours + all three official choices": {**OFFICIAL_LABELS, **OFFICIAL_WEIGHTS, **OFFICIAL_LOGITS},
}

# The official k-means settings: sh_files/train_picie.sh of janghyuncho/PiCIE (train_picie_cityscapes.sh: the same).
OFFICIAL_SCRIPT = "sh_files/train_picie.sh"
OFFICIAL_BATCH_SIZE_CLUSTER = 256  # bsize -> --batch_size_cluster
OFFICIAL_BATCH_SIZE_TRAIN = 128  # --batch_size_train: train_picie.py's default, the script leaves it
OFFICIAL_KM_INIT = 20  # KM_INIT -> --num_init_batches: cluster batches of the initial faiss k-means
OFFICIAL_KM_NUM = 1  # KM_NUM -> --num_batches: cluster batches per mini-batch centroid update after it
OFFICIAL_KM_ITER = 20  # KM_ITER -> --kmeans_n_iter: faiss k-means iterations
OFFICIAL_TRAIN_IMAGES = 49_629  # COCO-Stuff curated train: curated/train2017/Coco164kFull_Stuff_Coarse_7.txt
OFFICIAL_CLUSTER_BATCHES = math.ceil(OFFICIAL_TRAIN_IMAGES / OFFICIAL_BATCH_SIZE_CLUSTER)  # 194


# ------------------------------------------------------------------------------------ the official code
def _stub_module(name: str, **attributes) -> None:
    """Register module ``name`` (and missing parents) with ``attributes`` unless it can be imported."""
    try:
        importlib.import_module(name)
        return
    except ImportError:
        pass
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if prefix not in sys.modules:
            try:
                importlib.import_module(prefix)
            except ImportError:
                sys.modules[prefix] = types.ModuleType(prefix)
    for key, value in attributes.items():
        setattr(sys.modules[name], key, value)


def _linear_assignment(cost: np.ndarray) -> np.ndarray:
    """The removed ``sklearn.utils.linear_assignment_.linear_assignment``: ``N x 2`` (row, column) pairs."""
    from scipy.optimize import linear_sum_assignment

    return np.stack(linear_sum_assignment(cost), axis=1)


def import_official(path: Path) -> types.SimpleNamespace:
    """Import the official ``commons`` (with ``utils``) and ``train_picie`` modules from the checkout at ``path``."""
    if not (path / "commons.py").is_file() or not (path / "utils.py").is_file():
        raise FileNotFoundError(
            f"--official {str(path)!r} is not a checkout of janghyuncho/PiCIE (no commons.py / utils.py); "
            "clone https://github.com/janghyuncho/PiCIE and pass its folder"
        )
    _stub_module("sklearn.utils.linear_assignment_", linear_assignment=_linear_assignment)
    _stub_module("torchvision.models.utils", load_state_dict_from_url=torch.hub.load_state_dict_from_url)
    sys.path.insert(0, str(path))
    return types.SimpleNamespace(
        commons=importlib.import_module("commons"), train_picie=importlib.import_module("train_picie")
    )


@contextlib.contextmanager
def official_on_cpu() -> Iterator[None]:
    """CUDA calls become no-ops and faiss's GPU flat index becomes the CPU one, for the duration."""
    import faiss

    patches = [
        (torch.Tensor, "cuda", lambda self, *args, **kwargs: self),
        (nn.Module, "cuda", lambda self, *args, **kwargs: self),
        (faiss, "StandardGpuResources", lambda: None),
        (faiss, "GpuIndexFlatConfig", types.SimpleNamespace),
        (faiss, "GpuIndexFlatL2", lambda resources, dim, config: faiss.IndexFlatL2(dim)),
    ]
    saved = [(owner, name, getattr(owner, name, None)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            if value is None:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


class OfficialViews(Dataset):
    """Our two-view training data in the official dataset's interface (``mode``, ``view``, ``transform_eqv``).

    ``mode="compute"`` items are ``(index, image of view 1 or 2, None)``; ``mode="train"`` items are ``(index,
    image1, image2, label1, label2)`` with the labels read from the files the official ``compute_labels`` wrote
    to ``label_dir``. View 1 already holds ``G`` (our ``G(P1 x)``), so ``transform_eqv`` leaves images as they are
    and warps feature maps with ``G``, exactly as our module does. The official procedure reads every image five
    times per epoch (two k-means passes, two labelling passes, training): the epoch's views are generated once
    (:meth:`set_epoch`) and kept in memory, so data generation costs both sides the same.
    """

    def __init__(self, datamodule: PiCIEDataModule, label_dir: Path) -> None:
        self.views = datamodule.train_dataset
        self.label_dir = label_dir
        self.mode = "compute"
        self.view = 1
        self.items: list[dict] = []

    def set_epoch(self, epoch: int) -> None:
        """Select and generate the views of ``epoch`` (the official ``reshuffle`` draws new views per epoch)."""
        self.views.set_epoch(epoch)
        self.items = [self.views[index] for index in range(len(self.views))]

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> tuple:
        item = self.items[index]
        if self.mode == "compute":
            return index, item["image1"] if self.view == 1 else item["image2"], None
        labels = []
        for view in (1, 2):
            flat = torch.load(self.label_dir / f"label_{view}" / f"{index}.pkl", weights_only=False)
            side = int(np.sqrt(len(flat)))
            labels.append(torch.as_tensor(flat, dtype=torch.int64).view(side, side))
        return index, item["image1"], item["image2"], *labels

    def transform_eqv(self, indices: list[int], maps: torch.Tensor) -> torch.Tensor:
        if maps.shape[1] <= 5:  # images: G is already in view 1
            return maps
        return warp_features(maps, default_collate([self.items[i]["geometry"] for i in indices]))


class OfficialCrops(Dataset):
    """Center crops of ours in the official evaluation datasets' interface: ``(index, image, label)`` items, the
    val crops (``eval_test``), or ``(index, image, None)``, the training images without labels (``eval_val``,
    what the official "Evaluate with fresh clusters" and our ``FreshClusterEvaluation`` cluster). ``view`` is set
    by the official ``run_mini_batch_kmeans``."""

    def __init__(self, dataset: Dataset, labelled: bool) -> None:
        self.dataset = dataset
        self.labelled = labelled
        self.view = -1

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        item = self.dataset[index]
        return index, item["image"], item["mask"] if self.labelled else None


def official_kmeans_settings(num_train: int, batch_size: int) -> dict[str, int]:
    """The official k-means settings scaled to ``num_train`` training images and training batches of
    ``batch_size``: cluster batches in the official ratio to the training batch, the initial k-means on the same
    fraction of an epoch's cluster batches (at least one), the official update period and iterations."""
    batch_size_cluster = batch_size * OFFICIAL_BATCH_SIZE_CLUSTER // OFFICIAL_BATCH_SIZE_TRAIN
    cluster_batches = math.ceil(num_train / batch_size_cluster)
    return {
        "batch_size_cluster": batch_size_cluster,
        "batch_size_train": batch_size,
        "cluster_batches": cluster_batches,
        "num_init_batches": max(1, round(OFFICIAL_KM_INIT * cluster_batches / OFFICIAL_CLUSTER_BATCHES)),
        "num_batches": OFFICIAL_KM_NUM,
        "kmeans_n_iter": OFFICIAL_KM_ITER,
    }


def official_settings_record(settings: dict[str, int]) -> dict:
    """The official script's values next to the scaled ones, for the JSON line."""
    return {
        "source": f"janghyuncho/PiCIE {OFFICIAL_SCRIPT}",
        "official": {
            "batch_size_cluster": OFFICIAL_BATCH_SIZE_CLUSTER,
            "batch_size_train": OFFICIAL_BATCH_SIZE_TRAIN,
            "cluster_batches": OFFICIAL_CLUSTER_BATCHES,
            "num_init_batches": OFFICIAL_KM_INIT,
            "num_batches": OFFICIAL_KM_NUM,
            "kmeans_n_iter": OFFICIAL_KM_ITER,
        },
        "scaled": settings,
    }


def run_official(official: types.SimpleNamespace, config: dict, seed: int, settings: dict[str, int]) -> dict:
    """The official procedure with its own functions on our data, k-means with ``settings``
    (:func:`official_kmeans_settings`); val metrics of view 1's last head and of fresh clusters (``fresh_*``)."""
    model_args = config["model"]["init_args"]
    inner = config["data"]["init_args"]["datamodule"]["init_args"]
    epochs = config["trainer"]["max_epochs"]
    logger = logging.getLogger("picie-official")
    logger.setLevel(logging.WARNING)
    commons = official.commons
    with tempfile.TemporaryDirectory() as label_dir, official_on_cpu():
        args = argparse.Namespace(
            seed=2021 + seed,
            in_dim=model_args.get("feature_dim", 128),
            K_train=model_args["num_clusters"],
            K_test=inner["num_classes"],
            metric_train="cosine",
            metric_test="cosine",
            kmeans_n_iter=settings["kmeans_n_iter"],
            num_init_batches=settings["num_init_batches"],
            num_batches=settings["num_batches"],
            equiv=True,
            no_balance=False,
            mse=False,
            save_model_path=label_dir,
            thing=False,
            stuff=False,
        )
        commons.fix_seed_for_reproducability(args.seed)
        datamodule = build_datamodule(config)
        model = PiCIENetwork(
            model_args.get("encoder", "resnet18"), args.in_dim, weights_path=model_args.get("weights_path")
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=model_args["lr"])
        dataset = OfficialViews(datamodule, Path(label_dir))
        cluster_size, train_size = settings["batch_size_cluster"], settings["batch_size_train"]
        cluster_loader = DataLoader(dataset, batch_size=cluster_size, shuffle=False, collate_fn=commons.collate_train)
        train_loader = DataLoader(dataset, batch_size=train_size, shuffle=True, collate_fn=commons.collate_train)
        eval_loader = DataLoader(
            OfficialCrops(datamodule.val_dataset, labelled=True), batch_size=train_size, collate_fn=commons.collate_eval
        )
        for epoch in range(epochs):
            dataset.set_epoch(epoch)
            dataset.mode = "compute"
            centroids1, _ = commons.run_mini_batch_kmeans(args, logger, cluster_loader, model, view=1)
            centroids2, _ = commons.run_mini_batch_kmeans(args, logger, cluster_loader, model, view=2)
            weight1 = commons.compute_labels(args, logger, cluster_loader, model, centroids1, view=1)
            weight2 = commons.compute_labels(args, logger, cluster_loader, model, centroids2, view=2)
            criterion1, criterion2 = nn.CrossEntropyLoss(weight=weight1), nn.CrossEntropyLoss(weight=weight2)
            classifier1, classifier2 = commons.initialize_classifier(args), commons.initialize_classifier(args)
            classifier1.module.weight.data = centroids1.unsqueeze(-1).unsqueeze(-1)
            classifier2.module.weight.data = centroids2.unsqueeze(-1).unsqueeze(-1)
            commons.freeze_all(classifier1)
            commons.freeze_all(classifier2)
            dataset.mode = "train"
            official.train_picie.train(
                args, logger, train_loader, model, classifier1, classifier2, criterion1, criterion2, optimizer, epoch
            )

        def scored(classifier: nn.Module, prefix: str) -> dict:
            """The head on the val crops: our Hungarian scorer and the official ``evaluate`` (eval mode)."""
            own_accuracy, own_result = commons.evaluate(args, logger, eval_loader, classifier, model)

            @torch.no_grad()
            def label(images: torch.Tensor) -> torch.Tensor:
                logits = classifier(F.normalize(model(images), dim=1))
                return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False).argmax(1)

            return {
                **{prefix + key: value for key, value in score(datamodule, args.K_train, label).items()},
                f"official_scorer_{prefix}miou": own_result["mean_iou"] / 100,
                f"official_scorer_{prefix}pixel_accuracy": own_accuracy / 100,
            }

        metrics = scored(classifier1, "")
        # "Evaluate with fresh clusters" (train_picie.py after training, --repeats 1): mini-batch k-means over the
        # shuffled center crops of the training images in cluster batches (the network in train mode, as its
        # run_mini_batch_kmeans sets it), a frozen head with those centroids on the val crops
        crops = DataLoader(
            OfficialCrops(datamodule.train_eval_dataloader().dataset, labelled=False),
            cluster_size,
            shuffle=True,
            collate_fn=commons.collate_train,
        )
        centroids, _ = commons.run_mini_batch_kmeans(args, logger, crops, model, view=-1)
        fresh = commons.initialize_classifier(args)
        fresh.module.weight.data = centroids.unsqueeze(-1).unsqueeze(-1)
        commons.freeze_all(fresh)
        metrics.update(scored(fresh, "fresh_"))
    return metrics


# ------------------------------------------------------------------------------------------------ ours
def run_ours(config: dict, seed: int, switches: dict, workdir: Path) -> dict:
    """Our module with ``switches`` (model arguments) on the config, validated once after the last epoch: its own
    val metrics and those of :class:`~pixcontrast.callbacks.FreshClusterEvaluation` (``fresh_*``), one run."""
    variant = copy.deepcopy(config)
    variant["model"]["init_args"].update(switches)
    if switches.get("logits") == "dot":  # the official k-means: Euclidean on the unit features, raw centroids
        for callback in variant["trainer"]["callbacks"]:
            if callback["class_path"].endswith("KMeansRefresh"):
                callback.setdefault("init_args", {})["metric"] = "euclidean"
    variant["trainer"]["check_val_every_n_epoch"] = variant["trainer"]["max_epochs"]
    variant["trainer"]["callbacks"].append(
        {
            "class_path": "pixcontrast.callbacks.FreshClusterEvaluation",
            "init_args": {"stages": ["val"], "seed": seed, "progress_bar": False},
        }
    )
    name = "_".join(f"{k}-{v}" for k, v in sorted(switches.items()))
    path = workdir / f"variant_{name}_seed{seed}.yaml"
    path.write_text(yaml.safe_dump(variant))
    metrics, _ = train_picie(path, seed)
    return {key: metrics[key] for key in ("miou", "pixel_accuracy", "fresh_miou", "fresh_pixel_accuracy")}


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="checkout of janghyuncho/PiCIE")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--epochs", type=int, default=None, help="override the config's max_epochs (both sides)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    if args.epochs is not None:
        config["trainer"]["max_epochs"] = args.epochs
    weights = config["model"]["init_args"].get("weights_path")
    if weights and not Path(weights).is_file():
        raise SystemExit(f"{weights} does not exist: run `pixcontrast fit --config synthetic_pretrain` first")
    official = import_official(args.official)
    batch_size = config["data"]["init_args"]["datamodule"]["init_args"]["batch_size"]
    settings = official_kmeans_settings(len(build_datamodule(config).train_dataset), batch_size)
    runs: dict[str, list[dict]] = {"official": [], **{name: [] for name in args.variants}}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            for name in runs:  # interleaved: every variant once per seed
                start = time.perf_counter()
                if name == "official":
                    result = run_official(official, config, seed, settings)
                else:
                    result = run_ours(config, seed, VARIANTS[name], Path(workdir))
                seconds[name].append(time.perf_counter() - start)
                runs[name].append(result)
                loads.append(os.getloadavg()[0])
                print(
                    json.dumps(
                        {
                            "seed": seed,
                            "run": name,
                            **{k: round(v, 4) for k, v in result.items()},
                            "seconds": round(seconds[name][-1], 1),
                            "load_avg_1min": round(loads[-1], 2),
                        }
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    summary = {
        name: {
            **{key: median([r[key] for r in results]) for key in results[0]},
            "per_seed": {key: [round(r[key], 4) for r in results] for key in results[0]},
            "seconds": round(statistics.median(seconds[name]), 1),
            "seconds_per_seed": [round(value, 1) for value in seconds[name]],
        }
        for name, results in runs.items()
    }
    ratios = {"last_centroids": "miou", "fresh_clusters": "fresh_miou"}
    line = {
        "benchmark": "picie_official_vs_ours",
        "data": "synthetic scenes (embedded demo)",
        "epochs": config["trainer"]["max_epochs"],
        "seeds": args.seeds,
        "official_kmeans": official_settings_record(settings),
        "results": summary,
        "ratio_ours_vs_official_miou": {
            evaluation: round(summary["ours"][key] / summary["official"][key], 3) for evaluation, key in ratios.items()
        }
        if "ours" in summary
        else None,
        "load_avg_1min": {
            "min": round(min(loads), 2),
            "median": round(statistics.median(loads), 2),
            "max": round(max(loads), 2),
        },
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
