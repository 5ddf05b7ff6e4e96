import pytest
import torch
import torch.nn.functional as F

from pixcontrast.losses.cluster_head import ClusterHead, cluster_scores
from pixcontrast.losses.picie import picie_loss


def _features(seed: int, shape=(2, 8, 5, 6)) -> torch.Tensor:
    return F.normalize(torch.randn(shape, generator=torch.Generator().manual_seed(seed)), dim=1)


def _centroids(seed: int, k: int = 4, d: int = 8) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed)) * 3.0  # not normalised on purpose


def _head(centroids: torch.Tensor, sizes: torch.Tensor | None = None, **kwargs) -> ClusterHead:
    head = ClusterHead(*centroids.shape, **kwargs)
    head.set_centroids(centroids)
    if sizes is not None:
        head.set_sizes(sizes)
    return head


def _own_labels(z1, z2, head1, head2) -> tuple[torch.Tensor, torch.Tensor]:
    return head1.assign(z1), head2.assign(z2)


def test_cluster_sizes_weigh_each_cross_entropy_by_its_labels_view():
    features1, features2, centroids = _features(20), _features(21), _centroids(22)
    sizes1, sizes2 = torch.tensor([5.0, 1.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0, 5.0])
    head1 = _head(centroids, sizes1, class_weights="official")
    head2 = _head(centroids, sizes2, class_weights="official")
    labels = _own_labels(features1, features2, head1, head2)
    out = picie_loss(features1, features2, head1, head2, labels)
    y1, y2 = labels

    def ce(features, target, sizes):
        weight = sizes / sizes.sum()
        return F.cross_entropy(cluster_scores(features, centroids), target, weight=weight)

    expected = 0.25 * (
        ce(features1, y1, sizes1) + ce(features2, y2, sizes2) + ce(features1, y2, sizes2) + ce(features2, y1, sizes1)
    )
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    batch_weighted = _head(centroids, class_weights="official")  # no sizes yet: the batch's counts
    assert out.loss.item() != pytest.approx(
        picie_loss(features1, features2, batch_weighted, batch_weighted, labels).loss.item(), rel=1e-3
    )


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
    head1, head2 = _head(mu1), _head(mu2)
    z1, z2 = F.normalize(raw1, dim=1), F.normalize(raw2, dim=1)
    output = picie_loss(z1, z2, head1, head2, _own_labels(z1, z2, head1, head2), temperature=0.3)
    grads = torch.autograd.grad(output.loss, (raw1, raw2))
    expected = _reference_loss(F.normalize(raw1, dim=1), F.normalize(raw2, dim=1), mu1, mu2, 0.3)
    expected_grads = torch.autograd.grad(expected, (raw1, raw2))
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert torch.allclose(grad, expected_grad, atol=1e-6)
    assert output.loss.item() == pytest.approx(0.5 * (output.within_view + output.across_view).item())


def test_the_loss_trains_against_the_given_labels():
    z1, z2, head = _features(16), _features(17), _head(_centroids(18))
    own = picie_loss(z1, z2, head, head, _own_labels(z1, z2, head, head), temperature=0.5)
    given = (torch.zeros(2, 5, 6, dtype=torch.int64), torch.ones(2, 5, 6, dtype=torch.int64))
    output = picie_loss(z1, z2, head, head, given, temperature=0.5)
    scores = cluster_scores(z1, head.centroids) / 0.5, cluster_scores(z2, head.centroids) / 0.5
    # One cluster per view: every weighted cross-entropy is a plain mean.
    within = 0.5 * (F.cross_entropy(scores[0], given[0]) + F.cross_entropy(scores[1], given[1]))
    across = 0.5 * (F.cross_entropy(scores[0], given[1]) + F.cross_entropy(scores[1], given[0]))
    assert output.within_view.item() == pytest.approx(within.item(), rel=1e-5)
    assert output.across_view.item() == pytest.approx(across.item(), rel=1e-5)
    assert output.loss.item() != pytest.approx(own.loss.item())
    with pytest.raises(ValueError, match="labels must be"):
        picie_loss(z1, z2, head, head, (given[0][:, :2], given[1]))


def test_centroids_get_no_gradient_and_training_the_features_lowers_the_loss():
    raw = torch.randn(2, 8, 5, 6, generator=torch.Generator().manual_seed(9), requires_grad=True)
    head1, head2 = _head(_centroids(10)), _head(_centroids(11))
    optimizer = torch.optim.Adam([raw], lr=0.05)
    losses = []
    for _ in range(30):
        z = F.normalize(raw, dim=1)
        loss = picie_loss(z, z, head1, head2, _own_labels(z, z, head1, head2), temperature=0.2).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert list(head1.parameters()) == [] and not head1.centroids.requires_grad


def test_mismatched_inputs_are_rejected():
    z, mu = _features(0), _centroids(1)
    head = _head(mu)
    labels = _own_labels(z, z, head, head)
    with pytest.raises(ValueError, match="aligned"):
        picie_loss(z, z[..., :4], head, head, labels)
    with pytest.raises(ValueError, match="same shape"):
        picie_loss(z, z, head, _head(mu[:3]), labels)
