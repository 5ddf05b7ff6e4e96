"""CUDA paths against the CPU: k-means, the contrast losses, bf16 training, NCCL through the command, export.

Tolerances are float32 ones (TF32 is off, see conftest.py): the two devices sum in different orders, so results
agree to about 1e-5 relative, not bit for bit.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tiny_runs import quiet_trainer

from pixcontrast.callbacks import KMeansRefresh
from pixcontrast.cluster import KMeans
from pixcontrast.data import PiCIEDataModule, SyntheticScenesDataModule
from pixcontrast.losses import (
    PixelContrastLoss,
    PixelContrastSettings,
    PixelMemoryBank,
    class_memory_contrastive_loss,
    supervised_contrastive_loss,
)
from pixcontrast.modules import ContrastiveSegmenter, PiCIE, SegmentationModule

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]
CUDA = torch.device("cuda")


def _blobs(n: int, dim: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n x dim`` points around ``k`` well-separated centres (no point near a cluster boundary) and ``k`` initial
    centroids: a perturbed copy of the centres, so every run starts from the same place on every device."""
    generator = torch.Generator().manual_seed(seed)
    centres = 10.0 * torch.randn(k, dim, generator=generator)
    points = centres[torch.arange(n) % k] + 0.5 * torch.randn(n, dim, generator=generator)
    return points, centres + torch.randn(k, dim, generator=generator)


def _synthetic(batch_size: int = 4, **kwargs) -> SyntheticScenesDataModule:
    return SyntheticScenesDataModule(
        num_classes=4, image_size=64, num_train=8, num_val=4, num_test=4, batch_size=batch_size, num_workers=0, **kwargs
    )


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    """One GPU, no sanity check, nothing written but what the test asks for; ``kwargs``: further Trainer arguments."""
    return quiet_trainer(tmp_path, **{"accelerator": "gpu", "num_sanity_val_steps": 0, **kwargs})


def _assert_finite_metrics(trainer: L.Trainer, prefix: str) -> None:
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
    assert logged, f"nothing logged under {prefix!r}"
    assert all(math.isfinite(v) for v in logged.values()), logged


# ------------------------------------------------------------------------------------------------------ k-means
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_cuda_kmeans_equals_cpu_kmeans_from_the_same_centroids(metric: str) -> None:
    points, init = _blobs(20_000, 32, 16)
    cpu = KMeans(16, max_iter=10, metric=metric).fit(points, init_centroids=init)
    cuda = KMeans(16, max_iter=10, metric=metric).fit(points.to(CUDA), init_centroids=init.to(CUDA))
    assert cuda.centroids.device.type == CUDA.type and cuda.n_iter_ == cpu.n_iter_
    torch.testing.assert_close(cuda.centroids.cpu(), cpu.centroids, rtol=1e-5, atol=1e-4)
    assert cuda.inertia_ == pytest.approx(cpu.inertia_, rel=1e-4)
    torch.testing.assert_close(cuda.predict(points.to(CUDA)).cpu(), cpu.predict(points))


