"""Shared helpers: tiny CLI configs, running ``pixcontrast`` in one process or as a 2-process CPU DDP job."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DDP_TIMEOUT_S = 240

# 48 px images: a 6 x 6 feature map at output stride 8, enough pixels per class to form anchor groups.
SYNTHETIC = {
    "class_path": "pixcontrast.data.SyntheticScenesDataModule",
    "init_args": {"num_classes": 4, "image_size": 48, "num_train": 4, "num_val": 2, "batch_size": 2, "num_workers": 0},
}

CONTRASTIVE = {
    "class_path": "pixcontrast.modules.ContrastiveSegmenter",
    "init_args": {
        "encoder": "resnet10t",
        "head": "fcn",
        "head_channels": 16,
        "optimizer": "sgd",
        "lr": 0.01,
        "contrast": {"proj_dim": 16, "warmup_steps": 0, "loss_weight": 1.0, "max_samples": 64, "max_views": 3},
    },
}

PICIE = {
    "class_path": "pixcontrast.modules.PiCIE",
    "init_args": {"encoder": "resnet10t", "num_clusters": 3, "feature_dim": 16, "lr": 1e-3},
}


def picie_data(**synthetic: Any) -> dict[str, Any]:
    """PiCIE's two-view wrapper around the tiny synthetic scenes."""
    inner = {"class_path": SYNTHETIC["class_path"], "init_args": {**SYNTHETIC["init_args"], **synthetic}}
    return {
        "class_path": "pixcontrast.data.picie_views.PiCIEDataModule",
        "init_args": {"datamodule": inner, "view_size": 48, "input_size": 32, "eval_size": 32},
    }


def synthetic_data(**overrides: Any) -> dict[str, Any]:
    return {"class_path": SYNTHETIC["class_path"], "init_args": {**SYNTHETIC["init_args"], **overrides}}


def model_config(base: dict[str, Any], contrast: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """``base`` with ``overrides`` of its init_args and ``contrast`` over its contrast settings."""
    init_args = {**base["init_args"], **overrides}
    if contrast:
        init_args["contrast"] = {**base["init_args"]["contrast"], **contrast}
    return {"class_path": base["class_path"], "init_args": init_args}


def write_config(
    path: Path,
    model: dict[str, Any],
    data: dict[str, Any],
    root: Path,
    callbacks: list[dict[str, Any]] | None = None,
    **trainer: Any,
) -> Path:
    """Write a LightningCLI config for a tiny CPU run whose outputs go to ``root``."""
    trainer_config = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 2,
        "logger": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(root / "out"),
        "callbacks": callbacks or [],
    }
    trainer_config.update(trainer)
    config = {"seed_everything": 0, "trainer": trainer_config, "model": model, "data": data}
    config.setdefault("checkpoint", {})["dirpath"] = str(root / "checkpoints")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def probe(directory: Path) -> dict[str, Any]:
    """The :class:`state_probe.StateProbe` callback entry of a config."""
    return {"class_path": "state_probe.StateProbe", "init_args": {"directory": str(directory)}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ddp(command: str, config: Path, *extra: str, devices: int = 2, cwd: Path | None = None) -> str:
    """Run ``python -m pixcontrast <command> --config <config>`` as a ``devices``-process CPU DDP job (gloo).

    Returns the combined output; fails the test with its tail when the job fails.
    """
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")]),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    args = [
        sys.executable,
        "-m",
        "pixcontrast",
        command,
        "--config",
        str(config),
        f"--trainer.devices={devices}",
        "--trainer.strategy=ddp",
        *extra,
    ]
    result = subprocess.run(
        args, cwd=cwd or config.parent, env=env, capture_output=True, text=True, timeout=DDP_TIMEOUT_S
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited with {result.returncode}:\n{output[-4000:]}")
    return output


def run_local(command: str, config: Path, *extra: str):
    """Run the ``pixcontrast`` CLI in this process (one device) and return the LightningCLI object."""
    from pixcontrast.cli import run_lightning

    threads, argv = torch.get_num_threads(), sys.argv
    sys.argv = ["pixcontrast"]
    try:
        return run_lightning([command, "--config", str(config), *extra])
    finally:
        torch.set_num_threads(threads)
        sys.argv = argv


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_states_equal(
    first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], atol: float = 0.0, rtol: float = 0.0
) -> None:
    """Same keys; tensors equal (bitwise with ``atol=0``, else within ``atol + rtol * |second|``)."""
    assert first.keys() == second.keys()
    for key in first:
        a, b = first[key], second[key]
        if not torch.is_tensor(a):
            assert a == b, key
        elif atol == 0 or not a.is_floating_point():
            assert torch.equal(a, b), f"{key} differs (max abs diff {(a.double() - b.double()).abs().max():.3g})"
        else:
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, k=key: f"{k}: {m}")


def assert_optimizer_states_equal(
    first: dict[str, Any], second: dict[str, Any], atol: float = 0.0, rtol: float = 0.0
) -> None:
    assert first["param_groups"] == second["param_groups"]
    assert first["state"].keys() == second["state"].keys()
    for index in first["state"]:
        assert_states_equal(first["state"][index], second["state"][index], atol, rtol)
