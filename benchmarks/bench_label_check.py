"""Cost of the label check: mapping a 2048 x 1024 mask with and without rejecting unknown values.

Baseline: the unchecked mapping (OpenCV's uint8 look-up table, unknown values silently become 255, then int64),
as the datamodules did before. Checked: :class:`pixcontrast.data.label_maps.LabelLookup` of Cityscapes labelIds
(an int16 table marking unknown values, one min over the map, then int64); ``check_only`` times that min alone.
Also timed for context: decoding the mask PNG, and :class:`~pixcontrast.data.label_maps.ColourLookup` of a
colour-coded RGB mask with 19 colours. Variants are interleaved in a rotating order (none always follows the
allocation-heavy colour lookup); medians of --repeats. Prints one JSON line; progress goes to stderr.
    python benchmarks/bench_label_check.py [--quick] [--repeats 31]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from pixcontrast.data.io import apply_lut, read_label
from pixcontrast.data.label_maps import CITYSCAPES_LABEL_SETS, CITYSCAPES_LOOKUPS, UNKNOWN_LABEL, ColourLookup

HEIGHT, WIDTH = 1024, 2048


def cityscapes_like_mask(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Label ids 0..33 in blocks of 32 x 32 pixels (PNG-compressible like a real annotation)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 34, (height // 32 + 1, width // 32 + 1), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(blocks, np.ones((32, 32), dtype=np.uint8))[:height, :width])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="quarter-size mask, 5 repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=31)
    args = parser.parse_args()
    height, width = (HEIGHT // 4, WIDTH // 4) if args.quick else (HEIGHT, WIDTH)
    repeats = 5 if args.quick else args.repeats

    raw = cityscapes_like_mask(height, width)
    lookup = CITYSCAPES_LOOKUPS["19"]
    unchecked_table = np.where(lookup.table < 0, 255, lookup.table).astype(np.uint8)
    palette = CITYSCAPES_LABEL_SETS["19"].palette
    colours = ColourLookup(palette, np.arange(len(palette)), "19 colours", "-")
    rgb = palette[np.minimum(raw, 18)]
    mapped = apply_lut(raw, lookup.table, outside=UNKNOWN_LABEL)
    np.testing.assert_array_equal(lookup(raw, "mask"), cv2.LUT(raw, unchecked_table).astype(np.int64))

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mask.png"
        cv2.imwrite(str(path), raw)
        variants = {
            "unchecked_lut": lambda: cv2.LUT(raw, unchecked_table).astype(np.int64),
            "checked_lut": lambda: lookup(raw, "mask"),
            "check_only": lambda: mapped.min() < 0,
            "png_decode": lambda: read_label(path),
            "colour_lookup": lambda: colours(rgb, "mask"),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for run in variants.values():
            run()  # warm-up
        names = list(variants)
        for repeat in range(repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # interleaved, rotating
                start = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - start)
    ms = {name: round(statistics.median(values) * 1e3, 3) for name, values in times.items()}
    print(f"{width}x{height}: " + ", ".join(f"{k} {v} ms" for k, v in ms.items()), file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "label_check",
                "mask": f"{width}x{height}",
                "repeats": repeats,
                "ms_per_mask": ms,
                "ratio_checked_vs_unchecked": round(ms["checked_lut"] / ms["unchecked_lut"], 3),
                "check_share_of_png_decode": round(ms["check_only"] / ms["png_decode"], 4),
                "loadavg": os.getloadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
