"""ContrastiveSegmenter: its contrast term (warm-up, memory variant, settings), the hook, zero inference overhead."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pixcontrast.losses import PixelContrastSettings
from pixcontrast.models import Segmenter
from pixcontrast.modules import ContrastiveSegmenter


def scene_batch(batch_size: int = 2, size: int = 32, num_classes: int = 3) -> dict:
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, num_classes, (batch_size, size // 8, size // 8), generator=generator)
    masks = masks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    images = torch.randn(batch_size, 3, size, size, generator=generator) * 0.1 + masks[:, None].float()
    return {"image": images, "mask": masks, "name": [str(i) for i in range(batch_size)]}


def contrastive(head: str = "fcn", **options) -> ContrastiveSegmenter:
    """A tiny segmenter whose term has ``options`` (fields of PixelContrastSettings) over small defaults."""
    settings = PixelContrastSettings(proj_dim=8, max_views=2, warmup_steps=0).replace(**options)
    return ContrastiveSegmenter(num_classes=3, head=head, head_channels=16, contrast=settings)


def test_contrast_term_is_added_after_warmup():
    module = contrastive(warmup_steps=0, loss_weight=0.5)
    losses = module.compute_losses(scene_batch())
    assert {"ce", "contrast", "loss"} <= set(losses)
    assert losses["contrast"] > 0
    torch.testing.assert_close(losses["loss"], losses["ce"] + 0.5 * losses["contrast"])


def test_contrast_term_is_off_during_warmup():
    module = contrastive(warmup_steps=10)
    head = module.contrast.head
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
        module.contrast.head.eval()
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
        banks = [module.contrast.memory_bank for module in modules]
        torch.testing.assert_close(banks[0].queue, banks[1].queue)


def test_contrast_gradients_reach_the_projection_head():
    module = contrastive(loss_weight=1.0)
    module.compute_losses(scene_batch())["loss"].backward()
    projection_grads = [p.grad for p in module.contrast.head.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in projection_grads)


@pytest.mark.parametrize("memory_dtype", ["float32", "bfloat16"])
def test_memory_variant_fills_the_bank_and_keeps_it_in_the_state_dict(memory_dtype):
    module = contrastive(memory_size=16, pixels_per_image=2, max_views=1, memory_dtype=memory_dtype)
    module.train()
    contrast_losses = []
    for _ in range(2):  # the second step contrasts with the rows the first one enqueued
        losses = module.compute_losses(scene_batch())
        losses["loss"].backward()
        contrast_losses.append(losses["contrast"])
    assert contrast_losses[1] > 0
    bank = module.contrast.memory_bank
    assert bank.filled.sum() > 0 and bank.queue.dtype == getattr(torch, memory_dtype)
    state = module.state_dict()
    assert any(key.startswith("contrast.criterion.memory_bank.") for key in state)
    restored = contrastive(memory_size=16, pixels_per_image=2, max_views=1, memory_dtype=memory_dtype)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.contrast.memory_bank.queue, bank.queue)


@pytest.mark.parametrize("head", ["fcn", "ocr"])
def test_inference_costs_nothing_extra(head):
    module = contrastive(head=head).eval()
    plain = Segmenter(3, head=head, head_channels=16)
    inference = module.model.inference_network()
    assert sum(p.numel() for p in inference.parameters()) == sum(p.numel() for p in plain.parameters())
    calls = []
    module.contrast.head.register_forward_hook(lambda *args: calls.append(1))
    batch = scene_batch()
    with torch.no_grad():
        module(batch["image"])
        module.validation_step(batch, 0)
        module.predict_step(batch, 0)
    assert calls == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"proj_dim": 0}, "proj_dim"),
        ({"loss_weight": -1}, "loss_weight"),
        ({"segment_pixels": 0, "memory_size": 4}, "segment_pixels"),
        ({"ignore_index": 0}, "contrast.ignore_index=0 differs from ignore_index=255"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        contrastive(**kwargs)


def test_the_segmenter_uses_the_same_term():
    module = contrastive(loss_weight=0.3).eval()  # no dropout: both calls see the same features
    batch = scene_batch()
    torch.manual_seed(0)
    losses = module.compute_losses(batch)
    output = module.model.forward_train(batch["image"])
    torch.manual_seed(0)
    direct = module.contrast(output.features, batch["mask"], output.logits, module.global_step)
    torch.testing.assert_close(0.3 * losses["contrast"], direct)
    assert set(module.contrast.state_dict()) >= {"head.layers.1.weight"}


def test_contrast_inputs_hook_changes_what_the_term_sees():
    seen = []

    class OnlyClassZero(ContrastiveSegmenter):
        def contrast_inputs(self, batch, output):
            inputs = super().contrast_inputs(batch, output)
            seen.append(inputs)
            masks = inputs["masks"].clone()
            masks[masks != 0] = self.hparams.ignore_index  # one class only: no negatives, no positive pairs
            return {**inputs, "masks": masks}

    module = OnlyClassZero(num_classes=3, head_channels=16, contrast=PixelContrastSettings(proj_dim=8, max_views=2))
    losses = module.compute_losses(scene_batch())
    assert len(seen) == 1 and set(seen[0]) == {"features", "masks", "logits"}
    assert seen[0]["features"].shape[1] == module.model.encoder.head_channels
    assert losses["contrast"].item() == 0.0  # a single class: every anchor lacks negatives, the loss is 0
    assert contrastive().compute_losses(scene_batch())["contrast"] > 0


def test_the_term_takes_the_module_ignore_index_and_its_settings():
    settings = PixelContrastSettings(proj_dim=8, memory_size=4, hard_mining=True, num_hard_negatives=5)
    module = ContrastiveSegmenter(num_classes=3, head_channels=16, ignore_index=0, contrast=settings)
    assert module.contrast.settings == settings.replace(ignore_index=0)
    assert module.contrast.criterion.ignore_index == module.contrast.memory_bank.ignore_index == 0
    assert module.contrast.memory_bank.hard_mining and module.contrast.memory_bank.num_hard_negatives == 5
    assert ContrastiveSegmenter(num_classes=3, head_channels=16).contrast.settings.warmup_steps == 5000


def test_hyper_parameters_hold_the_settings_as_a_plain_dict():
    settings = PixelContrastSettings(proj_dim=8, max_views=2, memory_dtype="bfloat16")
    module = ContrastiveSegmenter(num_classes=3, head_channels=16, contrast=settings)
    assert module.hparams.contrast == dataclasses.asdict(settings)  # checkpoints load with weights_only=True
    assert not {"proj_dim", "max_views", "memory_dtype"} & set(module.hparams)
    rebuilt = ContrastiveSegmenter(**module.hparams)
    assert rebuilt.contrast.settings == settings


def test_a_subclass_that_forwards_kwargs_keeps_the_plain_dict():
    class Forwarding(ContrastiveSegmenter):
        def __init__(self, num_classes: int, *, extra: int = 1, **kwargs) -> None:
            super().__init__(num_classes, **kwargs)

    settings = PixelContrastSettings(proj_dim=8, max_views=2)
    module = Forwarding(3, extra=2, head_channels=16, contrast=settings)
    assert module.contrast.settings == settings and module.hparams.extra == 2
    assert module.hparams.contrast == dataclasses.asdict(settings)


def test_flat_options_of_0_1_are_read_into_the_settings_with_a_warning():
    with pytest.warns(
        FutureWarning, match=r"flat proj_dim, warmup_steps, max_views .*contrast=PixelContrastSettings\(proj_dim=8,"
    ):
        module = ContrastiveSegmenter(num_classes=3, head_channels=16, proj_dim=8, warmup_steps=3, max_views=2)
    assert module.contrast.settings == PixelContrastSettings(proj_dim=8, warmup_steps=3, max_views=2)
    assert module.hparams.contrast == dataclasses.asdict(module.contrast.settings)
    assert "proj_dim" not in module.hparams


def test_unknown_contrast_option_names_its_close_match():
    with pytest.raises(TypeError, match=r"'proj_dims' \(did you mean 'proj_dim'\?\)"):
        ContrastiveSegmenter(num_classes=3, head_channels=16, contrast={"proj_dims": 8})
