"""``--trainer.precision=bf16-mixed``: both modules train without NaN; contrast loss and k-means run in fp32."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CONTRASTIVE, PICIE, load, model_config, picie_data, probe, run_local, synthetic_data, write_config

MEMORY = {"memory_size": 16, "pixels_per_image": 2}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "data", "callbacks"),
    [
        (model_config(CONTRASTIVE, contrast=MEMORY), synthetic_data(), []),
        (model_config(PICIE), picie_data(), [{"class_path": "pixcontrast.callbacks.KMeansRefresh"}]),
    ],
    ids=["contrastive_memory", "picie"],
)
def test_bf16_mixed_trains_without_nan(tmp_path, model, data, callbacks):
    config = write_config(
        tmp_path / "config.yaml",
        model,
        data,
        tmp_path,
        callbacks=[*callbacks, probe(tmp_path / "probe")],
        precision="bf16-mixed",
        max_steps=3,
    )
    run_local("fit", config, "--checkpoint.save_top_k=0")
    state = load(tmp_path / "probe" / "rank0.pt")
    assert len(state["losses"]) == 3 and all(math.isfinite(loss) and loss > 0 for loss in state["losses"])
    for key, value in state["state_dict"].items():
        if value.is_floating_point():
            assert value.dtype == torch.float32, key  # mixed precision keeps fp32 weights and buffers
            assert torch.isfinite(value).all(), key


def test_contrast_loss_and_kmeans_compute_in_fp32_under_bf16_autocast():
    from pixcontrast.cluster import KMeans
    from pixcontrast.data.synthetic import SyntheticScenesDataset
    from pixcontrast.modules import ContrastiveSegmenter

    torch.manual_seed(0)
    module = ContrastiveSegmenter(4, **model_config(CONTRASTIVE, contrast=MEMORY)["init_args"])
    dataset = SyntheticScenesDataset(2, num_classes=4, image_size=48)
    batch = {key: torch.stack([dataset[i][key] for i in range(2)]) for key in ("image", "mask")}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = module.model.forward_train(batch["image"])
        embeddings = module.contrast.embed(output.features)
        module.compute_losses(batch)  # contrasts with the empty bank, then enqueues the bf16 embeddings
        losses = module.compute_losses(batch)
    assert embeddings.dtype == torch.bfloat16  # autocast is active in the network
    assert module.contrast.memory_bank.queue.dtype == torch.float32
    assert losses["contrast"].dtype == torch.float32 and losses["ce"].dtype == torch.float32
    assert losses["contrast"] > 0
    features = embeddings.detach().permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kmeans = KMeans(3, max_iter=5, metric="cosine").fit(features)
    assert kmeans.centroids.dtype == torch.float32 and torch.isfinite(kmeans.centroids).all()
