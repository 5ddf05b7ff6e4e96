"""Training-step cost per encoder family: CE only vs CE + pixel contrast, same segmenter weights.

One step = forward + backward + SGD step on one 512 x 512 batch of 2 (CPU, 19 classes, FCN head with 256
channels, each encoder at its default output stride), the two variants interleaved, median of --repeats after
one warm-up step. Families: dilated ResNet-18, HRNetV2-W18-small, ConvNeXt (dilated to 8), Swin-T, plain ViT-S/16
and DINOv2 ViT-S/14 (last block + simple pyramid). Prints one JSON line with the machine load.

    python benchmarks/bench_encoder_families.py [--repeats 3] [--size 512] [--threads 2] [--families vit,swin]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
from bench_train_step import make_batch, time_step  # benchmarks/ is on sys.path when this script runs

from pixcontrast.losses import PixelContrastSettings
from pixcontrast.modules import ContrastiveSegmenter, SegmentationModule

NUM_CLASSES = 19
FAMILIES = {  # family -> timm encoder (small variants, random weights: the cost does not depend on them)
    "resnet": "resnet18",
    "hrnet": "hrnet_w18_small",
    "convnext": "convnext_atto",
    "swin": "swin_tiny_patch4_window7_224",
    "vit": "vit_small_patch16_224",
    "dinov2": "vit_small_patch14_dinov2",
}


def build_pair(encoder: str) -> dict[str, SegmentationModule]:
    """CE-only and CE + contrast modules (contrast active from step 0) sharing the segmenter weights."""
    common = dict(num_classes=NUM_CLASSES, encoder=encoder, head="fcn", head_channels=256)
    torch.manual_seed(0)
    contrast = ContrastiveSegmenter(**common, contrast=PixelContrastSettings(warmup_steps=0))
    pair = {"ce_only": SegmentationModule(**common), "contrast": contrast}
    pair["contrast"].model.load_state_dict(pair["ce_only"].model.state_dict(), strict=False)
    return {key: module.train() for key, module in pair.items()}


def bench_family(family: str, size: int, repeats: int) -> dict:
    encoder = FAMILIES[family]
    pair = build_pair(encoder)
    optimizers = {key: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for key, m in pair.items()}
    batch = make_batch(2, size, size, torch.device("cpu"))
    times: dict[str, list[float]] = {key: [] for key in pair}
    for key, module in pair.items():  # warm-up
        time_step(module, optimizers[key], batch, torch.enable_grad)
    for _ in range(repeats):
        for key, module in pair.items():
            times[key].append(time_step(module, optimizers[key], batch, torch.enable_grad)[0])  # wall clock
    medians = {key: statistics.median(values) for key, values in times.items()}
    reduction = pair["ce_only"].model.encoder.head_reduction
    print(f"{family} ({encoder}): " + ", ".join(f"{k} {v:.2f}s" for k, v in medians.items()), file=sys.stderr)
    return {
        "family": family,
        "encoder": encoder,
        "head_stride": reduction,
        "step_s": {key: round(value, 3) for key, value in medians.items()},
        "contrast_overhead": round(medians["contrast"] / medians["ce_only"] - 1, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {list(FAMILIES)}")
    args = parser.parse_args()
    families = args.families.split(",")
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = [bench_family(family, args.size, args.repeats) for family in families]
    print(
        json.dumps(
            {
                "benchmark": "encoder_families_train_step",
                "device": "cpu",
                "threads": args.threads,
                "batch": [2, args.size, args.size],
                "repeats": args.repeats,
                "loadavg_before": [round(v, 2) for v in load_before],
                "loadavg_after": [round(v, 2) for v in os.getloadavg()],
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
