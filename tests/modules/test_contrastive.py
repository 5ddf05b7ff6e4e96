"""ContrastiveSegmenter: warm-up, memory variant, zero inference overhead."""

from __future__ import annotations

import pytest
import torch

from pixcontrast.models import Segmenter
from pixcontrast.modules import ContrastiveSegmenter


def scene_batch(batch_size: int = 2, size: int = 32, num_classes: int = 3) -> dict:
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, num_classes, (batch_size, size // 8, size // 8), generator=generator)
    masks = masks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    images = torch.randn(batch_size, 3, size, size, generator=generator) * 0.1 + masks[:, None].float()
    return {"image": images, "mask": masks, "name": [str(i) for i in range(batch_size)]}


def contrastive(**kwargs) -> ContrastiveSegmenter:
    defaults = dict(num_classes=3, head_channels=16, proj_dim=8, max_views=2, warmup_steps=0)
    defaults.update(kwargs)
    return ContrastiveSegmenter(**defaults)


def test_contrast_term_is_added_after_warmup():
    module = contrastive(warmup_steps=0, loss_weight=0.5)
    losses = module.compute_losses(scene_batch())
    assert {"ce", "contrast", "loss"} <= set(losses)
    assert losses["contrast"] > 0
    torch.testing.assert_close(losses["loss"], losses["ce"] + 0.5 * losses["contrast"])


def test_contrast_term_is_off_during_warmup():
    module = contrastive(warmup_steps=10)
    head = module.model.projection_head
    calls = []
    head.register_forward_hook(lambda *args: calls.append(1))
    losses = module.compute_losses(scene_batch())
    assert "contrast" not in losses and calls == []  # the idle head does not run
    losses["loss"].backward()
    assert all(p.grad is not None and not p.grad.any() for p in head.parameters())  # zero gradients, for DDP


@pytest.mark.parametrize("memory_size", [0, 32])
def test_sampled_projection_equals_projecting_the_map(memory_size):
    """With the head's BatchNorm on running statistics, both projection paths give the same loss and bank."""
    modules = []
    for sampled in (True, False):
        torch.manual_seed(0)
        module = contrastive(
            project_sampled_pixels=sampled, memory_size=memory_size, pixels_per_image=2, segment_pixels=16
        )
        module.model.projection_head.eval()
        modules.append(module)
    modules[1].load_state_dict(modules[0].state_dict())
    results = []
    for module in modules:
        torch.manual_seed(1)
        losses = [module.compute_losses(scene_batch())["contrast"] for _ in range(2)]
        results.append(torch.stack(losses))
    torch.testing.assert_close(results[0], results[1])
    assert results[0][-1] > 0  # (with a bank, the first step contrasts with an empty bank: 0)
    if memory_size:
        banks = [module.contrast_loss.memory_bank for module in modules]
        torch.testing.assert_close(banks[0].queue, banks[1].queue)


def test_contrast_gradients_reach_the_projection_head():
    module = contrastive(loss_weight=1.0)
    module.compute_losses(scene_batch())["loss"].backward()
    projection_grads = [p.grad for p in module.model.projection_head.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in projection_grads)


def test_memory_variant_fills_the_bank_and_keeps_it_in_the_state_dict():
    module = contrastive(memory_size=16, pixels_per_image=2, max_views=1)
    module.train()
    for _ in range(2):  # the second step contrasts with the rows the first one enqueued
        module.compute_losses(scene_batch())["loss"].backward()
    bank = module.contrast_loss.memory_bank
    assert bank.filled.sum() > 0
    state = module.state_dict()
    assert any(key.startswith("contrast_loss.memory_bank.") for key in state)
    restored = contrastive(memory_size=16, pixels_per_image=2, max_views=1)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.contrast_loss.memory_bank.queue, bank.queue)


@pytest.mark.parametrize("head", ["fcn", "ocr"])
def test_inference_costs_nothing_extra(head):
    module = contrastive(head=head).eval()
    plain = Segmenter(3, head=head, head_channels=16)
    inference = module.model.inference_network()
    assert sum(p.numel() for p in inference.parameters()) == sum(p.numel() for p in plain.parameters())
    calls = []
    module.model.projection_head.register_forward_hook(lambda *args: calls.append(1))
    batch = scene_batch()
    with torch.no_grad():
        module(batch["image"])
        module.validation_step(batch, 0)
        module.predict_step(batch, 0)
    assert calls == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"proj_dim": 0}, "proj_dim"), ({"loss_weight": -1}, "loss_weight"), ({"segment_pixels": 0}, "segment_pixels")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        contrastive(**kwargs)
