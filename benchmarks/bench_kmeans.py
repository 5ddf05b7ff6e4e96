"""Benchmark the torch k-means engine.

CPU (always): torch backend vs faiss-cpu on identical data and identical initial centroids, N=200,000, d=128,
K=27 and K=256, 20 iterations without early stop; reports the time ratio (torch / faiss, lower is better) and
the inertia ratio (torch / faiss, both measured in float64 on the final centroids with the same nearest-centroid
assignment).
GPU (when CUDA is available): N=1,000,000, d=128, K=27/100/1000, 20 iterations, fp32 and tf32 matmuls; reports
ms per iteration and the fraction of the device's matmul peak reached by the assignment matmul (2 N K d flops
per iteration). The peak is looked up from the device name or given with --peak-fp32 / --peak-tf32 (TFLOP/s).

Usage: python benchmarks/bench_kmeans.py [--quick] [--repeats 3] [--gpu-only]; --gpu-only skips the CPU section
(no faiss needed). Prints one JSON line; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from pixcontrast.cluster import KMeans

# dense (no sparsity) matmul peaks in TFLOP/s: (fp32 CUDA cores, tf32 tensor cores)
PEAKS = {
    "H200": (67.0, 495.0),
    "H100 SXM": (67.0, 495.0),
    "H100 NVL": (60.0, 418.0),
    "H100 PCIe": (51.0, 378.0),
    "H100": (67.0, 495.0),
    "A100": (19.5, 156.0),
    "L40S": (91.6, 183.0),
    "L4": (30.3, 60.0),
    "A10": (31.2, 62.5),
    "V100": (15.7, 15.7),
    "RTX 4090": (82.6, 82.6),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_data(n: int, d: int, k: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs (N x d) and K initial centroids drawn from the data, on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(max(k, 64), d, generator=generator) * 3
    x = centers[torch.randint(centers.shape[0], (n,), generator=generator)] + torch.randn(n, d, generator=generator)
    init = x[torch.randperm(n, generator=generator)[:k]].clone()
    return x.to(device), init.to(device)


def exact_inertia(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> float:
    """Sum of squared distances to the nearest centroid, computed in float64."""
    c = centroids.double()
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        xb = x[start : start + chunk].double()
        total += torch.cdist(xb, c).min(dim=1).values.square().sum().item()
    return total


def best_time(fn, repeats: int) -> tuple[float, float, object]:
    """Best wall-clock and best process CPU seconds over ``repeats`` calls, and the last result."""
    wall, cpu, result = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu), result


def cpu_section(n: int, d: int, ks: list[int], iters: int, repeats: int) -> dict:
    import faiss

    results = {}
    for k in ks:
        x, init = make_data(n, d, k, "cpu")
        x_np, init_np = x.numpy(), init.numpy()

        def run_torch(k: int = k, x: torch.Tensor = x, init: torch.Tensor = init) -> torch.Tensor:
            return KMeans(k, max_iter=iters).fit(x, init_centroids=init).centroids

        def run_faiss(k: int = k, x_np=x_np, init_np=init_np) -> torch.Tensor:
            model = faiss.Kmeans(
                d, k, niter=iters, max_points_per_centroid=n // k + 1, min_points_per_centroid=1, seed=0, verbose=False
            )
            model.train(x_np, init_centroids=init_np)
            return torch.from_numpy(model.centroids)

        KMeans(k, max_iter=1).fit(x[:20000], init_centroids=init)  # warm-up
        t_torch, cpu_torch, c_torch = best_time(run_torch, repeats)
        t_faiss, cpu_faiss, c_faiss = best_time(run_faiss, repeats)
        i_torch, i_faiss = exact_inertia(x, c_torch), exact_inertia(x, c_faiss)
        results[f"K{k}"] = {
            "torch_s": round(t_torch, 4),
            "faiss_s": round(t_faiss, 4),
            "time_ratio": round(t_torch / t_faiss, 3),
            "cpu_time_ratio": round(cpu_torch / cpu_faiss, 3),  # process CPU time: less sensitive to other load
            "inertia_torch": i_torch,
            "inertia_faiss": i_faiss,
            "inertia_ratio": round(i_torch / i_faiss, 6),
        }
        log(f"cpu K={k}: {results[f'K{k}']}")
    return results


def gpu_peaks(name: str, peak_fp32: float | None, peak_tf32: float | None) -> tuple[float | None, float | None]:
    found = next((value for key, value in PEAKS.items() if key in name), (None, None))
    return peak_fp32 or found[0], peak_tf32 or found[1]


def gpu_section(n: int, d: int, ks: list[int], iters: int, repeats: int, peaks: tuple) -> dict:
    device = torch.device("cuda")
    results = {"device_name": torch.cuda.get_device_name(device), "peak_fp32": peaks[0], "peak_tf32": peaks[1]}
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for k in ks:
            x, init = make_data(n, d, k, "cuda")
            for precision in ("fp32", "tf32"):
                torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"

                def run(k: int = k, x: torch.Tensor = x, init: torch.Tensor = init) -> KMeans:
                    model = KMeans(k, max_iter=iters).fit(x, init_centroids=init)
                    torch.cuda.synchronize()
                    return model

                run()  # warm-up
                seconds, _, model = best_time(run, repeats)
                tflops = 2 * n * k * d * iters / seconds / 1e12
                peak = peaks[0] if precision == "fp32" else peaks[1]
                results[f"K{k}_{precision}"] = {
                    "ms_per_iter": round(1000 * seconds / iters, 3),
                    "tflops": round(tflops, 2),
                    "fraction_of_peak": round(tflops / peak, 3) if peak else None,
                    "inertia": model.inertia_,
                }
                log(f"gpu K={k} {precision}: {results[f'K{k}_{precision}']}")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (the best is reported)")
    parser.add_argument("--peak-fp32", type=float, default=None, help="GPU fp32 matmul peak, TFLOP/s")
    parser.add_argument("--peak-tf32", type=float, default=None, help="GPU tf32 matmul peak, TFLOP/s")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU comparison with faiss (needs CUDA)")
    args = parser.parse_args()
    if args.gpu_only and not torch.cuda.is_available():
        parser.error("--gpu-only needs a CUDA device")
    repeats = 1 if args.quick else args.repeats
    iters = 20
    output = {
        "benchmark": "kmeans",
        "quick": args.quick,
        "iterations": iters,
        "threads": torch.get_num_threads(),
    }
    if not args.gpu_only:
        n = 20_000 if args.quick else 200_000
        output["cpu"] = cpu_section(n, 128, [27] if args.quick else [27, 256], iters, repeats)
    if torch.cuda.is_available():
        peaks = gpu_peaks(torch.cuda.get_device_name(), args.peak_fp32, args.peak_tf32)
        n = 100_000 if args.quick else 1_000_000
        output["gpu"] = gpu_section(n, 128, [27, 100, 1000], iters, repeats, peaks)
    print(json.dumps(output))


if __name__ == "__main__":
    main()
