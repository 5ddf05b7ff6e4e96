"""Train the synthetic demos with SegmentationVisualizer switched on and copy the last pictures into docs/images/.

    pixcontrast fit --config synthetic_pretrain   # once: the PiCIE demo's encoder
    python examples/make_docs_figures.py                      # the contrastive and PiCIE demos
    python examples/make_docs_figures.py --demo picie=synthetic_picie   # PiCIE only
    python examples/make_docs_figures.py --max-epochs 1 \\
        --demo baseline=synthetic_baseline -- --data.num_train=64

Arguments after ``--`` go to every ``pixcontrast fit`` call.

Each demo runs ``pixcontrast fit --config <config>`` (a bundled config's name or a file) with the visualizer
appended to the trainer's callbacks and writes ``docs/images/synthetic_scenes.png`` (a preview of the data),
``docs/images/<name>_segmentation_grid.png``, ``<name>_confusion_matrix.png`` and ``<name>_embeddings.png``
(when the module returns embeddings), quantised to 256 colours to stay small.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pixcontrast.data.synthetic import SyntheticScenesDataModule
from pixcontrast.visualization_utils import legend_strip, overlay

ROOT = Path(__file__).resolve().parents[1]
DEMOS = {
    "contrast": "synthetic_contrast",
    "picie": "synthetic_picie",
}
PICTURES = ("segmentation_grid", "confusion_matrix", "embeddings")


def run_demo(
    name: str, config: str, workdir: Path, max_epochs: int | None, docs: Path, cli_args: list[str]
) -> list[Path]:
    """Fit one demo with the visualizer and copy its last pictures to ``docs``; returns the written files."""
    pictures = workdir / name
    command = [
        sys.executable,
        "-m",
        "pixcontrast",
        "fit",
        "--config",
        config,
        "--trainer.default_root_dir",
        str(workdir / f"{name}_run"),
        "--trainer.callbacks+=pixcontrast.callbacks.visualization.SegmentationVisualizer",
        "--trainer.callbacks.num_images=3",
        f"--trainer.callbacks.output_dir={pictures}",
    ]
    if max_epochs is not None:
        command.append(f"--trainer.max_epochs={max_epochs}")
    command += cli_args
    print("running:", " ".join(command), file=sys.stderr)
    subprocess.run(command, check=True, cwd=ROOT)
    written = []
    for picture in PICTURES:
        found = sorted(pictures.glob(f"{picture}_epoch*.png"))
        if not found:
            continue
        target = docs / f"{name}_{picture}.png"
        Image.open(found[-1]).convert("RGB").quantize(256).save(target, optimize=True)
        written.append(target)
    return written


def write_scene_preview(docs: Path, count: int = 6) -> Path:
    """``docs/images/synthetic_scenes.png``: ``count`` validation scenes above their label overlays, with a legend."""
    datamodule = SyntheticScenesDataModule(num_val=count)
    datamodule.setup("validate")
    samples = [datamodule.val_dataset.load_sample(i) for i in range(count)]
    images = np.concatenate([s.image for s in samples], axis=1)
    labels = np.concatenate([overlay(s.image, s.mask, datamodule.palette, alpha=0.8) for s in samples], axis=1)
    legend = legend_strip(datamodule.class_names, datamodule.palette, images.shape[1])
    target = docs / "synthetic_scenes.png"
    Image.fromarray(np.concatenate([images, labels, legend], axis=0)).quantize(256).save(target, optimize=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--demo",
        action="append",
        metavar="NAME=CONFIG",
        help="a demo to run (repeatable); default: " + ", ".join(f"{k}={v}" for k, v in DEMOS.items()),
    )
    parser.add_argument("--max-epochs", type=int, default=None, help="override the configs' trainer.max_epochs")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "images"), help="output folder (default: docs/images/)")
    parser.add_argument("cli_args", nargs=argparse.REMAINDER, help="-- then arguments for pixcontrast fit")
    args = parser.parse_args()
    demos = dict(item.split("=", 1) for item in args.demo) if args.demo else DEMOS
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    print(write_scene_preview(docs), file=sys.stderr)
    with tempfile.TemporaryDirectory() as workdir:
        for name, config in demos.items():
            cli_args = args.cli_args[1:] if args.cli_args[:1] == ["--"] else args.cli_args
            for path in run_demo(name, config, Path(workdir), args.max_epochs, docs, cli_args):
                print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
