import pytest
import torch
import torch.nn.functional as F

from pixcontrast.losses.picie import (
    PiCIELoss,
    assign_clusters,
    cluster_cross_entropy,
    cluster_scores,
    cluster_weights,
    picie_loss,
)


def _features(seed: int, shape=(2, 8, 5, 6)) -> torch.Tensor:
    return F.normalize(torch.randn(shape, generator=torch.Generator().manual_seed(seed)), dim=1)


def _centroids(seed: int, k: int = 4, d: int = 8) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed)) * 3.0  # not normalised on purpose


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
    features1, features2, centroids = _features(20), _features(21), _centroids(22)
    sizes1, sizes2 = torch.tensor([5.0, 1.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0, 5.0])
    out = picie_loss(
        features1, features2, centroids, centroids, class_weights="official", cluster_sizes=(sizes1, sizes2)
    )
    y1, y2 = out.labels1, out.labels2

    def ce(features, target, sizes):
        return cluster_cross_entropy(features, centroids, target, class_weights="official", sizes=sizes)

    expected = 0.25 * (
        ce(features1, y1, sizes1) + ce(features2, y2, sizes2) + ce(features1, y2, sizes2) + ce(features2, y1, sizes1)
    )  # each cross-entropy weighs by its labels' view
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    batch_weighted = picie_loss(features1, features2, centroids, centroids, class_weights="official")
    assert out.loss.item() != pytest.approx(batch_weighted.loss.item(), rel=1e-3)


def test_official_weights_make_large_clusters_count_more():
    features, centroids = _features(12), _centroids(13)
    labels = torch.zeros(2, 5, 6, dtype=torch.int64)
    labels[0, 0, :2] = 1  # cluster 0: 58 pixels, cluster 1: 2 pixels
    per_pixel = F.cross_entropy(cluster_scores(features, centroids), labels, reduction="none")
    means = torch.stack([per_pixel[labels == k].mean() for k in (0, 1)])
    expected = (58 * 58 * means[0] + 2 * 2 * means[1]) / (58 * 58 + 2 * 2)
    loss = cluster_cross_entropy(features, centroids, labels, class_weights="official")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_dot_logits_use_the_raw_centroids_and_label_by_euclidean_distance():
    features, centroids = _features(14), _centroids(15) * 0.2
    pixels = features.permute(0, 2, 3, 1).reshape(-1, 8)
    scores = cluster_scores(features, centroids, logits="dot")
    assert torch.allclose(scores.permute(0, 2, 3, 1).reshape(-1, 4), pixels @ centroids.T, atol=1e-5)
    labels = assign_clusters(features, centroids, logits="dot")
    assert torch.equal(labels.reshape(-1), torch.cdist(pixels, centroids).argmin(dim=1))
    with pytest.raises(ValueError, match="logits must be one of"):
        cluster_scores(features, centroids, logits="l2")


def test_balanced_cross_entropy_is_the_mean_over_clusters_of_the_cluster_means():
    features, centroids = _features(2), _centroids(3)
    labels = torch.randint(0, 4, (2, 5, 6), generator=torch.Generator().manual_seed(4))
    labels[labels == 3] = 1  # make one cluster absent
    per_pixel = F.cross_entropy(cluster_scores(features, centroids) / 0.5, labels, reduction="none")
    expected = torch.stack([per_pixel[labels == k].mean() for k in (0, 1, 2)]).mean()
    loss = cluster_cross_entropy(features, centroids, labels, temperature=0.5, class_weights="balanced")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    unbalanced = cluster_cross_entropy(features, centroids, labels, temperature=0.5, class_weights="none")
    assert unbalanced.item() == pytest.approx(per_pixel.mean().item(), rel=1e-5)


