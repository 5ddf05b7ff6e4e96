"""Forward + backward of PixelContrastLoss vs a reference-style implementation (per-image, per-class loops).

The baseline follows the structure of the published research code: the whole embedding map is permuted to
B x (h*w) x D and copied, then for each image and each class the hard/easy pixel indices are found with
``nonzero`` and a ``randperm``, and each group is copied into a preallocated tensor. Both implementations see
the same inputs. Runs are interleaved (ours, reference, ours, ...) and medians reported, with the machine's load
average before and after. ``--profile`` adds where our step spends its time (sampling, gathering, the loss
kernel's forward, backward), each part timed alone over the same repeats. Prints one JSON line; progress goes to
stderr.

    python benchmarks/bench_pixel_contrast.py [--quick] [--device cpu|cuda] [--threads 2] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from pixcontrast.losses import PixelContrastLoss, gather_pixels, sample_anchor_pixels, supervised_contrastive_loss
from pixcontrast.losses.sampling import downsample_labels

TEMPERATURE, BASE_TEMPERATURE, MAX_SAMPLES, MAX_VIEWS, IGNORE = 0.1, 0.07, 1024, 100, 255


def reference_style_loss(embeddings: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """Loop implementation in the style of the published code (its NaN/crash cases are not exercised here)."""
    batch, dim, height, width = embeddings.shape
    labels = F.interpolate(labels[:, None].float(), (height, width), mode="nearest")[:, 0].long()
    labels = labels.view(batch, -1)
    predictions = predictions.view(batch, -1)
    feats = embeddings.permute(0, 2, 3, 1).contiguous().view(batch, -1, dim)

    per_image = []
    for b in range(batch):
        present = [c for c in torch.unique(labels[b]).tolist() if c != IGNORE]
        per_image.append([c for c in present if (labels[b] == c).nonzero().shape[0] > MAX_VIEWS])
    total = sum(len(c) for c in per_image)
    n_view = min(MAX_SAMPLES // total, MAX_VIEWS)
    anchors = torch.zeros(total, n_view, dim, device=embeddings.device)
    anchor_labels = torch.zeros(total, device=embeddings.device)
    row = 0
    for b in range(batch):
        for c in per_image[b]:
            hard = ((labels[b] == c) & (predictions[b] != c)).nonzero()
            easy = ((labels[b] == c) & (predictions[b] == c)).nonzero()
            n_hard, n_easy = hard.shape[0], easy.shape[0]
            if n_hard >= n_view / 2 and n_easy >= n_view / 2:
                keep_hard = n_view // 2
                keep_easy = n_view - keep_hard
            elif n_hard >= n_view / 2:
                keep_easy = n_easy
                keep_hard = n_view - keep_easy
            else:
                keep_hard = n_hard
                keep_easy = n_view - keep_hard
            hard = hard[torch.randperm(n_hard, device=hard.device)[:keep_hard]]
            easy = easy[torch.randperm(n_easy, device=easy.device)[:keep_easy]]
            anchors[row] = feats[b, torch.cat([hard, easy]), :].squeeze(1)
            anchor_labels[row] = c
            row += 1

    count = anchors.shape[1]
    z = torch.cat(torch.unbind(anchors, dim=1), dim=0)
    lab = anchor_labels.view(-1, 1)
    mask = torch.eq(lab, lab.T).float().repeat(count, count)
    logits = z @ z.T / TEMPERATURE
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    negative = 1 - mask
    not_self = torch.ones_like(mask).scatter_(1, torch.arange(z.shape[0], device=z.device)[:, None], 0)
    mask = mask * not_self
    exp_logits = torch.exp(logits)
    negative_sum = (exp_logits * negative).sum(1, keepdim=True)
    log_prob = logits - torch.log(exp_logits + negative_sum)
    mean_log_prob = (mask * log_prob).sum(1) / mask.sum(1)
    return (-(TEMPERATURE / BASE_TEMPERATURE) * mean_log_prob).mean()


def make_inputs(batch: int, dim: int, height: int, width: int, classes: int, per_image: int, stride: int, device: str):
    """Blocky label maps of ``per_image`` classes per image (each forming a group), predictions 80% correct,
    L2-normalised embeddings; labels at ``stride`` times the embedding size with a band of ignore."""
    g = torch.Generator().manual_seed(0)
    present = torch.stack([torch.randperm(classes, generator=g)[:per_image] for _ in range(batch)])
    coarse = torch.randint(0, per_image, (batch, max(height // 8, 1), max(width // 8, 1)), generator=g)
    local = F.interpolate(coarse[:, None].float(), (height, width), mode="nearest")[:, 0].long()
    local.view(batch, -1)[:, : per_image * (MAX_VIEWS + 1)] = torch.arange(per_image).repeat_interleave(MAX_VIEWS + 1)
    small = present.gather(1, local.view(batch, -1)).view(batch, height, width)
    labels = small.repeat_interleave(stride, 1).repeat_interleave(stride, 2)
    labels[:, :stride, :] = IGNORE
    wrong = torch.rand(batch, height, width, generator=g) < 0.2
    predictions = torch.where(wrong, torch.randint(0, classes, (batch, height, width), generator=g), small)
    embeddings = F.normalize(torch.randn(batch, dim, height, width, generator=g), dim=1)
    return embeddings.to(device).requires_grad_(), labels.to(device), predictions.to(device)


def _timed_step(fn, inputs, device: str) -> float:
    start = time.perf_counter()
    inputs[0].grad = None
    fn(*inputs).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _peak_mb(fn, inputs, device: str) -> float | None:
    """Peak extra memory of one forward + backward on CUDA (None on CPU: not measured)."""
    if device != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _timed_step(fn, inputs, device)
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)


def measure_pair(ours, reference, inputs, repeats: int, device: str) -> tuple[list[float], list[float]]:
    """Forward + backward times, one warm-up each, then the two implementations interleaved run by run
    (so that both see the same load on a shared machine)."""
    _timed_step(ours, inputs, device)
    _timed_step(reference, inputs, device)
    mine, theirs = [], []
    for _ in range(repeats):
        mine.append(_timed_step(ours, inputs, device))
        theirs.append(_timed_step(reference, inputs, device))
    return mine, theirs


def count_syncs(loss: PixelContrastLoss, inputs) -> int | None:
    """Host-device syncs of one forward + backward on CUDA (None on CPU)."""
    if inputs[0].device.type != "cuda":
        return None
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss(*inputs).backward()
    torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def profile_parts(inputs, repeats: int, device: str) -> dict[str, float]:
    """Median seconds of each part of our forward + backward, timed alone (same order as in the loss)."""
    embeddings, labels, predictions = inputs

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    parts: dict[str, list[float]] = {"resize_and_sample": [], "gather": [], "kernel_forward": [], "backward": []}
    for _ in range(repeats + 1):
        embeddings.grad = None
        times = [time.perf_counter()]
        small = downsample_labels(labels, tuple(embeddings.shape[-2:]))
        image, pixel, anchor_labels = sample_anchor_pixels(small, predictions, MAX_SAMPLES, MAX_VIEWS, IGNORE)
        sync()
        times.append(time.perf_counter())
        anchors = gather_pixels(embeddings, image[:, None], pixel)
        sync()
        times.append(time.perf_counter())
        loss = supervised_contrastive_loss(anchors, anchor_labels, TEMPERATURE, BASE_TEMPERATURE)
        sync()
        times.append(time.perf_counter())
        loss.backward()
        sync()
        times.append(time.perf_counter())
        for name, start, end in zip(parts, times, times[1:], strict=False):
            parts[name].append(end - start)
    return {name: round(statistics.median(values[1:]), 5) for name, values in parts.items()}  # first: warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small repeats, skip B=8")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the 2-core CPU setting by default)")
    parser.add_argument("--profile", action="store_true", help="also time each part of our forward + backward")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = {
        "cityscapes_b2": dict(batch=2, dim=256, height=128, width=256, classes=19, per_image=19, stride=4),
        "cityscapes_b8": dict(batch=8, dim=256, height=128, width=256, classes=19, per_image=19, stride=4),
        "cocostuff_b4": dict(batch=4, dim=256, height=130, width=130, classes=171, per_image=12, stride=4),
    }
    if args.quick:
        del settings["cityscapes_b8"]
    ours = PixelContrastLoss(TEMPERATURE, BASE_TEMPERATURE, MAX_SAMPLES, MAX_VIEWS, IGNORE)
    result = {"device": args.device, "threads": torch.get_num_threads(), "load_before": os.getloadavg(), "settings": {}}
    for name, setting in settings.items():
        inputs = make_inputs(**setting, device=args.device)
        repeats = 3 if args.quick else 5
        print(f"[{name}] measuring ...", file=sys.stderr)
        mine, theirs = measure_pair(ours, reference_style_loss, inputs, repeats, args.device)
        ours_s, reference_s = statistics.median(mine), statistics.median(theirs)
        result["settings"][name] = {
            **setting,
            "ours_s": round(ours_s, 5),
            "reference_s": round(reference_s, 5),
            "speedup": round(reference_s / ours_s, 2),
            "ours_min_s": round(min(mine), 5),
            "reference_min_s": round(min(theirs), 5),
            "runs": repeats,
            "ours_peak_mb": _peak_mb(ours, inputs, args.device),
            "reference_peak_mb": _peak_mb(reference_style_loss, inputs, args.device),
            "host_syncs": count_syncs(ours, inputs),
        }
        if args.profile:
            result["settings"][name]["ours_parts_s"] = profile_parts(inputs, repeats, args.device)
        print(f"[{name}] {result['settings'][name]}", file=sys.stderr)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
