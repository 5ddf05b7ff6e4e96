"""KMeans under torch.distributed: 2 CPU processes (gloo) must agree with each other and with one process."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pixcontrast.cluster import KMeans

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SIZES = (700, 300)  # uneven shards on purpose


def data() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 5, generator=generator) * 6
    return centers[torch.arange(sum(SIZES)) % 6] + torch.randn(sum(SIZES), 5, generator=generator)


def configs() -> dict:
    x = data()
    return {
        "kmeans++": (dict(n_clusters=6), None, False),
        "kmeans++_subsampled_init": (dict(n_clusters=6, init_size=100), None, False),
        "cosine_random": (dict(n_clusters=6, metric="cosine", init="random", init_size=50), None, False),
        "given_init": (dict(n_clusters=6, max_iter=5), x[:6].clone(), False),
        "stream_given_init": (dict(n_clusters=6, max_iter=5), x[:6].clone(), True),
    }


def fit(x: torch.Tensor, kwargs: dict, init, stream: bool) -> KMeans:
    model = KMeans(**kwargs)
    if stream:
        return model.fit_batches([x[: len(x) // 3], x[len(x) // 3 :]], init_centroids=init)
    return model.fit(x, init_centroids=init)


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        x = data()
        start = sum(SIZES[:rank])
        shard = x[start : start + SIZES[rank]]
        results = {}
        for name, (kwargs, init, stream) in configs().items():
            model = fit(shard, kwargs, init, stream)
            results[name] = (model.centroids, model.inertia_)
        bad = shard.clone()
        if rank == 1:
            bad[3, 2] = float("nan")
        try:
            KMeans(6).fit(bad)
        except ValueError as error:  # raised on both ranks, without hanging
            results["error"] = str(error)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_each_other_and_one_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    x = data()
    for name, (kwargs, init, stream) in configs().items():
        single = fit(x, kwargs, init, stream)
        (c0, i0), (c1, _) = ranks[0][name], ranks[1][name]
        assert torch.equal(c0, c1), name
        assert torch.allclose(c0, single.centroids, atol=1e-4), name
        assert abs(i0 - single.inertia_) <= 1e-4 * single.inertia_, name
    assert "NaN" in ranks[0]["error"] and ranks[0]["error"] == ranks[1]["error"]
