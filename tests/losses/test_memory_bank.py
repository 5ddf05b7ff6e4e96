"""PixelMemoryBank: ring writes, sampling from the class's pixels, persistence, loss use, DDP gathering."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pixcontrast.losses import PixelContrastLoss, PixelMemoryBank, sample_anchors, supervised_contrastive_loss

IGNORE = 255


def region_batch(b, classes, h=4, w=6, dim=3, seed=0):
    """Labels with random classes; every pixel of (image, class) shares one embedding e[b, c]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes + 1, (b, h, w), generator=g)
    labels[labels == classes] = IGNORE
    codes = F.normalize(torch.randn(b, classes, dim, generator=g, dtype=torch.float64), dim=-1)
    emb = codes[torch.arange(b)[:, None, None], labels.clamp(max=classes - 1)].permute(0, 3, 1, 2)
    return emb.contiguous(), labels, codes


def ring_model(batches, classes, size, per_image):
    """Python model of the queues: lists of rows per class, newest last, truncated to ``size``."""
    pixel = [[] for _ in range(classes)]
    segment = [[] for _ in range(classes)]
    for labels, codes in batches:
        for b in range(labels.shape[0]):
            for c in range(classes):
                n = int((labels[b] == c).sum())
                if n:
                    pixel[c] += [codes[b, c]] * min(n, per_image)
                    segment[c] += [codes[b, c]]
    return pixel, segment


def expected_queue(rows, size, dim):
    queue = torch.zeros(size, dim, dtype=torch.float64)
    for i, row in enumerate(rows):  # writes in order, pointer wraps
        queue[i % size] = row
    return queue


@pytest.mark.parametrize("size,per_image,steps", [(5, 2, 4), (3, 10, 2), (50, 3, 3)])
def test_ring_writes_and_wrap_around(size, per_image, steps):
    classes, dim = 4, 3
    bank = PixelMemoryBank(classes, dim, memory_size=size, pixels_per_image=per_image).double()
    batches = []
    for step in range(steps):
        emb, labels, codes = region_batch(3, classes, dim=dim, seed=step)
        bank.enqueue(emb, labels, torch.Generator().manual_seed(step))
        batches.append((labels, codes))
    pixel, segment = ring_model(batches, classes, size, per_image)
    for c in range(classes):
        for which, rows in [(0, pixel[c]), (1, segment[c])]:
            assert bank.pointer[c, which] == len(rows) % size
            assert bank.filled[c, which] == min(len(rows), size)
            assert torch.allclose(bank.queue[c, which], expected_queue(rows, size, dim), rtol=0, atol=1e-12)


def test_pixels_come_from_their_class_without_duplicates():
    classes, dim, h, w = 3, 2, 6, 6
    labels = torch.randint(0, classes, (2, h, w), generator=torch.Generator().manual_seed(0))
    labels[0, 0] = IGNORE
    # embedding = (pixel id, 1) normalised: each pixel identifiable
    ids = torch.arange(2 * h * w, dtype=torch.float64).view(2, 1, h, w)
    emb = torch.cat([ids, torch.ones_like(ids)], 1)
    bank = PixelMemoryBank(classes, dim, memory_size=100, pixels_per_image=4).double()
    bank.enqueue(emb, labels, torch.Generator().manual_seed(1))
    flat = labels.flatten()
    for c in range(classes):
        rows = bank.pixel_queue[c, : bank.filled[c, 0]]
        picked = torch.round(rows[:, 0] / rows[:, 1]).long()
        expected = sum(min(int((labels[b] == c).sum()), 4) for b in range(2))
        assert len(set(picked.tolist())) == len(picked) == expected
        assert (flat[picked] == c).all()
        first = (torch.arange(2 * h * w) < h * w) & (flat == c)
        mean = F.normalize(emb[0].flatten(1)[:, first[: h * w]].mean(1), dim=0)
        assert torch.allclose(bank.segment_queue[c, 0], mean)