def test_cuda_kmeans_chunked_by_free_memory_equals_small_chunks() -> None:
    points, init = _blobs(50_000, 64, 100, seed=1)
    points, init = points.to(CUDA), init.to(CUDA)
    automatic = KMeans(100, max_iter=5).fit(points, init_centroids=init)  # chunk size from torch.cuda.mem_get_info
    chunked = KMeans(100, max_iter=5, chunk_size=4096).fit(points, init_centroids=init)
    torch.testing.assert_close(automatic.centroids, chunked.centroids, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------------ contrast loss
def _anchors(groups: int = 24, views: int = 8, dim: int = 32, classes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(groups, views, dim, generator=generator), dim=-1)
    return anchors, torch.arange(groups) % classes


def _loss_and_grad(loss_fn, anchors: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = anchors.clone().requires_grad_()
    loss = loss_fn(leaf, *args)
    loss.backward()
    return loss.detach().cpu(), leaf.grad.cpu()


def test_contrast_loss_on_cuda_equals_cpu() -> None:
    anchors, labels = _anchors()
    cpu = _loss_and_grad(supervised_contrastive_loss, anchors, labels, 0.1, 0.07)
    cuda = _loss_and_grad(supervised_contrastive_loss, anchors.to(CUDA), labels.to(CUDA), 0.1, 0.07)
    torch.testing.assert_close(cuda[0], cpu[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cuda[1], cpu[1], rtol=1e-4, atol=1e-6)


def test_memory_contrast_loss_on_cuda_equals_cpu() -> None:
    anchors, labels = _anchors(views=1)
    generator = torch.Generator().manual_seed(1)
    bank = PixelMemoryBank(6, 32, memory_size=50, pixels_per_image=20, gather_distributed=False)
    for _ in range(3):  # fill the queues on the CPU, then copy the very same bank to the GPU
        bank.enqueue(
            F.normalize(torch.randn(2, 32, 16, 16, generator=generator), dim=1),
            torch.randint(0, 6, (2, 16, 16), generator=generator),
            generator,
        )
    cuda_bank = copy.deepcopy(bank).to(CUDA)
    losses = {
        "class layout": lambda a, y, b: class_memory_contrastive_loss(a, y, *b.class_rows(), 0.1, 0.07),
        "generic": lambda a, y, b: supervised_contrastive_loss(a, y, 0.1, 0.07, *b.memory()),
    }
    for name, loss_fn in losses.items():
        cpu = _loss_and_grad(loss_fn, anchors, labels, bank)
        cuda = _loss_and_grad(loss_fn, anchors.to(CUDA), labels.to(CUDA), cuda_bank)
        assert torch.isfinite(cpu[0]) and cpu[0] > 0, name
        torch.testing.assert_close(cuda[0], cpu[0], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(cuda[1], cpu[1], rtol=1e-4, atol=1e-6, msg=name)


def test_bfloat16_bank_on_cuda_matches_the_float32_bank() -> None:
    anchors, labels = _anchors(views=1)
    generator = torch.Generator().manual_seed(1)
    exact = PixelMemoryBank(6, 32, memory_size=50, pixels_per_image=20, gather_distributed=False)
    for _ in range(3):
        exact.enqueue(
            F.normalize(torch.randn(2, 32, 16, 16, generator=generator), dim=1),
            torch.randint(0, 6, (2, 16, 16), generator=generator),
            generator,
        )
    half = PixelMemoryBank(
        6, 32, memory_size=50, pixels_per_image=20, gather_distributed=False, memory_dtype="bfloat16"
    )
    half.load_state_dict(exact.state_dict())
    exact, half = exact.to(CUDA), half.to(CUDA)
    results = [
        _loss_and_grad(lambda a, y, b: b.contrast(a, y, 0.1, 0.07), anchors.to(CUDA), labels.to(CUDA), bank)
        for bank in (exact, half)
    ]
    (loss32, grad32), (loss16, grad16) = results
    assert half.queue.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    torch.testing.assert_close(loss16, loss32, rtol=1e-2, atol=0.0)
    assert ((grad16 - grad32).norm() / grad32.norm()).item() < 3e-2


def test_pixel_contrast_loss_samples_and_trains_on_cuda_under_bf16() -> None:
    generator = torch.Generator(device=CUDA).manual_seed(0)
    embeddings = torch.randn(2, 32, 32, 32, device=CUDA, requires_grad=True)
    labels = torch.randint(0, 5, (2, 128, 128), device=CUDA, generator=generator)
    predictions = torch.randint(0, 5, (2, 32, 32), device=CUDA, generator=generator)
    for bank in (None, PixelMemoryBank(5, 32, memory_size=64, gather_distributed=False).to(CUDA)):
        loss_fn = PixelContrastLoss(max_samples=256, max_views=16, memory_bank=bank)
        for _ in range(2):  # the second step contrasts with the rows the first one enqueued
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(F.normalize(embeddings, dim=1), labels, predictions, generator)
            loss.backward()
            assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(embeddings.grad).all()


# ------------------------------------------------------------------------------------------------ bf16 training
@pytest.mark.parametrize("memory_size", [0, 32])
def test_bf16_mixed_contrastive_training_steps_stay_finite(tmp_path: Path, memory_size: int) -> None:
    model = ContrastiveSegmenter(
        num_classes=4,
        encoder="resnet18",
        head_channels=32,
        contrast=PixelContrastSettings(
            proj_dim=32, warmup_steps=0, max_samples=256, max_views=16, memory_size=memory_size, pixels_per_image=4
        ),
        check_finite_every_n_steps=1,
    )
    trainer = _trainer(tmp_path, precision="bf16-mixed", max_steps=4, limit_val_batches=1)
    trainer.fit(model, datamodule=_synthetic())
    assert trainer.global_step == 4
    _assert_finite_metrics(trainer, "train/")
    _assert_finite_metrics(trainer, "val/")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_mixed_picie_with_kmeans_refresh_on_cuda(tmp_path: Path) -> None:
    model = PiCIE(num_classes=4, num_clusters=4, feature_dim=16, lr=1e-3, temperature=0.1)
    data = PiCIEDataModule(_synthetic(), view_size=64, input_size=64, eval_size=64)
    refresh = KMeansRefresh(max_batches=2, progress_bar=False)
    trainer = _trainer(tmp_path, precision="bf16-mixed", max_epochs=2, limit_val_batches=1, callbacks=[refresh])
    trainer.fit(model, datamodule=data)
    _assert_finite_metrics(trainer, "train/")
    _assert_finite_metrics(trainer, "kmeans/")
    assert model.has_centroids
    for _, _, head in model.feature_sets():
        centroids = head.centroids
        assert centroids.device.type == CUDA.type and centroids.dtype == torch.float32
        torch.testing.assert_close(centroids.norm(dim=1), torch.ones(4, device=CUDA), rtol=0, atol=1e-4)
    assert 0.0 <= float(trainer.callback_metrics["val/miou"]) <= 1.0


# ------------------------------------------------------------------------------------------ DDP through the command
def test_one_gpu_ddp_fit_through_the_command_uses_nccl(tmp_path: Path) -> None:
    pytest.importorskip("jsonargparse", reason="the pixcontrast command needs jsonargparse")
    probe = tmp_path / "backend.json"
    command = [
        sys.executable,
        "-m",
        "pixcontrast",
        "fit",
        "--config",
        "synthetic_contrast",
        "--trainer.accelerator=gpu",
        "--trainer.devices=1",
        "--trainer.strategy=ddp",
        "--trainer.precision=bf16-mixed",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks+=backend_probe.BackendProbe",
        f"--trainer.callbacks.path={probe}",
        "--model.init_args.contrast.warmup_steps=0",
        "--data.init_args.num_workers=2",
    ]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(probe.read_text()) == {"backend": "nccl", "world_size": 1, "device": "cuda:0"}
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


# ------------------------------------------------------------------------------------------------------- export
def test_onnx_export_of_a_model_trained_on_cuda(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    onnxruntime = pytest.importorskip("onnxruntime", reason="comparing the exported graph needs onnxruntime")
    from pixcontrast.export import export_model, load_inference_network_from_checkpoint

    model = SegmentationModule(num_classes=4, encoder="resnet18", head_channels=32)
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=1)
    trainer.fit(model, datamodule=_synthetic())
    checkpoint = tmp_path / "trained.ckpt"
    trainer.save_checkpoint(checkpoint)
    network = load_inference_network_from_checkpoint(checkpoint)
    path = export_model(network, tmp_path / "model.onnx", format="onnx", example_shape=(1, 3, 64, 96))
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval().to(CUDA)(images.to(CUDA)).float().cpu()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": images.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-3, atol=1e-3)
