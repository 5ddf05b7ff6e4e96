"""The ``pixcontrast`` command: LightningCLI (fit/validate/test/predict) plus ``prepare`` and ``export``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
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


class PixContrastCLI(LightningCLI):
    """LightningCLI in subclass mode with the defaults segmentation users expect.

    Always on: ``ModelCheckpoint`` on ``val/miou`` (max) with ``last.ckpt`` (``--checkpoint.*``), a Rich progress
    bar (``--progress_bar.*``) and ``LearningRateMonitor`` (``--lr_monitor.*``; dropped when the logger is off).
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
        return trainer


def run_lightning(args: Sequence[str]) -> PixContrastCLI:
    """Run the LightningCLI part of the command with ``args``."""
    return PixContrastCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        parser_kwargs={"description": _description(), "formatter_class": argparse.RawDescriptionHelpFormatter},
        args=list(args),
    )


def run_export(args: Sequence[str]) -> None:
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
    network = load_inference_network_from_checkpoint(options.ckpt)
    path = export_model(
        network,
        options.output,
        format=options.format,
        example_shape=(1, 3, options.height, options.width),
        opset=options.opset,
    )
    print(f"wrote {options.format} model to {path}")


def run_prepare(args: Sequence[str]) -> None:
    """``pixcontrast prepare <dataset>``: convert an official dataset download."""
    from pixcontrast.data.prepare import main as prepare_main

    prepare_main(list(args))


EXTRA_COMMANDS: dict[str, Callable[[Sequence[str]], object]] = {"export": run_export, "prepare": run_prepare}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``pixcontrast`` console script and ``python -m pixcontrast``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in EXTRA_COMMANDS:
        EXTRA_COMMANDS[args[0]](args[1:])
        return
    run_lightning(args)
