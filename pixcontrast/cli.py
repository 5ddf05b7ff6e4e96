"""The ``pixcontrast`` command: LightningCLI (fit/validate/test/predict) plus ``configs``, ``prepare``, ``export``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

import pixcontrast.data as data_package
import pixcontrast.modules as module_package
from pixcontrast.bundled_configs import UnknownConfigError, bundled_config, list_configs, resolve_config
from pixcontrast.callbacks import RandomStateCheckpoint  # also registers our callbacks for class_path look-up

CONFIG_FLAGS = ("-c", "--config")
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
        "--config takes a file or the name of a bundled config: 'pixcontrast configs' lists them.\n"
        "Also: 'pixcontrast prepare <dataset> --help' (dataset conversion) and "
        "'pixcontrast export --help' (ONNX / TorchScript export of a checkpoint)."
    )


class PixContrastCLI(LightningCLI):
    """LightningCLI in subclass mode with the defaults segmentation users expect.

    Always on: ``ModelCheckpoint`` on ``val/miou`` (max) with ``last.ckpt`` (``--checkpoint.*``; files go to
    ``<trainer.default_root_dir>/checkpoints`` unless ``--checkpoint.dirpath`` says otherwise; dropped with
    ``--trainer.enable_checkpointing=false``), a Rich progress bar (``--progress_bar.*``; dropped with
    ``--trainer.enable_progress_bar=false``), ``LearningRateMonitor`` (``--lr_monitor.*``; dropped when the
    logger is off) and
    :class:`RandomStateCheckpoint` (so ``--ckpt_path last`` resumes exactly where the run stopped).
    ``num_classes`` and ``class_names`` of the model are taken from the datamodule. With a datamodule without
    labels (``has_labels`` false) there is no ``val/miou``: checkpoints then keep the latest epoch.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(RichProgressBar, "progress_bar")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse as LightningCLI does, after :func:`resolve_config_args` (``None``: the process's command line,
        rewritten in place so that a relaunched process, e.g. a DDP worker, reads the same files)."""
        if args is None:
            sys.argv[1:] = resolve_config_args(sys.argv[1:])
        elif isinstance(args, Sequence):
            args = resolve_config_args(args)
        super().parse_arguments(parser, args)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Drop the always-on callbacks that the trainer settings switch off: no progress bar, no logger to monitor,
        # no checkpointing.
        if config.get("enable_progress_bar") is False:
            callbacks = [cb for cb in callbacks if not isinstance(cb, RichProgressBar)]
        if config.get("logger") is False:
            callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
        if config.get("enable_checkpointing") is False:
            callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
        trainer = super()._instantiate_trainer(config, [RandomStateCheckpoint(), *callbacks])
        unlabelled = not getattr(self.datamodule, "has_labels", True)
        for checkpoint in trainer.checkpoint_callbacks:
            callback = cast(ModelCheckpoint, checkpoint)  # Lightning's one Checkpoint; typed as the bare base class
            if callback.dirpath is None:  # a fixed folder, so that --ckpt_path last finds the previous run's files
                callback.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
            if unlabelled and callback.monitor == CHECKPOINT_DEFAULTS["checkpoint.monitor"]:
                callback.monitor, callback.filename = None, "epoch{epoch:03d}"  # no labels, no val/miou to rank by
        return trainer


def resolve_config_args(args: Sequence[str]) -> list[str]:
    """``args`` with the value of every ``-c``/``--config`` flag resolved by :func:`resolve_config` (a bundled
    config's name becomes its file)."""
    resolved = list(args)
    for index, arg in enumerate(resolved):
        flag, equals, value = arg.partition("=")
        if flag in CONFIG_FLAGS and equals:
            resolved[index] = f"{flag}={resolve_config(value)}"
        elif index and resolved[index - 1] in CONFIG_FLAGS:
            resolved[index] = resolve_config(arg)
    return resolved


def run_lightning(args: Sequence[str] | None = None) -> PixContrastCLI:
    """Run the LightningCLI part of the command with ``args`` (``None``: the process's command line)."""
    return PixContrastCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},  # a resumed run (--ckpt_path) rewrites its run folder's config.yaml
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
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (ViTs need >= 18)")
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


def run_configs(args: Sequence[str]) -> int:
    """``pixcontrast configs [list | show NAME]``: list the bundled configs or print one's YAML."""
    parser = argparse.ArgumentParser(
        prog="pixcontrast configs",
        description="The configs shipped with pixcontrast. 'pixcontrast fit --config NAME' runs one by its name; "
        "to start one of your own: pixcontrast configs show synthetic_contrast > my.yaml",
    )
    actions = parser.add_subparsers(dest="action", metavar="{list,show}")
    actions.add_parser("list", help="the names with a one-line description (the default)")
    actions.add_parser("show", help="print the YAML of a config").add_argument("name", help="e.g. synthetic_contrast")
    options = parser.parse_args(list(args))
    if options.action == "show":
        sys.stdout.write(bundled_config(options.name).read_text(encoding="utf-8"))
        return 0
    configs = list_configs()
    width = max(map(len, configs))
    for name, description in configs.items():
        print(f"{name:<{width}}  {description}")
    return 0


def run_prepare(args: Sequence[str]) -> int:
    """``pixcontrast prepare <dataset>``: convert an official dataset download; returns the exit status."""
    from pixcontrast.data.prepare import main as prepare_main

    return prepare_main(list(args))


EXTRA_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "configs": run_configs,
    "export": run_export,
    "prepare": run_prepare,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``pixcontrast`` console script and ``python -m pixcontrast``."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in EXTRA_COMMANDS:
            status = EXTRA_COMMANDS[args[0]](args[1:])
        else:
            run_lightning(None if argv is None else args)
            status = 0
    except UnknownConfigError as error:  # a --config or `configs show` name that is no bundled config
        print(f"error: {error}", file=sys.stderr)
        status = 2
    if status:
        raise SystemExit(status)
