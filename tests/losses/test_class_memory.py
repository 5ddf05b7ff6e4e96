"""The loss against a class-grouped memory equals the generic memory loss, with the same gradients."""

import pytest
import torch
import torch.nn.functional as F

from pixcontrast.losses import PixelMemoryBank, class_memory_contrastive_loss, supervised_contrastive_loss


def grouped_memory(classes: int, rows: int, dim: int, fill: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    memory = F.normalize(torch.randn(classes, rows, dim, generator=generator, dtype=torch.float64), dim=-1)
    filled = torch.rand(classes, rows, generator=generator) < fill
    return memory, filled


def generic(anchors, labels, memory, filled, temperature, base_temperature):
    """The same loss through the generic memory path (row labels: class, or -1 where unfilled)."""
    classes, _, dim = memory.shape
    row_labels = torch.where(filled, torch.arange(classes)[:, None], -1).flatten()
    return supervised_contrastive_loss(
        anchors, labels, temperature, base_temperature, memory.reshape(-1, dim), row_labels
    )


@pytest.mark.parametrize("fill", [1.0, 0.5, 0.1])
def test_equals_the_generic_memory_loss_and_gradient(fill):
    memory, filled = grouped_memory(5, 7, 6, fill)
    filled[3] = False  # a class without rows: its anchors have no positive
    generator = torch.Generator().manual_seed(1)
    anchors = F.normalize(torch.randn(8, 3, 6, generator=generator, dtype=torch.float64), dim=-1).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 4, 7, 0, 2])  # 7: a class outside the memory, negatives only
    ours = class_memory_contrastive_loss(anchors, labels, memory, filled, 0.07, 0.1)
    (ours_grad,) = torch.autograd.grad(ours, anchors)
    reference = generic(anchors, labels, memory, filled, 0.07, 0.1)
    (reference_grad,) = torch.autograd.grad(reference, anchors)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-12)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-10, atol=1e-12)


def test_gradcheck_and_unnormalised_scale():
    memory, filled = grouped_memory(3, 4, 5, 0.8, seed=2)
    anchors = torch.randn(4, 2, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 1])
    assert torch.autograd.gradcheck(lambda x: class_memory_contrastive_loss(x, labels, memory, filled), (anchors,))
    large = class_memory_contrastive_loss(anchors.detach() * 1e3, labels, memory * 1e3, filled)
    assert torch.isfinite(large)  # the log-sum-exp is shifted by each anchor's largest negative


def test_empty_cases_give_a_connected_zero():
    memory, filled = grouped_memory(2, 3, 4, 1.0)
    anchors = torch.zeros(0, 0, 4, requires_grad=True)
    loss = class_memory_contrastive_loss(anchors, torch.zeros(0, dtype=torch.long), memory, filled)
    loss.backward()
    assert loss.item() == 0 and anchors.grad is not None
    anchors = torch.randn(2, 1, 4, dtype=torch.float64, requires_grad=True)
    empty_bank = class_memory_contrastive_loss(anchors, torch.tensor([0, 1]), memory, torch.zeros_like(filled))
    empty_bank.backward()
    assert empty_bank.item() == 0 and not anchors.grad.any()


def test_bf16_autocast_computes_in_float32():
    memory, filled = grouped_memory(3, 5, 8, 1.0)
    anchors = F.normalize(torch.randn(3, 2, 8), dim=-1)
    labels = torch.tensor([0, 1, 2])
    expected = class_memory_contrastive_loss(anchors, labels, memory.float(), filled)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = class_memory_contrastive_loss(anchors.bfloat16(), labels, memory.float(), filled)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected.item(), rel=2e-2)


def test_bank_class_rows_follow_the_queues():
    bank = PixelMemoryBank(3, 4, memory_size=5, pixels_per_image=2)
    bank.filled.copy_(torch.tensor([[2, 1], [0, 5], [5, 0]]))
    rows, filled = bank.class_rows()
    assert rows.shape == (3, 10, 4) and rows.data_ptr() == bank.queue.data_ptr()
    assert filled.sum(1).tolist() == [3, 5, 5]
    assert filled[0, :5].tolist() == [True, True, False, False, False]  # pixel queue first
    assert filled[0, 5:].tolist() == [True, False, False, False, False]  # then the segment queue


def test_shape_errors():
    memory, filled = grouped_memory(2, 3, 4, 1.0)
    with pytest.raises(ValueError, match="anchors must be A x V x D"):
        class_memory_contrastive_loss(torch.randn(2, 4), torch.tensor([0, 1]), memory, filled)
    with pytest.raises(ValueError, match="memory must be K x R x D"):
        class_memory_contrastive_loss(torch.randn(2, 1, 5), torch.tensor([0, 1]), memory, filled)
    with pytest.raises(ValueError, match="memory must be K x R x D"):
        class_memory_contrastive_loss(torch.randn(2, 1, 4), torch.tensor([0, 1]), memory, filled[:, :2])
