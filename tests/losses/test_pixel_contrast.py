"""Pixel-contrast sampling and loss: formula, loop equivalence, sampling statistics, edge cases, autocast."""

import math

import pytest
import torch
import torch.nn.functional as F

from pixcontrast.losses import (
    PixelContrastLoss,
    downsample_labels,
    gather_pixels,
    sample_anchor_pixels,
    sample_anchors,
    supervised_contrastive_loss,
)

IGNORE = 255


def loop_sample(emb, lab, pred, max_samples, max_views, ignore, generator):
    """Per-image, per-class loop with the documented sampling rule (same random keys)."""
    b_size, dim, h, w = emb.shape
    keys = torch.randint(0, 2**40, (b_size, h * w), generator=generator)
    lab, pred = lab.reshape(b_size, -1), pred.reshape(b_size, -1)
    groups = [
        (b, c)
        for b in range(b_size)
        for c in sorted(set(lab[b].tolist()) - {ignore})
        if int((lab[b] == c).sum()) > max_views
    ]
    if not groups:
        return None, None
    n_view = max(1, min(max_samples // len(groups), max_views))
    anchors = []
    for b, c in groups:
        hard = torch.nonzero((lab[b] == c) & (pred[b] != c))[:, 0]
        easy = torch.nonzero((lab[b] == c) & (pred[b] == c))[:, 0]
        hard = hard[torch.argsort(keys[b, hard], stable=True)]
        easy = easy[torch.argsort(keys[b, easy], stable=True)]
        nh, ne = len(hard), len(easy)
        if nh >= n_view / 2 and ne >= n_view / 2:
            keep = n_view // 2
        elif nh >= n_view / 2:
            keep = n_view - ne
        else:
            keep = nh
        index = torch.cat([hard[:keep], easy[: n_view - keep]])
        anchors.append(emb[b].reshape(dim, -1)[:, index].T)
    return torch.stack(anchors), torch.tensor([c for _, c in groups])


def loop_loss(anchors, labels, tau, base, memory=None, memory_labels=None):
    """The paper's formula, anchor by anchor, in float64."""
    z = anchors.reshape(-1, anchors.shape[-1]).double()
    c = labels.repeat_interleave(anchors.shape[1])
    others, other_labels = (z, c) if memory is None else (memory.double(), memory_labels)
    terms = []
    for i in range(len(z)):
        s = others @ z[i] / tau
        positive = other_labels == c[i]
        if memory is None:
            positive[i] = False
        negative = (other_labels != c[i]) & (other_labels >= 0)
        positive &= other_labels >= 0
        if positive.sum() == 0:
            continue
        neg_sum = torch.exp(s[negative]).sum()
        sp = s[positive]
        terms.append(-(tau / base) * (sp - torch.log(torch.exp(sp) + neg_sum)).mean())
    return torch.stack(terms).mean() if terms else z.sum() * 0


def make_batch(b=2, d=8, h=12, w=16, classes=4, seed=0, wrong=0.3):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, classes, (b, h, w), generator=g)
    lab[:, 0, :3] = IGNORE
    pred = torch.where(torch.rand(b, h, w, generator=g) < wrong, torch.randint(0, classes, (b, h, w), generator=g), lab)
    pred[lab == IGNORE] = 0
    emb = F.normalize(torch.randn(b, d, h, w, generator=g, dtype=torch.float64), dim=1)
    return emb, lab, pred


def test_hand_computed_case():
    # two groups (classes 0 and 1) of two views each, embeddings on the unit circle
    anchors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]])
    tau, base = 0.5, 0.25
    loss = supervised_contrastive_loss(anchors, torch.tensor([0, 1]), tau, base)
    # anchor (1,0): positive (0,1) s=0; negatives (-1,0) s=-2, (0,-1) s=0
    a = -(tau / base) * (0 - math.log(math.exp(0) + math.exp(-2) + math.exp(0)))
    # every anchor is symmetric to this one
    assert loss.item() == pytest.approx(a, rel=1e-6)


