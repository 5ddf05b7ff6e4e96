"""Shared test set-up: the tiny Trainer and datamodules of tiny_runs.py and the fixture writers of tests/data
(official dataset layouts) are importable everywhere, and the `gpu` tier is skipped on machines without CUDA."""

import sys
from pathlib import Path

import pytest
import torch

_HERE = Path(__file__).parent
sys.path[:0] = [str(_HERE / "data"), str(_HERE)]  # dataset_layouts, tiny_runs


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked `gpu` when no CUDA device is present; everything else runs as collected."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