def test_filled_rows_only_and_class_zero():
    bank = PixelMemoryBank(3, 2, memory_size=4, pixels_per_image=1)
    emb = F.normalize(torch.randn(1, 2, 2, 2), dim=1)
    labels = torch.tensor([[[0, 0], [IGNORE, IGNORE]]])
    bank.enqueue(emb, labels)
    memory, memory_labels = bank.memory()
    assert memory.shape == (24, 2)
    assert memory_labels.tolist().count(0) == 2 and (memory_labels >= 0).sum() == 2  # class 0 kept


def test_state_dict_round_trip(tmp_path):
    emb, labels, _ = region_batch(2, 4)
    bank = PixelMemoryBank(4, 3, memory_size=7, pixels_per_image=2)
    bank.enqueue(emb.float(), labels)
    assert set(bank.state_dict()) == {"queue", "pointer", "filled"}
    torch.save(bank.state_dict(), tmp_path / "bank.pt")
    restored = PixelMemoryBank(4, 3, memory_size=7, pixels_per_image=2)
    restored.load_state_dict(torch.load(tmp_path / "bank.pt"))
    for name, value in bank.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value)


def test_loss_with_bank_uses_memory_then_enqueues():
    emb, labels, _ = region_batch(2, 3, h=12, w=12, dim=4)
    emb = emb + 0.1 * torch.randn(emb.shape, generator=torch.Generator().manual_seed(0), dtype=emb.dtype)
    bank = PixelMemoryBank(3, 4, memory_size=20, pixels_per_image=3).double()
    bank.enqueue(emb, labels)
    before = {k: v.clone() for k, v in bank.state_dict().items()}
    criterion = PixelContrastLoss(temperature=0.07, max_views=1, memory_bank=bank)
    pred = labels.clamp(max=2)
    loss = criterion(emb, labels, pred, generator=torch.Generator().manual_seed(5))
    anchors, anchor_labels = sample_anchors(emb, labels, pred, 1024, 1, IGNORE, torch.Generator().manual_seed(5))
    memory = before["queue"].view(-1, 4)
    rows = torch.arange(20)
    memory_labels = torch.where(rows < before["filled"][..., None], torch.arange(3)[:, None, None], -1).flatten()
    expected = supervised_contrastive_loss(anchors, anchor_labels, 0.07, 0.07, memory, memory_labels)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-9)
    assert (bank.filled > before["filled"]).any()  # enqueued after the loss
    criterion.eval()
    snapshot = bank.filled.clone()
    criterion(emb, labels, pred)
    assert torch.equal(bank.filled, snapshot)  # no enqueue in eval mode
    manual = PixelContrastLoss(max_views=1, memory_bank=bank, update_memory=False)
    manual(emb, labels, pred)
    assert torch.equal(bank.filled, snapshot)


def test_more_anchors_than_rows_and_empty_bank():
    bank = PixelMemoryBank(2, 4, memory_size=2, pixels_per_image=1)
    anchors = F.normalize(torch.randn(10, 5, 4), dim=-1).requires_grad_()
    labels = torch.arange(10) % 2
    memory, memory_labels = bank.memory()
    empty = supervised_contrastive_loss(anchors, labels, 0.1, 0.07, memory, memory_labels)
    assert empty.item() == 0.0 and empty.requires_grad
    bank.enqueue(F.normalize(torch.randn(1, 4, 2, 2), dim=1), torch.tensor([[[0, 1], [1, 0]]]))
    loss = supervised_contrastive_loss(anchors, labels, 0.1, 0.07, *bank.memory())
    assert torch.isfinite(loss) and loss > 0


