"""The GPU tier: CUDA results against the CPU with explicit tolerances, bf16, NCCL, export.

Runs with `pytest -m gpu` (or `bash benchmarks/gpu_suite.sh`) on a machine with CUDA; skipped elsewhere by the
top-level conftest. Needs torch, torchvision, lightning, torchmetrics and timm only: nothing here imports faiss
or albumentations (the synthetic scenes need no augmentation library). jsonargparse (the command), onnx and
onnxruntime (export) are optional: the tests that need them are skipped with the reason when absent.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def exact_float32():
    """Full float32 matmuls and convolutions (no TF32), so CUDA and CPU results compare at float32 tolerances."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