@pytest.mark.parametrize("max_samples,max_views", [(64, 10), (50, 7), (1000, 3), (5, 5)])
def test_matches_loop_implementation(max_samples, max_views):
    emb, lab, pred = make_batch()
    emb_a = emb.clone().requires_grad_()
    emb_b = emb.clone().requires_grad_()
    anchors, labels = sample_anchors(emb_a, lab, pred, max_samples, max_views, IGNORE, torch.Generator().manual_seed(3))
    expected, expected_labels = loop_sample(
        emb_b, lab, pred, max_samples, max_views, IGNORE, torch.Generator().manual_seed(3)
    )
    assert torch.equal(anchors, expected)
    assert torch.equal(labels, expected_labels)
    loss = supervised_contrastive_loss(anchors, labels, 0.1, 0.07)
    reference = loop_loss(expected, expected_labels, 0.1, 0.07)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    loss.backward()
    reference.backward()
    assert torch.allclose(emb_a.grad, emb_b.grad, atol=1e-6)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_sample_anchors_takes_labels_at_either_resolution(scale):
    """Labels at the input resolution are resized as the loss resizes them; the loss accepts both too."""
    emb, lab, pred = make_batch(h=6, w=8)
    big = lab.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    small_result = sample_anchors(emb, lab, pred, 40, 5, IGNORE, torch.Generator().manual_seed(2))
    big_result = sample_anchors(emb, big, pred, 40, 5, IGNORE, torch.Generator().manual_seed(2))
    assert small_result[0].shape[0] > 0
    for small, large in zip(small_result, big_result, strict=True):
        assert torch.equal(small, large)
    losses = [
        PixelContrastLoss(max_samples=40, max_views=5)(emb, labels, pred, torch.Generator().manual_seed(2))
        for labels in (lab, big)
    ]
    assert torch.equal(losses[0], losses[1])


def test_module_resizes_labels_like_interpolate():
    emb, lab, pred = make_batch(h=6, w=8)
    big = lab.repeat_interleave(4, 1).repeat_interleave(4, 2)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    loss = PixelContrastLoss(max_samples=40, max_views=5)(emb, big, pred, generator=g1)
    anchors, labels = sample_anchors(emb, lab, pred, 40, 5, IGNORE, g2)
    assert loss.item() == pytest.approx(supervised_contrastive_loss(anchors, labels, 0.1, 0.07).item(), abs=1e-7)
    for size, out in [((33, 47), (10, 9)), ((64, 128), (16, 32))]:
        labels = torch.randint(0, 300, (2, *size))
        reference = F.interpolate(labels[:, None].float(), out, mode="nearest")[:, 0].long()
        assert torch.equal(downsample_labels(labels, out), reference)


def test_sampling_counts_and_no_duplicates():
    # one image, class 0 with 30 hard + 200 easy pixels, class 1 with 3 hard + 100 easy, class 2 too small
    lab = torch.zeros(1, 20, 20, dtype=torch.long)
    lab.view(-1)[230:333] = 1
    lab.view(-1)[333:338] = 2
    lab.view(-1)[338:] = IGNORE
    pred = lab.clone()
    pred.view(-1)[:30] = 1
    pred.view(-1)[230:233] = 0
    emb = torch.arange(400, dtype=torch.float64).view(1, 1, 20, 20)
    for n_view, max_views in [(30, 30), (7, 7), (60, 60)]:
        anchors, labels = sample_anchors(emb, lab, pred, 10_000, max_views, IGNORE, torch.Generator().manual_seed(0))
        assert labels.tolist() == [0, 1] and anchors.shape == (2, n_view, 1)
        picked = anchors[..., 0].long()
        hard = [int((pred.view(-1)[p] != lab.view(-1)[p]).sum()) for p in picked]
        assert len(set(picked[0].tolist())) == n_view and len(set(picked[1].tolist())) == n_view
        assert hard[0] == n_view // 2  # both halves available
        assert hard[1] == 3  # too few hard: all of them, rest easy
        assert (lab.view(-1)[picked[0]] == 0).all() and (lab.view(-1)[picked[1]] == 1).all()


