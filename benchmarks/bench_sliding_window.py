"""Sliding-window inference: batched crops + index_add_ averaging vs a one-crop-at-a-time loop.

Both run the same Segmenter (ResNet-18, dilated, FCN head, 19 classes, eval mode) over the same windows of a
Cityscapes-shaped batch (2 images, 512 x 1024 crops, stride 341 x 682, i.e. the full 1024 x 2048 image; the
quick run uses an eighth of every size) and must agree. Baseline: for each window, one forward pass over that
crop of every image and slice-add of the logits and counts (the usual reference implementation). Ours:
:func:`pixcontrast.inference.sliding_window_inference` with all crops in one or a few batched calls.

    python benchmarks/bench_sliding_window.py [--quick]

Prints one JSON line (seconds per batch and the ratio baseline / ours); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from pixcontrast.inference import sliding_window_inference
from pixcontrast.models import Segmenter


def baseline(model, images: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Loop over windows (the last row/column aligned to the border), accumulating logits and counts."""
    batch, _, height, width = images.shape
    total: torch.Tensor | None = None
    count = torch.zeros(height, width, device=images.device)
    rows = [*range(0, height - crop[0], stride[0]), height - crop[0]]
    columns = [*range(0, width - crop[1], stride[1]), width - crop[1]]
    for y in rows:
        for x in columns:
            logits = model(images[:, :, y : y + crop[0], x : x + crop[1]])
            if total is None:
                total = images.new_zeros(batch, logits.shape[1], height, width)
            total[:, :, y : y + crop[0], x : x + crop[1]] += logits
            count[y : y + crop[0], x : x + crop[1]] += 1
    assert total is not None
    return total / count


def timed(function, repeats: int) -> tuple[float, torch.Tensor]:
    function()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        result = function()
    return (time.perf_counter() - start) / repeats, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="eighth-size images and crops, one repeat")
    options = parser.parse_args()
    factor = 8 if options.quick else 1
    height, width = 1024 // factor, 2048 // factor
    crop, stride = (512 // factor, 1024 // factor), (341 // factor, 682 // factor)
    repeats = 1 if options.quick else 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = Segmenter(19, "resnet18", "fcn", output_stride=8).to(device).eval()
    images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1)).to(device)
    print(f"device {device}, images {tuple(images.shape)}, crop {crop}, stride {stride}", file=sys.stderr)
    with torch.inference_mode():
        base_s, expected = timed(lambda: baseline(model, images, crop, stride), repeats)
        print(f"baseline {base_s:.3f} s", file=sys.stderr)
        ours_s, logits = timed(lambda: sliding_window_inference(model, images, crop, stride), repeats)
        print(f"ours {ours_s:.3f} s", file=sys.stderr)
        chunked_s, chunked = timed(lambda: sliding_window_inference(model, images, crop, stride, 2), repeats)
        print(f"ours, 2 crops per call {chunked_s:.3f} s", file=sys.stderr)
    max_error = max((logits - expected).abs().max().item(), (chunked - expected).abs().max().item())
    print(
        json.dumps(
            {
                "benchmark": "sliding_window",
                "device": str(device),
                "images": list(images.shape),
                "crop": list(crop),
                "stride": list(stride),
                "baseline_s": round(base_s, 4),
                "ours_s": round(ours_s, 4),
                "ours_2_crops_per_call_s": round(chunked_s, 4),
                "speedup": round(base_s / ours_s, 3),
                "speedup_2_crops_per_call": round(base_s / chunked_s, 3),
                "max_abs_difference": max_error,
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