def test_semi_hard_mining_mask():
    bank = PixelMemoryBank(
        3,
        4,
        memory_size=50,
        pixels_per_image=20,
        hard_mining=True,
        mining_fraction=0.2,
        num_hard_positives=3,
        num_hard_negatives=5,
    )
    g = torch.Generator().manual_seed(0)
    bank.enqueue(F.normalize(torch.randn(4, 4, 8, 8, generator=g), dim=1), torch.randint(0, 3, (4, 8, 8), generator=g))
    anchors = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    anchor_labels = torch.tensor([0, 1, 2, 0, 1, 2])
    memory, memory_labels, mask = bank.contrast_set(anchors, anchor_labels, g)
    similarity = anchors @ memory.T
    for i in range(6):
        negative = (memory_labels >= 0) & (memory_labels != anchor_labels[i])
        positive = memory_labels == anchor_labels[i]
        top_negative = similarity[i][negative].sort(descending=True).values[: int(0.2 * negative.sum() + 0.999)]
        assert (mask[i] & negative).sum() == 5 and (similarity[i][mask[i] & negative] >= top_negative[-1]).all()
        far_positive = similarity[i][positive].sort().values[: int(0.2 * positive.sum() + 0.999)]
        assert (mask[i] & positive).sum() == 3 and (similarity[i][mask[i] & positive] <= far_positive[-1]).all()
    loss = PixelContrastLoss(max_views=1, memory_bank=bank)(
        F.normalize(torch.randn(2, 4, 8, 8, generator=g), dim=1),
        torch.randint(0, 3, (2, 8, 8), generator=g),
        torch.randint(0, 3, (2, 8, 8), generator=g),
    )
    assert torch.isfinite(loss)