def test_each_pixel_picked_uniformly():
    lab = torch.zeros(1, 1, 40, dtype=torch.long)
    pred = torch.zeros(1, 1, 40, dtype=torch.long)
    pred[..., :10] = 1  # 10 hard, 30 easy; n_view 8 -> 4 hard (p = 0.4), 4 easy (p = 4/30)
    emb = torch.arange(40.0).view(1, 1, 1, 40)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(40)
    trials = 3000
    for _ in range(trials):
        anchors, _ = sample_anchors(emb, lab, pred, 8, 8, IGNORE, g)
        counts[anchors.flatten().long()] += 1
    freq = counts / trials
    assert torch.allclose(freq[:10], torch.full((10,), 0.4), atol=0.04)
    assert torch.allclose(freq[10:], torch.full((30,), 4 / 30), atol=0.03)


def test_no_eligible_group_gives_connected_zero():
    emb, lab, pred = make_batch()
    emb.requires_grad_()
    for labels in [torch.full_like(lab, IGNORE), lab]:
        loss = PixelContrastLoss(max_views=10_000)(emb, labels, pred)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_empty_batch():
    emb = torch.zeros(0, 8, 4, 4, requires_grad=True)
    loss = PixelContrastLoss()(emb, torch.zeros(0, 16, 16, dtype=torch.long), torch.zeros(0, 4, 4, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()


def test_anchor_without_positive_left_out():
    # n_view = 1: an anchor is positive only with the same class in another image
    emb, lab, pred = make_batch(b=2, classes=3)
    lab[1][lab[1] == 2] = 1  # class 2 only in image 0 -> its anchor has no positive
    emb.requires_grad_()
    anchors, labels = sample_anchors(emb, lab, pred, 1024, 1, IGNORE, torch.Generator().manual_seed(0))
    assert anchors.shape[1] == 1 and labels.tolist() == [0, 1, 2, 0, 1]
    loss = supervised_contrastive_loss(anchors, labels, 0.1, 0.07)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(loop_loss(anchors, labels, 0.1, 0.07).item(), abs=1e-6)
    single = supervised_contrastive_loss(anchors[:1], labels[:1], 0.1, 0.07)  # one anchor, no positive
    assert single.item() == 0.0 and single.requires_grad


def test_class_zero_odd_views_and_order_invariance():
    emb, lab, pred = make_batch(classes=3)
    anchors, labels = sample_anchors(emb, lab, pred, 1024, 7, IGNORE, torch.Generator().manual_seed(1))
    assert anchors.shape[1] == 7 and 0 in labels.tolist()
    loss = supervised_contrastive_loss(anchors, labels, 0.1, 0.07)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    shuffled = anchors[perm][:, torch.randperm(7)]
    assert loss.item() == pytest.approx(supervised_contrastive_loss(shuffled, labels[perm], 0.1, 0.07).item(), abs=1e-6)


def test_more_groups_than_samples_gives_one_view():
    emb, lab, pred = make_batch(b=3, classes=4)
    anchors, labels = sample_anchors(emb, lab, pred, 5, 10, IGNORE)
    assert anchors.shape == (12, 1, 8)
    assert torch.isfinite(supervised_contrastive_loss(anchors, labels, 0.1, 0.07))


def test_memory_formula_matches_loop():
    g = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(5, 3, 6, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    labels = torch.tensor([0, 1, 2, 0, 3])
    memory = F.normalize(torch.randn(9, 6, generator=g, dtype=torch.float64), dim=-1)
    memory_labels = torch.tensor([0, 0, 1, 1, 1, 2, -1, -1, 4])  # class 3 has no row: left out
    loss = supervised_contrastive_loss(anchors, labels, 0.07, 0.07, memory, memory_labels)
    reference = loop_loss(anchors, labels, 0.07, 0.07, memory, memory_labels)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    (grad,) = torch.autograd.grad(loss, anchors)
    (expected,) = torch.autograd.grad(reference, anchors)
    assert torch.allclose(grad, expected, atol=1e-6)


def test_bf16_autocast_computes_in_float32():
    emb, lab, pred = make_batch()
    emb16 = emb.to(torch.bfloat16).float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = PixelContrastLoss(max_samples=64, max_views=10)(
            emb16.to(torch.bfloat16), lab, pred, generator=torch.Generator().manual_seed(0)
        )
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    exact = PixelContrastLoss(max_samples=64, max_views=10)(
        emb.to(torch.bfloat16).float(), lab, pred, generator=torch.Generator().manual_seed(0)
    )
    assert loss.item() == pytest.approx(exact.item(), abs=1e-5)
    loss.backward()
    assert torch.isfinite(emb16.grad).all()


def test_stable_with_unnormalised_embeddings():
    emb, lab, pred = make_batch()
    loss = PixelContrastLoss(max_samples=64, max_views=10)(emb * 100, lab, pred)
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "emb_shape,lab_shape,pred_shape,match",
    [
        ((2, 8, 4, 4), (2, 16), (2, 4, 4), "labels must be"),
        ((2, 8, 4, 4), (3, 16, 16), (2, 4, 4), "labels must be"),
        ((2, 8, 4, 4), (2, 16, 16), (2, 5, 4), "predictions must be"),
        ((2, 8, 16), (2, 16, 16), (2, 4, 4), "embeddings must be"),
    ],
)
def test_shape_errors(emb_shape, lab_shape, pred_shape, match):
    with pytest.raises(ValueError, match=match):
        PixelContrastLoss()(
            torch.zeros(emb_shape), torch.zeros(lab_shape, dtype=torch.long), torch.zeros(pred_shape, dtype=torch.long)
        )


def test_value_errors():
    emb, lab, pred = make_batch()
    with pytest.raises(ValueError, match="integer class ids"):
        PixelContrastLoss()(emb, lab.float(), pred)
    with pytest.raises(ValueError, match="outside"):
        PixelContrastLoss()(emb, lab - 1, pred)
    anchors = torch.zeros(2, 3, 8)
    with pytest.raises(ValueError, match="D = 8"):
        supervised_contrastive_loss(anchors, torch.tensor([0, 1]), 0.1, 0.07, torch.zeros(4, 5), torch.zeros(4))
    with pytest.raises(ValueError, match="anchor_labels"):
        supervised_contrastive_loss(anchors, torch.tensor([0]), 0.1, 0.07)
    with pytest.raises(ValueError, match="together"):
        supervised_contrastive_loss(anchors, torch.tensor([0, 1]), 0.1, 0.07, torch.zeros(4, 8))
    with pytest.raises(ValueError, match="max_samples"):
        PixelContrastLoss(max_views=0)
    with pytest.raises(ValueError, match="temperatures"):
        PixelContrastLoss(temperature=0)


def test_anchor_pixels_index_the_sampled_embeddings():
    generator = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 5, 8, 8, generator=generator)
    labels = torch.randint(0, 3, (2, 8, 8), generator=generator)
    pred = torch.randint(0, 3, (2, 8, 8), generator=generator)
    anchors, anchor_labels = sample_anchors(emb, labels, pred, 40, 6, IGNORE, torch.Generator().manual_seed(1))
    image, pixel, pixel_labels = sample_anchor_pixels(labels, pred, 40, 6, IGNORE, torch.Generator().manual_seed(1))
    assert torch.equal(pixel_labels, anchor_labels) and pixel.shape == anchors.shape[:2]
    assert torch.equal(gather_pixels(emb, image[:, None], pixel), anchors)
    rows = emb.permute(0, 2, 3, 1).reshape(2, 64, 5)
    assert torch.equal(rows[image[:, None], pixel], anchors)
    assert (labels.flatten(1)[image[:, None], pixel] == anchor_labels[:, None]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gather_pixels_gradient_sums_repeated_pixels(dtype):
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 5, 4, 6, generator=generator).to(dtype).requires_grad_()
    image = torch.tensor([[0], [2], [1]])
    pixel = torch.tensor([[3, 7, 3, 3], [7, 7, 23, 0], [0, 5, 9, 0]])  # repeats within and across rows
    weights = torch.randn(3, 4, 5, generator=generator).to(dtype)
    (gather_pixels(maps, image, pixel) * weights).sum().backward()
    expected = torch.zeros(3, 5, 24, dtype=torch.float64)
    expected.index_put_((image[..., None], torch.arange(5), pixel[..., None]), weights.double(), accumulate=True)
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(maps.grad.double(), expected.view(3, 5, 4, 6), rtol=tolerance, atol=tolerance)
    assert (maps.grad.flatten(2)[0, :, [0, 1, 2, 4, 5, 6]] == 0).all()  # pixels never gathered get zero


def test_gather_pixels_gradient_equals_indexing_autograd():
    generator = torch.Generator().manual_seed(1)
    maps = torch.randn(2, 7, 5, 5, generator=generator, requires_grad=True)
    image = torch.tensor([0, 1, 1, 0, 1, 0])
    pixel = torch.tensor([4, 9, 24, 4, 9, 0])  # each pixel at most twice, as anchors + bank pixels
    weights = torch.randn(6, 7, generator=generator)
    (gather_pixels(maps, image, pixel) * weights).sum().backward()
    reference = maps.detach().clone().requires_grad_()
    (reference.flatten(2)[image, :, pixel] * weights).sum().backward()
    assert torch.equal(maps.grad, reference.grad)


def linear_projection(channels: int, dim: int):
    weight = torch.randn(dim, channels, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return lambda rows: F.normalize(rows @ weight.T, dim=-1), weight


def test_projecting_sampled_pixels_equals_projecting_the_map():
    """A per-pixel projection (no batch statistics) gives the same loss and gradients either way."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 6, 16, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (2, 32, 32), generator=generator)
    pred = torch.randint(0, 4, (2, 16, 16), generator=generator)
    project, weight = linear_projection(6, 5)
    criterion = PixelContrastLoss(max_samples=60, max_views=8)
    sampled = criterion(features, labels, pred, torch.Generator().manual_seed(1), projection=project)
    (sampled_grad,) = torch.autograd.grad(sampled, features)
    embeddings = F.normalize(torch.einsum("dc,bchw->bdhw", weight, features), dim=1)
    full = criterion(embeddings, labels, pred, torch.Generator().manual_seed(1))
    (full_grad,) = torch.autograd.grad(full, features)
    assert sampled.item() == pytest.approx(full.item(), rel=1e-12)
    torch.testing.assert_close(sampled_grad, full_grad)
    assert (sampled_grad.abs().sum(1) > 0).sum() <= 60  # only the sampled pixels receive a gradient


def test_projection_sees_only_the_sampled_rows():
    seen = []

    def project(rows):
        seen.append(rows.shape[0])
        return F.normalize(rows, dim=-1)

    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, :, 4:] = 1
    criterion = PixelContrastLoss(max_samples=12, max_views=5)
    criterion(torch.randn(2, 3, 8, 8), labels, labels, projection=project)
    assert seen == [4 * 3]  # 4 groups x 3 views, one call
    criterion(torch.randn(2, 3, 8, 8), torch.full((2, 8, 8), IGNORE), labels, projection=project)
    assert seen[-1] == 0  # nothing to sample: the projection still runs (SyncBatchNorm needs every rank)