def _reference_loss(z1, z2, mu1, mu2, temperature):
    def ce(z, mu, y):
        logits = torch.einsum("bdhw,kd->bkhw", z, F.normalize(mu, dim=1)) / temperature
        per_pixel = -logits.log_softmax(dim=1).gather(1, y[:, None])[:, 0]
        return torch.stack([per_pixel[y == k].mean() for k in y.unique()]).mean()

    y1 = torch.einsum("bdhw,kd->bkhw", z1, F.normalize(mu1, dim=1)).argmax(1)
    y2 = torch.einsum("bdhw,kd->bkhw", z2, F.normalize(mu2, dim=1)).argmax(1)
    return (ce(z1, mu1, y1) + ce(z2, mu2, y2) + ce(z1, mu2, y2) + ce(z2, mu1, y1)) / 4


def test_picie_loss_value_and_gradients_match_a_direct_implementation():
    raw1 = torch.randn(2, 8, 5, 6, generator=torch.Generator().manual_seed(5), requires_grad=True)
    raw2 = torch.randn(2, 8, 5, 6, generator=torch.Generator().manual_seed(6), requires_grad=True)
    mu1, mu2 = _centroids(7), _centroids(8)
    output = picie_loss(F.normalize(raw1, dim=1), F.normalize(raw2, dim=1), mu1, mu2, temperature=0.3)
    grads = torch.autograd.grad(output.loss, (raw1, raw2))
    expected = _reference_loss(F.normalize(raw1, dim=1), F.normalize(raw2, dim=1), mu1, mu2, 0.3)
    expected_grads = torch.autograd.grad(expected, (raw1, raw2))
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert torch.allclose(grad, expected_grad, atol=1e-6)
    assert output.loss.item() == pytest.approx(0.5 * (output.within_view + output.across_view).item())
    assert output.labels1.shape == (2, 5, 6) and output.labels1.dtype == torch.int64


def test_given_labels_replace_the_features_own_labels():
    z1, z2, mu = _features(16), _features(17), _centroids(18)
    own = picie_loss(z1, z2, mu, mu, temperature=0.5)
    given = (torch.zeros_like(own.labels1), torch.ones_like(own.labels2))
    output = picie_loss(z1, z2, mu, mu, temperature=0.5, labels=given)
    assert torch.equal(output.labels1, given[0]) and torch.equal(output.labels2, given[1])
    expected = F.cross_entropy(cluster_scores(z1, mu) / 0.5, given[0])  # one cluster per view: plain means
    within1 = cluster_cross_entropy(z1, mu, given[0], 0.5)
    assert within1.item() == pytest.approx(expected.item(), rel=1e-5)
    assert output.loss.item() != pytest.approx(own.loss.item())
    with pytest.raises(ValueError, match="labels must be"):
        picie_loss(z1, z2, mu, mu, labels=(given[0][:, :2], given[1]))


def test_centroids_get_no_gradient_and_training_the_features_lowers_the_loss():
    raw = torch.randn(2, 8, 5, 6, generator=torch.Generator().manual_seed(9), requires_grad=True)
    mu1 = _centroids(10).requires_grad_(True)
    mu2 = _centroids(11)
    loss_fn = PiCIELoss(temperature=0.2)
    optimizer = torch.optim.Adam([raw], lr=0.05)
    losses = []
    for _ in range(30):
        z = F.normalize(raw, dim=1)
        loss = loss_fn(z, z, mu1.detach(), mu2).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert mu1.grad is None


def test_mismatched_inputs_are_rejected():
    z, mu = _features(0), _centroids(1)
    with pytest.raises(ValueError, match="aligned"):
        picie_loss(z, z[..., :4], mu, mu)
    with pytest.raises(ValueError, match="same shape"):
        picie_loss(z, z, mu, mu[:3])
    with pytest.raises(ValueError, match="feature dimension"):
        cluster_scores(z, torch.zeros(4, 5))
    with pytest.raises(ValueError, match="B x D x h x w"):
        cluster_scores(z[0], mu)
    with pytest.raises(ValueError, match="temperature"):
        PiCIELoss(temperature=0.0)