def test_errors():
    with pytest.raises(ValueError, match="memory_size"):
        PixelMemoryBank(3, 4, memory_size=0)
    with pytest.raises(ValueError, match="mining_fraction"):
        PixelMemoryBank(3, 4, mining_fraction=0)
    bank = PixelMemoryBank(3, 4)
    with pytest.raises(ValueError, match="B x 4 x h x w"):
        bank.enqueue(torch.zeros(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be"):
        bank.enqueue(torch.zeros(1, 4, 2, 2), torch.zeros(2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="gather_anchors"):
        PixelContrastLoss(memory_bank=bank, gather_anchors=True)


def _ddp_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    emb, labels, _ = region_batch(2 + rank, 3, seed=10 + rank)  # different batch sizes per rank
    bank = PixelMemoryBank(3, 3, memory_size=6, pixels_per_image=2).double()
    bank.enqueue(emb, labels, torch.Generator().manual_seed(rank))
    bank.enqueue(emb, labels, torch.Generator().manual_seed(rank))
    # cross-image contrast over the global batch
    g = torch.Generator().manual_seed(20 + rank)
    feats = F.normalize(torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    lab = torch.randint(0, 3, (2, 6, 6), generator=g)
    pred = torch.randint(0, 3, (2, 6, 6), generator=g)
    criterion = PixelContrastLoss(max_samples=24, max_views=4, gather_anchors=True)
    loss = criterion(feats, lab, pred, torch.Generator().manual_seed(rank))
    loss.backward()
    result = {"state": bank.state_dict(), "loss": loss.detach(), "grad": feats.grad}
    torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.distributed
def test_ddp_gather_two_processes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    for name in ["queue", "pointer", "filled"]:
        assert torch.equal(results[0]["state"][name], results[1]["state"][name])
    # same as one process enqueueing both ranks' images (rank order) twice
    single = PixelMemoryBank(3, 3, memory_size=6, pixels_per_image=2).double()
    both = [region_batch(2 + r, 3, seed=10 + r) for r in range(2)]
    emb = torch.cat([b[0] for b in both])
    labels = torch.cat([b[1] for b in both])
    single.enqueue(emb, labels)
    single.enqueue(emb, labels)
    assert torch.allclose(single.queue, results[0]["state"]["queue"])
    assert torch.equal(single.pointer, results[0]["state"]["pointer"])
    # gathered anchors: each rank's loss contrasts its anchors with both ranks' anchors
    sampled = []
    for r in range(2):
        g = torch.Generator().manual_seed(20 + r)
        feats = F.normalize(torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64), dim=1)
        lab = torch.randint(0, 3, (2, 6, 6), generator=g)
        pred = torch.randint(0, 3, (2, 6, 6), generator=g)
        sampled.append(sample_anchors(feats, lab, pred, 24, 4, IGNORE, torch.Generator().manual_seed(r)))
    for r in range(2):
        anchors, labels = sampled[r]
        other, other_labels = sampled[1 - r]
        memory = torch.cat([anchors.reshape(-1, 3), other.reshape(-1, 3)])
        memory_labels = torch.cat(
            [labels.repeat_interleave(anchors.shape[1]), other_labels.repeat_interleave(other.shape[1])]
        )
        z = anchors.reshape(-1, 3)
        c = labels.repeat_interleave(anchors.shape[1])
        terms = []
        for i in range(len(z)):
            s = memory @ z[i] / 0.1
            positive = memory_labels == c[i]
            positive[i] = False
            negative = memory_labels != c[i]
            if positive.any():
                sp = s[positive]
                terms.append(-(0.1 / 0.07) * (sp - torch.log(torch.exp(sp) + torch.exp(s[negative]).sum())).mean())
        assert results[r]["loss"].item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-9)
        assert results[r]["grad"].abs().sum() > 0


def test_backward_after_the_bank_was_updated_in_place():
    """The loss enqueues after computing its value; backward must not depend on the overwritten rows."""
    torch.manual_seed(0)
    bank = PixelMemoryBank(3, 8, memory_size=4, pixels_per_image=2)
    loss_fn = PixelContrastLoss(max_views=1, memory_bank=bank)
    labels = torch.arange(3).repeat_interleave(2)[None, None].expand(2, 6, 6).contiguous()
    for _ in range(3):
        loss_fn(torch.nn.functional.normalize(torch.randn(2, 8, 6, 6), dim=1), labels, labels)
    embeddings = torch.nn.functional.normalize(torch.randn(2, 8, 6, 6), dim=1).requires_grad_()
    memory, memory_labels = (t.clone() for t in bank.memory())
    generator_state = torch.Generator().manual_seed(1)
    loss = loss_fn(embeddings, labels, labels, generator=generator_state)
    loss.backward()
    anchors, anchor_labels = sample_anchors(embeddings, labels, labels, 1024, 1, 255, torch.Generator().manual_seed(1))
    expected = torch.autograd.grad(
        supervised_contrastive_loss(anchors, anchor_labels, 0.1, 0.07, memory=memory, memory_labels=memory_labels),
        embeddings,
    )[0]
    torch.testing.assert_close(embeddings.grad, expected)


def test_sampled_pixels_fill_the_bank_like_the_map():
    """With segment_pixels covering every segment, embedding sampled pixels gives the same queues."""
    emb, labels, _ = region_batch(2, 3, h=6, w=6, dim=4)
    noise = torch.randn(emb.shape, generator=torch.Generator().manual_seed(0), dtype=emb.dtype)
    emb = F.normalize(emb + 0.2 * noise, dim=1)
    from_map = PixelMemoryBank(3, 4, memory_size=9, pixels_per_image=2).double()
    from_map.enqueue(emb, labels, torch.Generator().manual_seed(4))
    from_samples = PixelMemoryBank(3, 4, memory_size=9, pixels_per_image=2, segment_pixels=36).double()
    pixel, valid = from_samples.sample_pixels(labels, torch.Generator().manual_seed(4))
    assert pixel.shape == valid.shape == (2, 3, 36)
    image = torch.arange(2)[:, None, None]
    from_samples.enqueue_samples(emb.flatten(2)[image, :, pixel], valid)
    for name, value in from_map.state_dict().items():
        torch.testing.assert_close(from_samples.state_dict()[name], value)


def test_segment_rows_average_at_most_segment_pixels():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    bank = PixelMemoryBank(2, 2, memory_size=4, pixels_per_image=1, segment_pixels=3)
    pixel, valid = bank.sample_pixels(labels, torch.Generator().manual_seed(0))
    assert valid[0, 0].all() and not valid[0, 1].any() and len(set(pixel[0, 0].tolist())) == 3
    samples = torch.zeros(1, 2, 3, 2)
    samples[0, 0] = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    bank.enqueue_samples(samples, valid)
    torch.testing.assert_close(bank.segment_queue[0, 0], F.normalize(torch.tensor([2.0, 1.0]), dim=0))
    torch.testing.assert_close(bank.pixel_queue[0, 0], torch.tensor([1.0, 0.0]))
    assert bank.filled.tolist() == [[1, 1], [0, 0]]
    with pytest.raises(ValueError, match="samples must be"):
        bank.enqueue_samples(torch.zeros(1, 3, 3, 2), torch.ones(1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid must be"):
        bank.enqueue_samples(samples, valid[..., :2])
    with pytest.raises(ValueError, match="segment_pixels"):
        PixelMemoryBank(2, 2, segment_pixels=0)


def test_loss_projecting_sampled_pixels_matches_the_map_with_a_bank():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 6, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 6, 6), generator=generator)
    weight = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    banks = [PixelMemoryBank(3, 4, memory_size=8, pixels_per_image=2, segment_pixels=36).double() for _ in range(2)]
    results = []

    def project(rows):
        return F.normalize(rows @ weight.T, dim=-1)

    for bank, sampled in zip(banks, (True, False), strict=True):
        criterion = PixelContrastLoss(temperature=0.07, max_views=1, memory_bank=bank)
        step = torch.Generator().manual_seed(9)
        losses = []
        for _ in range(2):  # the second step contrasts with the rows of the first
            if sampled:
                loss = criterion(features, labels, labels, step, projection=project)
            else:
                embeddings = F.normalize(torch.einsum("dc,bchw->bdhw", weight, features), dim=1)
                loss = criterion(embeddings, labels, labels, step)
            losses.append(loss)
        results.append((torch.stack(losses), torch.autograd.grad(losses[-1], features)[0]))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    torch.testing.assert_close(banks[0].queue, banks[1].queue)


def test_bfloat16_bank_stores_half_and_matches_the_float32_loss():
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(4, 16, 12, 12, generator=g), dim=1)
    labels = torch.randint(0, 5, (4, 12, 12), generator=g)
    exact = PixelMemoryBank(5, 16, memory_size=40, pixels_per_image=6)
    half = PixelMemoryBank(5, 16, memory_size=40, pixels_per_image=6, memory_dtype="bfloat16")
    for bank in (exact, half):
        bank.enqueue(emb, labels, torch.Generator().manual_seed(1))
    assert half.queue.dtype == torch.bfloat16 and "memory_dtype=bfloat16" in repr(half)
    assert half.queue.element_size() * 2 == exact.queue.element_size()
    assert torch.equal(half.filled, exact.filled)
    assert torch.allclose(half.queue.float(), exact.queue, atol=4e-3)  # rows rounded to 8 significant bits
    anchors = F.normalize(torch.randn(10, 1, 16, generator=g), dim=-1)
    anchor_labels = torch.arange(10) % 5
    grads = []
    for bank in (exact, half):
        leaf = anchors.clone().requires_grad_()
        loss = bank.contrast(leaf, anchor_labels, temperature=0.07)
        loss.backward()
        assert loss.dtype == torch.float32 and leaf.grad.dtype == torch.float32
        grads.append((loss.detach(), leaf.grad))
    (loss32, grad32), (loss16, grad16) = grads
    assert loss16.item() == pytest.approx(loss32.item(), rel=1e-2)
    assert ((grad16 - grad32).norm() / grad32.norm()).item() < 3e-2


def test_bfloat16_bank_hard_mining_and_checkpoints_across_dtypes():
    g = torch.Generator().manual_seed(0)
    half = PixelMemoryBank(3, 4, memory_size=30, pixels_per_image=10, hard_mining=True, memory_dtype="bfloat16")
    half.enqueue(F.normalize(torch.randn(2, 4, 8, 8, generator=g), dim=1), torch.randint(0, 3, (2, 8, 8), generator=g))
    anchors = F.normalize(torch.randn(4, 1, 4, generator=g), dim=-1).requires_grad_()
    loss = half.contrast(anchors, torch.tensor([0, 1, 2, 0]), generator=g)
    loss.backward()
    assert torch.isfinite(loss) and anchors.grad.abs().sum() > 0
    exact = PixelMemoryBank(3, 4, memory_size=30, pixels_per_image=10)
    exact.load_state_dict(half.state_dict())  # a bfloat16 checkpoint restores into a float32 bank, and back
    assert exact.queue.dtype == torch.float32 and torch.equal(exact.queue, half.queue.float())
    half.load_state_dict(exact.state_dict())
    assert half.queue.dtype == torch.bfloat16


def test_unknown_memory_dtype_is_an_error():
    with pytest.raises(ValueError, match="memory_dtype must be one of"):
        PixelMemoryBank(3, 4, memory_dtype="float16")
