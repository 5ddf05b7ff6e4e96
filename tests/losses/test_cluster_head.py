import pytest
import torch
import torch.nn.functional as F

from pixcontrast.losses.cluster_head import ClusterHead, assign_clusters, cluster_scores, cluster_weights


def _features(seed: int, shape=(2, 8, 5, 6)) -> torch.Tensor:
    return F.normalize(torch.randn(shape, generator=torch.Generator().manual_seed(seed)), dim=1)


def _centroids(seed: int, k: int = 4, d: int = 8) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed)) * 3.0  # not normalised on purpose


def _head(centroids: torch.Tensor, **kwargs) -> ClusterHead:
    head = ClusterHead(*centroids.shape, **kwargs)
    head.set_centroids(centroids)
    return head


def test_scores_are_cosine_and_labels_are_their_argmax_and_nearest_centroid():
    features, centroids = _features(0), _centroids(1)
    scores = cluster_scores(features, centroids)
    pixels = features.permute(0, 2, 3, 1).reshape(-1, 8)
    expected = F.cosine_similarity(pixels[:, None], centroids[None], dim=-1)
    assert torch.allclose(scores.permute(0, 2, 3, 1).reshape(-1, 4), expected, atol=1e-6)
    labels = assign_clusters(features, centroids)
    assert torch.equal(labels, scores.argmax(dim=1))
    # For unit vectors the largest cosine is the smallest L2 distance to the normalised centroid.
    nearest = torch.cdist(pixels, F.normalize(centroids, dim=1)).argmin(dim=1)
    assert torch.equal(labels.reshape(-1), nearest)
    head = _head(centroids)
    assert torch.allclose(head.scores(features), scores, atol=1e-6) and torch.equal(head.assign(features), labels)


def test_dot_logits_use_the_raw_centroids_and_label_by_euclidean_distance():
    features, centroids = _features(14), _centroids(15) * 0.2
    pixels = features.permute(0, 2, 3, 1).reshape(-1, 8)
    scores = cluster_scores(features, centroids, logits="dot")
    assert torch.allclose(scores.permute(0, 2, 3, 1).reshape(-1, 4), pixels @ centroids.T, atol=1e-5)
    labels = assign_clusters(features, centroids, logits="dot")
    assert torch.equal(labels.reshape(-1), torch.cdist(pixels, centroids).argmin(dim=1))
    head = _head(centroids, logits="dot")
    assert torch.equal(head.centroids, centroids) and torch.equal(head.assign(features), labels)
    with pytest.raises(ValueError, match="logits must be one of"):
        cluster_scores(features, centroids, logits="l2")


def test_class_weights_balanced_are_inverse_counts_official_are_frequencies():
    labels = torch.tensor([[0, 0, 0, 2], [2, 0, 3, 3]])
    assert cluster_weights(labels, 5).tolist() == pytest.approx([1 / 4, 0.0, 1 / 2, 1 / 2, 0.0])
    assert cluster_weights(labels, 5, "official").tolist() == pytest.approx([4 / 8, 0.0, 2 / 8, 2 / 8, 0.0])
    assert cluster_weights(labels, 5, "none") is None
    with pytest.raises(ValueError, match="class_weights must be one of"):
        cluster_weights(labels, 5, "inverse")


def test_cluster_sizes_replace_the_batch_counts():
    labels = torch.tensor([[0, 0, 0, 2], [2, 0, 3, 3]])
    epoch_sizes = torch.tensor([10.0, 30.0, 20.0, 20.0, 20.0])
    assert cluster_weights(labels, 5, "official", epoch_sizes).tolist() == pytest.approx([0.1, 0.3, 0.2, 0.2, 0.2])
    balanced = cluster_weights(labels, 5, "balanced", epoch_sizes)
    assert balanced.tolist() == pytest.approx([0.1, 1 / 30, 0.05, 0.05, 0.05])
    # all zeros (no clustering pass has reported sizes yet): the batch's counts
    assert cluster_weights(labels, 5, "official", torch.zeros(5)).tolist() == pytest.approx([0.5, 0.0, 0.25, 0.25, 0.0])
    with pytest.raises(ValueError, match=r"sizes must have shape \(5,\)"):
        cluster_weights(labels, 5, "official", torch.ones(4))


