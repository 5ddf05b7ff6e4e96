"""Training-step cost of pixel contrast: ContrastiveSegmenter (plain and memory) vs the same model with CE only.

One step = forward + backward + SGD step, timed on the same batch, variants interleaved (the order rotated each
round, so no variant always runs first), median of --repeats, in wall-clock seconds and in process CPU seconds (the
robust figure on a shared machine, best with ``--threads 1``).
The contrastive variants run twice: projecting only the sampled pixels (the default) and projecting the whole
feature map first (``project_sampled_pixels=False``, the reference code's way), both against CE only; the memory
variant runs once more with its bank in bfloat16 (``memory_dtype="bfloat16"``). Separate modules differ by more than
their term (each conv's speed depends on where its tensors landed in memory: up to 3% of the step between identical
modules here), so the sampled-pixel variants also run with their term idle, as in their warm-up:
``*_term_overhead`` is the term's cost within the same module, against the same module's CE step. The steadiest
figure is the term alone (``term_alone_ms``: forward + backward of ``module.contrast`` on one step's detached
features, variants interleaved, median) and its share of the CE-only step (``*_term_alone_share``).
CPU (default): HRNet-W18-small and DeepLabV3-ResNet18 at 512 x 512, batch 2 (``--size 512 1024``: the papers'
Cityscapes crop, batch 2 as on each of their GPUs). With CUDA: HRNet-W48 at 1024 x 512, batch 8, bf16 autocast.
Memory banks are filled before timing (steady state). Prints one JSON line.

    python benchmarks/bench_train_step.py [--repeats 5] [--quick] [--only hrnet_w18_small] [--size 512 1024]
        [--matmul-precision medium]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch
from bench_memory_contrast import fill_bank  # benchmarks/ is on sys.path when this script runs

from pixcontrast.losses import PixelContrastSettings
from pixcontrast.modules import ContrastiveSegmenter, SegmentationModule

NUM_CLASSES = 19


def build_variants(encoder: str, head: str, device: torch.device) -> dict[str, SegmentationModule]:
    """CE-only module and the two contrastive modules with identical segmenter weights."""
    common = dict(num_classes=NUM_CLASSES, encoder=encoder, head=head, head_channels=256, aux_head=head == "aspp")
    plain = PixelContrastSettings(warmup_steps=0)
    memory = plain.replace(max_views=1, temperature=0.07, loss_weight=1.0, memory_size=5000)
    torch.manual_seed(0)
    variants: dict[str, SegmentationModule] = {"ce_only": SegmentationModule(**common)}
    for suffix, sampled in (("", True), ("_full_map", False)):
        for name, settings in (("contrast", plain), ("contrast_memory", memory)):
            contrast = settings.replace(project_sampled_pixels=sampled)
            variants[name + suffix] = ContrastiveSegmenter(**common, contrast=contrast)
    variants["contrast_memory_bf16"] = ContrastiveSegmenter(**common, contrast=memory.replace(memory_dtype="bfloat16"))
    reference = variants["ce_only"].model.state_dict()
    for module in variants.values():
        module.model.load_state_dict(reference, strict=False)
        module.to(device).train()
        bank = getattr(getattr(module, "contrast", None), "memory_bank", None)
        if bank is not None:  # steady state: each anchor meets all 2 x 19 x 5000 rows
            fill_bank(bank)
    return variants


def make_batch(batch_size: int, height: int, width: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch of images with blocky 19-class label maps and 5% ignore pixels."""
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, NUM_CLASSES, (batch_size, height // 32, width // 32), generator=generator)
    masks = blocks.repeat_interleave(32, 1).repeat_interleave(32, 2)
    masks[torch.rand(masks.shape, generator=generator) < 0.05] = 255
    images = torch.randn(batch_size, 3, height, width, generator=generator)
    return {"image": images.to(device), "mask": masks.to(device)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(
    module: SegmentationModule, optimizer: torch.optim.Optimizer, batch: dict, autocast
) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one step (CPU time is far less sensitive to other processes' load)."""
    device = batch["image"].device
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    with autocast():
        loss = module.compute_losses(batch)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


IDLE_TERM = ("contrast", "contrast_memory", "contrast_memory_bf16")  # also timed with their term idle


def rotated(items: tuple | list, shift: int) -> list:
    """``items`` starting at ``shift % len(items)`` (so that no variant always runs first)."""
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


def term_inputs(module: ContrastiveSegmenter, batch: dict, autocast) -> dict[str, torch.Tensor]:
    """What the module's contrast term sees in a step, detached: features (a leaf with gradient), masks, logits."""
    with torch.no_grad(), autocast():
        inputs = module.contrast_inputs(batch, module.model.forward_train(batch["image"]))
    return {**inputs, "features": inputs["features"].detach().requires_grad_()}


def time_term(module: ContrastiveSegmenter, inputs: dict[str, torch.Tensor], autocast) -> float:
    """Wall-clock seconds of the contrast term alone, forward + backward, on the inputs of a step."""
    synchronize(inputs["features"].device)
    start = time.perf_counter()
    with autocast():
        loss = module.contrast(inputs["features"], inputs["masks"], inputs["logits"], module.global_step)
    loss.backward()
    synchronize(inputs["features"].device)
    inputs["features"].grad = None
    return time.perf_counter() - start


@contextlib.contextmanager
def term_idle(module: SegmentationModule, idle: bool):
    """The module's contrast term idle (as during its warm-up) inside the block when ``idle``."""
    if not idle:
        yield
        return
    settings = module.contrast.settings
    module.contrast.settings = settings.replace(warmup_steps=module.global_step + 1)
    try:
        yield
    finally:
        module.contrast.settings = settings


def bench_model(
    name: str, encoder: str, head: str, shape: tuple[int, int, int], repeats: int, device, autocast
) -> dict:
    variants = build_variants(encoder, head, device)
    optimizers = {key: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for key, m in variants.items()}
    batch = make_batch(*shape, device)
    runs = [(key, False) for key in variants] + [(key, True) for key in IDLE_TERM]
    times: dict[str, list[tuple[float, float]]] = {key + "_idle" * idle: [] for key, idle in runs}
    for key, idle in runs:  # warm-up
        with term_idle(variants[key], idle):
            time_step(variants[key], optimizers[key], batch, autocast)
    for repeat in range(repeats):
        for key, idle in rotated(runs, repeat):
            with term_idle(variants[key], idle):
                times[key + "_idle" * idle].append(time_step(variants[key], optimizers[key], batch, autocast))
    inputs = term_inputs(variants["contrast"], batch, autocast)  # the same features for every term
    term_times: dict[str, list[float]] = {key: [] for key in IDLE_TERM}
    for repeat in range(repeats + 1):  # the first round warms up
        for key in rotated(IDLE_TERM, repeat):
            elapsed = time_term(variants[key], inputs, autocast)
            if repeat:
                term_times[key].append(elapsed)
    wall = {key: statistics.median(t for t, _ in values) for key, values in times.items()}
    cpu = {key: statistics.median(c for _, c in values) for key, values in times.items()}
    print(f"{name}: " + ", ".join(f"{k} {wall[k]:.3f}s (cpu {cpu[k]:.3f}s)" for k in wall), file=sys.stderr)
    pairs = (
        ("contrast", "contrast"),
        ("memory", "contrast_memory"),
        ("memory_bf16", "contrast_memory_bf16"),
        ("contrast_full_map", "contrast_full_map"),
        ("memory_full_map", "contrast_memory_full_map"),
    )
    idle_pairs = [(label, key) for label, key in pairs if key in IDLE_TERM]
    return {
        "model": name,
        "batch": list(shape),
        "step_s": {key: round(value, 4) for key, value in wall.items()},
        "step_cpu_s": {key: round(value, 4) for key, value in cpu.items()},
        **{f"{label}_overhead": round(wall[key] / wall["ce_only"] - 1, 4) for label, key in pairs},
        **{f"{label}_cpu_overhead": round(cpu[key] / cpu["ce_only"] - 1, 4) for label, key in pairs},
        **{f"{label}_term_overhead": round(wall[key] / wall[key + "_idle"] - 1, 4) for label, key in idle_pairs},
        **{f"{label}_term_cpu_overhead": round(cpu[key] / cpu[key + "_idle"] - 1, 4) for label, key in idle_pairs},
        "term_alone_ms": {key: round(1000 * statistics.median(values), 1) for key, values in term_times.items()},
        **{
            f"{label}_term_alone_share": round(statistics.median(term_times[key]) / wall["ce_only"], 4)
            for label, key in idle_pairs
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="256 x 256 inputs, 2 repeats (smoke run)")
    parser.add_argument("--only", default=None, help="run only the model of this name (e.g. hrnet_w18_small)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="CPU input height and width (default 512 512; 256 256 with --quick)",
    )
    parser.add_argument(
        "--matmul-precision",
        default="highest",
        choices=("highest", "high", "medium"),
        help="torch.set_float32_matmul_precision for the float32 products (the loss computes in float32): "
        "'high' = TF32 on CUDA, 'medium' = bfloat16 products (also on CPUs with AMX)",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision(args.matmul_precision)
    repeats = 2 if args.quick else args.repeats
    if torch.cuda.is_available():
        device = torch.device("cuda")
        runs = [("hrnet_w48", "hrnet_w48", "fcn", (8, 512, 1024))]

        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        device = torch.device("cpu")
        height, width = args.size or ((256, 256) if args.quick else (512, 512))
        runs = [
            ("hrnet_w18_small", "hrnet_w18_small", "fcn", (2, height, width)),
            ("deeplabv3_resnet18", "resnet18", "aspp", (2, height, width)),
        ]
        autocast = contextlib.nullcontext
    runs = [run for run in runs if args.only in (None, run[0])]
    load_before = os.getloadavg()
    results = [bench_model(*run, repeats=repeats, device=device, autocast=autocast) for run in runs]
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "device": str(device),
                "threads": torch.get_num_threads(),
                "matmul_precision": args.matmul_precision,
                "repeats": repeats,
                "load_before": load_before,
                "load_after": os.getloadavg(),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
