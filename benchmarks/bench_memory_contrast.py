"""Memory-variant loss, forward + backward: the class-layout loss vs the generic memory loss on the same bank.

``class_memory_contrastive_loss`` (what ``PixelContrastLoss`` uses with a bank, no hard mining) against
``supervised_contrastive_loss(memory=..., memory_labels=...)`` with the bank's rows and row labels. The bank is
full (each anchor meets every row); anchors are one view per (image, class) group, as the memory configs sample.
Both losses are checked to agree before timing. The class-layout loss also runs on the same rows stored in bfloat16
(``memory_dtype="bfloat16"``): its speed-up and its loss's relative error are reported. Prints one JSON line;
progress goes to stderr.

    python benchmarks/bench_memory_contrast.py [--quick] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from pixcontrast.losses import PixelMemoryBank, class_memory_contrastive_loss, supervised_contrastive_loss

TEMPERATURE = BASE_TEMPERATURE = 0.07
DIM = 256


def fill_bank(bank: PixelMemoryBank) -> PixelMemoryBank:
    """Steady state: every queue row filled with a random unit vector."""
    generator = torch.Generator().manual_seed(0)
    bank.queue.copy_(F.normalize(torch.randn(bank.queue.shape, generator=generator), dim=-1))
    bank.filled.fill_(bank.memory_size)
    return bank


def timed(step, device: str) -> float:
    start = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(name: str, num_classes: int, images: int, memory_size: int, repeats: int, device: str) -> dict:
    bank = fill_bank(PixelMemoryBank(num_classes, DIM, memory_size=memory_size).to(device))
    half_bank = PixelMemoryBank(num_classes, DIM, memory_size=memory_size, memory_dtype="bfloat16")
    half_bank = fill_bank(half_bank.to(device))
    half_rows, _ = half_bank.class_rows()
    generator = torch.Generator().manual_seed(1)
    anchors = F.normalize(torch.randn(images * num_classes, 1, DIM, generator=generator), dim=-1)
    anchors = anchors.to(device).requires_grad_()
    labels = torch.arange(num_classes, device=device).repeat(images)
    rows, filled = bank.class_rows()
    memory, memory_labels = bank.memory()

    def ours():
        return class_memory_contrastive_loss(anchors, labels, rows, filled, TEMPERATURE, BASE_TEMPERATURE)

    def ours_bf16():
        return class_memory_contrastive_loss(anchors, labels, half_rows, filled, TEMPERATURE, BASE_TEMPERATURE)

    def generic():
        return supervised_contrastive_loss(anchors, labels, TEMPERATURE, BASE_TEMPERATURE, memory, memory_labels)

    difference = abs(ours().item() - generic().item())
    if difference > 1e-4:
        raise RuntimeError(f"{name}: the two losses differ by {difference}")
    bf16_error = abs(ours_bf16().item() / ours().item() - 1)
    steps = {
        "class_layout": lambda: ours().backward(),
        "generic": lambda: generic().backward(),
        "class_layout_bf16": lambda: ours_bf16().backward(),
    }
    times: dict[str, list[float]] = {key: [] for key in steps}
    for step in steps.values():
        timed(step, device)  # warm-up
    for _ in range(repeats):
        for key, step in steps.items():  # interleaved: both see the same load
            times[key].append(timed(step, device))
    medians = {key: statistics.median(values) for key, values in times.items()}
    print(f"{name}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in medians.items()), file=sys.stderr)
    return {
        "setting": name,
        "anchors": images * num_classes,
        "memory_rows": 2 * num_classes * memory_size,
        "seconds": {key: round(value, 5) for key, value in medians.items()},
        "speedup": round(medians["generic"] / medians["class_layout"], 2),
        "bf16_speedup": round(medians["class_layout"] / medians["class_layout_bf16"], 2),
        "bf16_loss_relative_error": float(f"{bf16_error:.2e}"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller bank and 3 repeats (smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    memory_size = 500 if args.quick else 5000
    repeats = 3 if args.quick else args.repeats
    settings = [("cityscapes_19_classes_2_images", 19, 2), ("cityscapes_19_classes_8_images", 19, 8)]
    results = [bench(name, classes, images, memory_size, repeats, args.device) for name, classes, images in settings]
    print(
        json.dumps(
            {
                "benchmark": "memory_contrast",
                "device": args.device,
                "threads": torch.get_num_threads(),
                "repeats": repeats,
                "memory_size": memory_size,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
