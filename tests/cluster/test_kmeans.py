import math

import pytest
import torch

from pixcontrast.cluster import KMeans


def blobs(n: int = 600, k: int = 4, d: int = 8, seed: int = 0, spread: float = 10.0):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=generator) * spread
    labels = torch.arange(n) % k
    return centers[labels] + torch.randn(n, d, generator=generator), labels, centers


def purity(pred: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    table = torch.zeros(k, k, dtype=torch.long).index_put_((truth, pred), torch.ones_like(truth), accumulate=True)
    return table.max(dim=1).values.sum().item() / truth.numel()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_recovers_blobs(metric, init):
    x, truth, _ = blobs()
    model = KMeans(4, metric=metric, init=init, seed=1).fit(x)
    assert model.centroids.shape == (4, 8) and model.centroids.dtype == torch.float32
    assert model.n_iter_ == 20
    labels = model.predict(x)
    assert labels.dtype == torch.long and purity(labels, truth, 4) > 0.99 if init == "k-means++" else True
    _, distances = model.predict(x, return_distances=True)
    assert math.isclose(distances.sum().item(), model.inertia_, rel_tol=1e-4)  # converged: same assignment


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_counts_are_the_cluster_sizes(backend):
    x, truth, _ = blobs()
    model = KMeans(4, seed=1, backend=backend).fit(x)
    assert model.counts_.dtype == torch.float32 and model.counts_.sum().item() == x.shape[0]
    labels = model.predict(x)  # well-separated blobs: the last assignment step is the final one
    assert torch.equal(model.counts_, torch.bincount(labels, minlength=4).float())
    assert sorted(model.counts_.tolist()) == sorted(torch.bincount(truth, minlength=4).float().tolist())


def test_cosine_is_spherical():
    x, _, _ = blobs()
    model = KMeans(4, metric="cosine").fit(x)
    assert torch.allclose(model.centroids.norm(dim=1), torch.ones(4), atol=1e-5)
    normed = torch.nn.functional.normalize(x, dim=1)
    assert torch.equal(model.predict(x), (normed @ model.centroids.T).argmax(dim=1))
    labels, distances = model.predict(x, return_distances=True)
    expected = 2 - 2 * (normed * model.centroids[labels]).sum(1)
    assert torch.allclose(distances, expected, atol=1e-5)


def test_one_lloyd_step_from_given_centroids():
    x, _, _ = blobs()
    init = x[:4].clone()
    model = KMeans(4, max_iter=1).fit(x, init_centroids=init)
    labels = torch.cdist(x, init).argmin(dim=1)
    expected = torch.stack([x[labels == j].mean(0) for j in range(4)])
    assert torch.allclose(model.centroids, expected, atol=1e-4)
    assert math.isclose(model.inertia_, torch.cdist(x, init).min(1).values.square().sum().item(), rel_tol=1e-4)


def test_half_precision_input_and_chunking_agree():
    x, _, _ = blobs()
    init = x[:4].clone()
    reference = KMeans(4).fit(x, init_centroids=init)
    chunked = KMeans(4, chunk_size=7).fit(x, init_centroids=init)
    assert torch.allclose(reference.centroids, chunked.centroids, atol=1e-4)
    half = KMeans(4).fit(x.bfloat16(), init_centroids=init)
    assert half.centroids.dtype == torch.float32
    assert torch.allclose(half.centroids, reference.centroids, atol=0.2)


def test_deterministic_for_a_seed():
    x, _, _ = blobs(k=6)
    a, b = KMeans(6, seed=3).fit(x), KMeans(6, seed=3).fit(x)
    assert torch.equal(a.centroids, b.centroids)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_matches_faiss_backend(metric):
    pytest.importorskip("faiss")
    x, _, _ = blobs(n=900, k=5)
    init = x[:5].clone()
    ours = KMeans(5, max_iter=10, metric=metric).fit(x, init_centroids=init)
    peer = KMeans(5, max_iter=10, metric=metric, backend="faiss").fit(x, init_centroids=init)
    assert torch.allclose(ours.centroids, peer.centroids, atol=1e-3)
    assert math.isclose(ours.inertia_, peer.inertia_, rel_tol=1e-3)
    assert torch.equal(ours.predict(x), peer.predict(x))


def test_fit_batches_equals_fit():
    x, _, _ = blobs()
    init = x[:4].clone()
    in_memory = KMeans(4).fit(x, init_centroids=init)
    streamed = KMeans(4).fit_batches([x[:100], x[100:450], x[450:]], init_centroids=init)
    assert torch.allclose(in_memory.centroids, streamed.centroids, atol=1e-4)
    assert math.isclose(in_memory.inertia_, streamed.inertia_, rel_tol=1e-5)
    from_callable = KMeans(4, init_size=50).fit_batches(lambda: (x[i : i + 64] for i in range(0, 600, 64)))
    assert from_callable.centroids.shape == (4, 8)


def test_empty_clusters_are_reseeded():
    x, truth, _ = blobs()
    init = torch.cat([x[:1].repeat(3, 1), torch.full((1, 8), 1e3)])  # 3 duplicates and one far away
    model = KMeans(4, max_iter=15).fit(x, init_centroids=init)
    counts = torch.bincount(model.predict(x), minlength=4)
    assert (counts > 0).all()
    assert purity(model.predict(x), truth, 4) > 0.99


def test_tol_stops_early():
    x, _, _ = blobs()
    model = KMeans(4, max_iter=50, tol=1e-6).fit(x)
    assert model.n_iter_ < 50


@pytest.mark.parametrize(
    ("x", "init", "message"),
    [
        (torch.randn(3, 2), None, "larger than the number of points"),
        (torch.empty(0, 2), None, "empty input"),
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), None, "NaN or inf"),
        (torch.tensor([[0.0, float("inf")], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), None, "NaN or inf"),
        (torch.randn(10, 2), torch.randn(4, 3), "init_centroids has shape"),
        (torch.randn(10), None, "must be 2-D"),
        (torch.arange(10).view(5, 2), None, "floating point"),
    ],
)
def test_bad_input(x, init, message):
    with pytest.raises(ValueError, match=message):
        KMeans(4).fit(x, init_centroids=init)


def test_bad_arguments():
    with pytest.raises(ValueError, match="metric"):
        KMeans(2, metric="manhattan")
    with pytest.raises(ValueError, match="n_clusters"):
        KMeans(0)
    with pytest.raises(ValueError, match="tol is not supported"):
        KMeans(2, backend="faiss", tol=0.1)
    with pytest.raises(ValueError, match="one-shot iterator"):
        KMeans(2).fit_batches(iter([torch.randn(5, 2)]))
    with pytest.raises(RuntimeError, match="before fit"):
        KMeans(2).predict(torch.randn(5, 2))
    model = KMeans(2).fit(torch.randn(10, 3))
    with pytest.raises(ValueError, match="features"):
        model.predict(torch.randn(5, 4))
    with pytest.raises(ValueError, match="different feature sizes"):
        KMeans(2).fit_batches([torch.randn(5, 2), torch.randn(5, 3)])