def test_the_head_weighs_by_its_sizes_only_for_official_weights():
    labels = torch.tensor([[0, 0, 0, 2], [2, 0, 3, 3]])
    sizes = torch.tensor([10.0, 30.0, 20.0, 20.0, 20.0])
    official, balanced, none = (ClusterHead(5, 8, class_weights=choice) for choice in ("official", "balanced", "none"))
    assert official.weights(labels).tolist() == pytest.approx([0.5, 0.0, 0.25, 0.25, 0.0])  # no sizes yet
    for head in (official, balanced, none):
        head.set_sizes(sizes)
    assert official.weights(labels).tolist() == pytest.approx([0.1, 0.3, 0.2, 0.2, 0.2])
    assert balanced.weights(labels).tolist() == pytest.approx([1 / 4, 0.0, 1 / 2, 1 / 2, 0.0])  # per batch
    assert none.weights(labels) is None


def test_official_weights_make_large_clusters_count_more():
    features, head = _features(12), _head(_centroids(13), class_weights="official")
    labels = torch.zeros(2, 5, 6, dtype=torch.int64)
    labels[0, 0, :2] = 1  # cluster 0: 58 pixels, cluster 1: 2 pixels
    per_pixel = F.cross_entropy(head.scores(features), labels, reduction="none")
    means = torch.stack([per_pixel[labels == k].mean() for k in (0, 1)])
    expected = (58 * 58 * means[0] + 2 * 2 * means[1]) / (58 * 58 + 2 * 2)
    assert head.cross_entropy(features, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_balanced_cross_entropy_is_the_mean_over_clusters_of_the_cluster_means():
    features, centroids = _features(2), _centroids(3)
    labels = torch.randint(0, 4, (2, 5, 6), generator=torch.Generator().manual_seed(4))
    labels[labels == 3] = 1  # make one cluster absent
    per_pixel = F.cross_entropy(cluster_scores(features, centroids) / 0.5, labels, reduction="none")
    expected = torch.stack([per_pixel[labels == k].mean() for k in (0, 1, 2)]).mean()
    loss = _head(centroids).cross_entropy(features, labels, temperature=0.5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    unbalanced = _head(centroids, class_weights="none").cross_entropy(features, labels, temperature=0.5)
    assert unbalanced.item() == pytest.approx(per_pixel.mean().item(), rel=1e-5)


def test_the_head_keeps_its_state_in_buffers_with_one_validation():
    head = ClusterHead(4, 8)
    assert [name for name, _ in head.named_buffers()] == ["centroids", "sizes", "clustered"]
    assert not head.clustered and head.num_clusters == 4 and list(head.parameters()) == []
    centroids = _centroids(5)
    head.set_centroids(centroids)
    assert head.clustered and torch.allclose(head.centroids, F.normalize(centroids, dim=1))  # cosine: normalised
    head.set_sizes(torch.arange(4.0))
    copy = ClusterHead(4, 8)
    copy.load_state_dict(head.state_dict())
    assert copy.clustered and torch.equal(copy.centroids, head.centroids) and torch.equal(copy.sizes, head.sizes)
    with pytest.raises(ValueError, match=r"centroids must be \(4, 8\), got \(5, 8\)"):
        head.set_centroids(torch.zeros(5, 8))
    with pytest.raises(ValueError, match=r"cluster sizes must be \(4,\), got \(3,\)"):
        head.set_sizes(torch.zeros(3))
    with pytest.raises(ValueError, match="feature dimension"):
        head.scores(torch.zeros(1, 5, 2, 2))
    with pytest.raises(ValueError, match="B x D x h x w"):
        cluster_scores(_features(0)[0], centroids)
    with pytest.raises(ValueError, match="class_weights"):
        ClusterHead(4, 8, class_weights="inverse")
    assert "num_clusters=4, dim=8" in repr(head)
