"""The ``pixcontrast`` command: LightningCLI (fit/validate/test/predict) plus ``prepare`` and ``export``."""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import pixcontrast.callbacks  # noqa: F401  (registers the callbacks for class_path look-up)
import pixcontrast.data as data_package
import pixcontrast.modules as module_package

CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/miou",
    "checkpoint.mode": "max",
    "checkpoint.save_last": True,
    "checkpoint.filename": "epoch{epoch:03d}-miou{val/miou:.4f}",
    "checkpoint.auto_insert_metric_name": False,
}


def _description() -> str:
    modules = ", ".join(module_package.__all__)
    datamodules = ", ".join(name for name in data_package.__all__ if name.endswith("DataModule"))
    return (
        "pixcontrast: supervised pixel contrast and PiCIE for semantic segmentation.\n"
        f"Modules (--model): {modules}.\nDatamodules (--data): {datamodules}.\n"
        "Also: 'pixcontrast prepare <dataset> --help' (dataset conversion) and "
        "'pixcontrast export --help' (ONNX / TorchScript export of a checkpoint)."
    )


class RandomStateCheckpoint(Callback):
    """Keep the random generators (torch, CUDA, numpy, python) in checkpoints and restore them on resume.

    Lightning saves weights, optimiser, schedulers and loop positions but not the global random states, so
    without this a resumed run shuffles the data, drops out and samples anchors differently from an
    uninterrupted one. Under DDP the checkpoint holds rank 0's states and every rank restores them (ranks
    seeded alike and drawing the same shapes stay alike).
    """

    def state_dict(self) -> dict[str, Any]:
        # numpy's key array is stored as a tensor so that checkpoints stay loadable with ``weights_only=True``
        name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        states: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        name, keys, position, has_gauss, cached_gaussian = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        if torch.cuda.is_available():
            for device, cuda_state in enumerate(state_dict.get("cuda", [])[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, device)


class PixContrastCLI(LightningCLI):
    """LightningCLI in subclass mode with the defaults segmentation users expect.

    Always on: ``ModelCheckpoint`` on ``val/miou`` (max) with ``last.ckpt`` (``--checkpoint.*``), a Rich progress
    bar (``--progress_bar.*``), ``LearningRateMonitor`` (``--lr_monitor.*``; dropped when the logger is off) and
    :class:`RandomStateCheckpoint` (so ``--ckpt_path last`` resumes exactly where the run stopped).
    ``num_classes`` and ``class_names`` of the model are taken from the datamodule.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(RichProgressBar, "progress_bar")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:
            trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, LearningRateMonitor)]
        trainer.callbacks.insert(0, RandomStateCheckpoint())
        return trainer


def run_lightning(args: Sequence[str] | None = None) -> PixContrastCLI:
    """Run the LightningCLI part of the command with ``args`` (``None``: the process's command line)."""
    return PixContrastCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        parser_kwargs={"description": _description(), "formatter_class": argparse.RawDescriptionHelpFormatter},
        args=None if args is None else list(args),
    )


def run_export(args: Sequence[str]) -> int:
    """``pixcontrast export``: write the inference network of a checkpoint (no projection head)."""
    from pixcontrast.export import export_model, load_inference_network_from_checkpoint

    parser = argparse.ArgumentParser(
        prog="pixcontrast export",
        description="Export the inference network of a pixcontrast checkpoint to ONNX or TorchScript.",
    )
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint written by 'pixcontrast fit'")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument("--output", required=True, help="file to write (.onnx or .pt)")
    parser.add_argument("--height", type=int, default=512, help="example input height used for tracing")
    parser.add_argument("--width", type=int, default=1024, help="example input width used for tracing")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    options = parser.parse_args(list(args))
    try:
        network = load_inference_network_from_checkpoint(options.ckpt)
        path = export_model(
            network,
            options.output,
            format=options.format,
            example_shape=(1, 3, options.height, options.width),
            opset=options.opset,
        )
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {options.format} model to {path}")
    return 0


def run_prepare(args: Sequence[str]) -> int:
    """``pixcontrast prepare <dataset>``: convert an official dataset download; returns the exit status."""
    from pixcontrast.data.prepare import main as prepare_main

    return prepare_main(list(args))


EXTRA_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"export": run_export, "prepare": run_prepare}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``pixcontrast`` console script and ``python -m pixcontrast``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in EXTRA_COMMANDS:
        status = EXTRA_COMMANDS[args[0]](args[1:])
        if status:
            raise SystemExit(status)
        return
    run_lightning(None if argv is None else args)
