"""Does pixel contrast help? CE-only baseline vs ContrastiveSegmenter on the synthetic scenes, several seeds.

Each run is a separate ``pixcontrast fit`` of an example config (same model, schedule and data; only the seed
differs between repeats). Reads val/miou from the TensorBoard logs and prints one JSON line with the final and
best val mIoU per run, their mean and standard deviation per config, and the wall time of each run.

    python benchmarks/compare_contrast_synthetic.py [--seeds 0 1 2] [--configs synthetic_baseline synthetic_contrast]

A ``--configs`` entry may carry overrides of its own after the config name, in one quoted argument, e.g.
``"synthetic_contrast_mem --model.init_args.contrast.memory_dtype=bfloat16"``; the first entry is the baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def val_miou_series(run_dir: Path) -> list[float]:
    """The val/miou values logged to TensorBoard in ``run_dir``, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = run_dir.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return [event.value for event in accumulator.Scalars("val/miou")]


def run(config: str, seed: int, workdir: Path, extra: list[str]) -> dict:
    """One fit of ``config`` (a bundled config's name or a file, then optionally its own overrides) with ``seed``."""
    name, *overrides = config.split()
    run_dir = workdir / f"{'_'.join(config.split()).replace('/', '_')}_seed{seed}"
    command = [
        sys.executable,
        "-m",
        "pixcontrast",
        "fit",
        "--config",
        name,
        f"--seed_everything={seed}",
        f"--data.init_args.seed={seed}",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.enable_progress_bar=false",
        *overrides,
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    series = val_miou_series(run_dir)
    result = {
        "config": config,
        "seed": seed,
        "wall_s": round(wall, 1),
        "final_miou": round(series[-1], 4),
        "best_miou": round(max(series), 4),
    }
    print(json.dumps(result), file=sys.stderr)
    return result


def summary(values: list[float]) -> dict:
    return {
        "mean": round(statistics.mean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=["synthetic_baseline", "synthetic_contrast"])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    parser.add_argument("extra", nargs="*", help="overrides passed to every run, e.g. --trainer.max_epochs=2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or Path(temporary)
        runs = [run(config, seed, workdir, args.extra) for seed in args.seeds for config in args.configs]
    per_config = {
        config: {
            "final_miou": summary([r["final_miou"] for r in runs if r["config"] == config]),
            "best_miou": summary([r["best_miou"] for r in runs if r["config"] == config]),
            "wall_s": summary([r["wall_s"] for r in runs if r["config"] == config]),
        }
        for config in args.configs
    }
    baseline, *others = args.configs
    ratios = {
        c: round(per_config[c]["final_miou"]["mean"] / per_config[baseline]["final_miou"]["mean"], 4) for c in others
    }
    print(
        json.dumps(
            {
                "benchmark": "contrast_vs_baseline_synthetic",
                "runs": runs,
                "summary": per_config,
                "final_miou_ratio_vs_" + baseline: ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
