"""`pixcontrast fit` under DDP with 2 CPU processes (gloo), compared with one process.

Two set-ups, each testing what the math guarantees:

* Sharded (the default: Lightning's ``DistributedSampler`` gives each rank its own images). The ranks must end
  with identical weights, optimiser state and memory bank (the bank all-gathers new rows), the bank must hold
  the rows of *every* rank's images, and validation metrics must equal a one-process ``validate`` of the same
  checkpoint (torchmetrics sums the confusion matrices over ranks). Weights are *not* compared with a
  one-process run: batch norm normalises with per-rank statistics (sync batch norm needs a GPU), and anchors
  are sampled per rank (per image group and per rank budget), so the losses legitimately differ.
* Replicated (``--trainer.use_distributed_sampler=false`` with the whole training set in one batch): every rank
  sees the one-process batch, so the global batch is that batch twice. Mean-reduced losses and per-rank batch
  norm then give the same gradients, and DDP's average of two identical gradients is exact, so 2 processes must
  reproduce the one-process run (which re-seeds where Lightning's DDP strategy does, ``state_probe.ReseedAsDDP``):
  weights, optimiser state, LR schedule, per-step losses and metrics.
  PiCIE is tested sharded only (see ``test_sharded_picie_clusters_globally``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CONTRASTIVE,
    PICIE,
    assert_optimizer_states_equal,
    assert_states_equal,
    load,
    model_config,
    picie_data,
    probe,
    run_ddp,
    run_local,
    synthetic_data,
    write_config,
)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

MEMORY = {"memory_size": 64, "pixels_per_image": 2}
FEATURE_STRIDE = 8
RESEED = {"class_path": "state_probe.ReseedAsDDP"}


@pytest.fixture(scope="module")
def sharded_memory_run(tmp_path_factory) -> Path:
    """2 ranks x 2 images, 2 steps (one epoch of 8 images), memory bank on, contrast from step 0."""
    root = tmp_path_factory.mktemp("ddp_memory")
    config = write_config(
        root / "config.yaml",
        model_config(CONTRASTIVE, contrast=MEMORY),
        synthetic_data(num_train=8, num_val=4),
        root,
        callbacks=[probe(root / "probe")],
    )
    run_ddp("fit", config, "--checkpoint.save_top_k=0")
    return root


def expected_bank_rows(names: list[str], image_size: int = 48, num_classes: int = 4) -> np.ndarray:
    """Rows the bank gains from ``names`` (synthetic train images): per class, pixel rows and segment rows."""
    from pixcontrast.data.synthetic import SyntheticScenesDataset
    from pixcontrast.losses.sampling import downsample_labels

    dataset = SyntheticScenesDataset(8, "train", num_classes, image_size, seed=0)
    rows = np.zeros((num_classes, 2), dtype=np.int64)
    side = image_size // FEATURE_STRIDE
    for name in names:
        mask = dataset[int(name.split("_")[-1])]["mask"][None]
        counts = torch.bincount(downsample_labels(mask, (side, side)).flatten(), minlength=256)[:num_classes]
        rows[:, 0] += counts.clamp(max=MEMORY["pixels_per_image"]).numpy()
        rows[:, 1] += (counts > 0).long().numpy()
    return rows


def test_sharded_ranks_hold_identical_state(sharded_memory_run):
    rank0, rank1 = (load(sharded_memory_run / "probe" / f"rank{r}.pt") for r in range(2))
    assert rank0["world_size"] == 2 and rank0["global_step"] == rank1["global_step"] == 2
    seen0 = {name for step in rank0["names"] for name in step}
    seen1 = {name for step in rank1["names"] for name in step}
    assert not seen0 & seen1 and len(seen0 | seen1) == 8  # each rank trained on its own shard
    assert_states_equal(rank0["state_dict"], rank1["state_dict"])  # weights, BN stats and memory bank
    assert_optimizer_states_equal(rank0["optimizer"], rank1["optimizer"])
    assert rank0["scheduler"] == rank1["scheduler"]
    assert rank0["metrics"]["val/miou"] == rank1["metrics"]["val/miou"]


def test_sharded_memory_bank_is_gathered(sharded_memory_run):
    state = load(sharded_memory_run / "probe" / "rank0.pt")
    names = [
        name for r in range(2) for step in load(sharded_memory_run / "probe" / f"rank{r}.pt")["names"] for name in step
    ]
    filled = state["state_dict"]["contrast.criterion.memory_bank.filled"].numpy()
    assert (filled == expected_bank_rows(names)).all()  # rows of both ranks' 8 images, not of one rank's 4
    checkpoint = load(sharded_memory_run / "checkpoints" / "last.ckpt")
    assert_states_equal(
        {k: v for k, v in checkpoint["state_dict"].items() if "memory_bank" in k},
        {k: v for k, v in state["state_dict"].items() if "memory_bank" in k},
    )


def test_sharded_metrics_equal_one_process_validate(sharded_memory_run, tmp_path):
    checkpoint = sharded_memory_run / "checkpoints" / "last.ckpt"
    ddp_metrics = load(sharded_memory_run / "probe" / "rank0.pt")["metrics"]
    config = write_config(
        tmp_path / "config.yaml",
        model_config(CONTRASTIVE, contrast=MEMORY),
        synthetic_data(num_train=8, num_val=4),
        tmp_path,
    )
    cli = run_local("validate", config, f"--ckpt_path={checkpoint}")
    local = {key: float(value) for key, value in cli.trainer.callback_metrics.items()}
    for key in ("val/miou", "val/pixel_accuracy", "val/iou_grain"):
        assert local[key] == pytest.approx(ddp_metrics[key], abs=1e-6), key
    # val/loss is a mean of per-batch means (each over its labelled pixels): the batches differ between one and
    # two processes, so it agrees only approximately; the dataset-level metrics above are exact.
    assert local["val/loss"] == pytest.approx(ddp_metrics["val/loss"], rel=1e-2)


def replicated_runs(
    root: Path, model: dict, data: dict, steps: int, callbacks: list | None = None
) -> tuple[dict, dict]:
    """The same run with 1 process and with 2 replicated processes; returns both probes (rank 0)."""
    states = []
    for devices in (1, 2):
        run_root = root / f"devices{devices}"
        run_root.mkdir()
        config = write_config(
            run_root / "config.yaml",
            model,
            data,
            run_root,
            callbacks=[*(callbacks or []), probe(run_root / "probe"), *([RESEED] if devices == 1 else [])],
            max_steps=steps,
            use_distributed_sampler=False,
        )
        if devices == 1:
            run_local("fit", config, "--checkpoint.save_top_k=0")
        else:
            run_ddp("fit", config, "--checkpoint.save_top_k=0")
        states.append([load(path) for path in sorted((run_root / "probe").glob("rank*.pt"))])
    (single,), (rank0, rank1) = states
    assert_states_equal(rank0["state_dict"], rank1["state_dict"])
    return single, rank0


def assert_same_training(single: dict, replicated: dict) -> None:
    assert replicated["global_step"] == single["global_step"]
    assert replicated["names"] == single["names"]
    assert replicated["losses"] == pytest.approx(single["losses"], rel=1e-5)
    # not bitwise: the DDP ranks run with one thread each and reduce in another order than the 2-thread reference
    assert_states_equal(single["state_dict"], replicated["state_dict"], atol=1e-5, rtol=1e-4)
    assert_optimizer_states_equal(single["optimizer"], replicated["optimizer"], atol=1e-5, rtol=1e-4)
    assert single["scheduler"] == replicated["scheduler"]
    for key in ("val/miou", "val/pixel_accuracy"):
        assert replicated["metrics"][key] == pytest.approx(single["metrics"][key], abs=1e-6)


def test_replicated_contrast_matches_one_process(tmp_path):
    single, replicated = replicated_runs(
        tmp_path, model_config(CONTRASTIVE), synthetic_data(num_train=2, batch_size=2), steps=2
    )
    assert all(loss > 0 for loss in single["losses"])
    assert_same_training(single, replicated)


def test_sharded_picie_clusters_globally(tmp_path):
    """PiCIE + KMeansRefresh, 2 ranks with their own shards, 2 epochs (a refresh before each).

    k-means is global: every rank fits on all ranks' points (the logged point count is the global one) and holds
    the same centroids. That the distributed fit equals one process clustering the union of the shards is
    tested in tests/cluster/test_kmeans_ddp.py. Equality with a one-process CLI run is not expected: PiCIE
    clusters and trains with batch statistics, which are per rank, and duplicating the data on every rank
    would change the k-means initialisation (it subsamples by global row index).
    """
    from pixcontrast.models.fpn import PiCIENetwork

    config = write_config(
        tmp_path / "config.yaml",
        model_config(PICIE),
        picie_data(num_train=4, batch_size=2),
        tmp_path,
        callbacks=[{"class_path": "pixcontrast.callbacks.KMeansRefresh"}, probe(tmp_path / "probe")],
    )
    run_ddp("fit", config, "--checkpoint.save_top_k=0")
    rank0, rank1 = (load(tmp_path / "probe" / f"rank{r}.pt") for r in range(2))
    assert all(set(step0).isdisjoint(step1) for step0, step1 in zip(rank0["names"], rank1["names"], strict=True))
    assert_states_equal(rank0["first_centroids"], rank1["first_centroids"])
    assert_states_equal(rank0["state_dict"], rank1["state_dict"])  # weights, centroids, matching
    assert_optimizer_states_equal(rank0["optimizer"], rank1["optimizer"])
    assert rank0["state_dict"]["heads.0.clustered"] and not torch.equal(
        rank0["first_centroids"]["heads.0.centroids"], rank0["state_dict"]["heads.0.centroids"]
    )  # refreshed at the second epoch
    height, width = PiCIENetwork("resnet10t", 16).eval()(torch.zeros(1, 3, 32, 32)).shape[-2:]
    assert rank0["metrics"]["kmeans/points_view1"] == 4 * height * width  # both ranks' images
    checkpoint = load(tmp_path / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(checkpoint["state_dict"]["heads.0.centroids"], rank0["state_dict"]["heads.0.centroids"])


def test_contrast_warm_up_under_ddp(tmp_path):
    """The projection head idles during the warm-up; DDP (without find_unused_parameters) must still reduce."""
    config = write_config(
        tmp_path / "config.yaml",
        model_config(CONTRASTIVE, contrast={**MEMORY, "warmup_steps": 2}),
        synthetic_data(num_train=8, num_val=2),
        tmp_path,
        callbacks=[probe(tmp_path / "probe")],
        max_steps=4,
    )
    run_ddp("fit", config, "--checkpoint.save_top_k=0")
    rank0, rank1 = (load(tmp_path / "probe" / f"rank{r}.pt") for r in range(2))
    assert rank0["global_step"] == rank1["global_step"] == 4
    assert_states_equal(rank0["state_dict"], rank1["state_dict"])
    assert rank0["state_dict"]["contrast.criterion.memory_bank.filled"].sum() > 0  # the contrast term ran after it
