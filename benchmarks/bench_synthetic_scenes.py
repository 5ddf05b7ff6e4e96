"""Generation speed of the synthetic scenes (``pixcontrast.data.scenes.generate_scene``), in images per CPU second.

    python benchmarks/bench_synthetic_scenes.py [--quick] [--size 128] [--classes 8]

CPU time of this process (``time.process_time``), so other processes' load does not count; the wall time is
reported too. The baseline is the floor the scenes must stay above to keep the demo's data cheap (15 images per
CPU second at 128 x 128, 8 classes; about 200 with the vectorised generator). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from pixcontrast.data.scenes import generate_scene, scene_classes

FLOOR_IMAGES_PER_CPU_S = 15.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    parser.add_argument("--size", type=int, default=128, help="side of the square scenes in pixels")
    parser.add_argument("--classes", type=int, default=8)
    args = parser.parse_args()
    count = 20 if args.quick else 100
    classes = scene_classes(args.classes)
    rng = np.random.default_rng(0)
    generate_scene(rng, args.size, args.size, classes)  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        generate_scene(rng, args.size, args.size, classes)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result = {
        "benchmark": "synthetic_scenes",
        "image_size": args.size,
        "classes": args.classes,
        "images": count,
        "images_per_cpu_s": round(count / cpu, 2),
        "images_per_wall_s": round(count / wall, 2),
        "floor_images_per_cpu_s": FLOOR_IMAGES_PER_CPU_S,
        "ratio_over_floor": round(count / cpu / FLOOR_IMAGES_PER_CPU_S, 2),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
