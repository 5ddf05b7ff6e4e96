"""class_weights: the class-weighted cross-entropy of SegmentationModule (main, auxiliary and validation CE)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_runs import quiet_trainer
from torch.utils.data import DataLoader, Dataset

from pixcontrast.modules import ContrastiveSegmenter, SegmentationModule
from pixcontrast.modules.base import masked_cross_entropy

WEIGHTS = [0.5, 2.0, 1.25]


def _module(**kwargs) -> SegmentationModule:
    options = dict(num_classes=3, encoder="resnet18", head="fcn", head_channels=16, optimizer="adamw", lr=1e-3)
    return SegmentationModule(**{**options, **kwargs})


def _batch(seed: int = 0, size: int = 32) -> dict:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 3, (2, size, size), generator=generator)
    masks[:, :5] = 255  # ignored rows
    return {"image": torch.randn(2, 3, size, size, generator=generator), "mask": masks, "name": ["a", "b"]}


def test_weighted_ce_equals_torch_weighted_mean_with_ignored_pixels() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 8, 8, generator=generator, dtype=torch.float32)
    target = torch.randint(0, 3, (2, 8, 8), generator=generator)
    target[0, :3] = 255
    weight = torch.tensor(WEIGHTS)
    expected = F.cross_entropy(logits, target, weight=weight, ignore_index=255)
    torch.testing.assert_close(masked_cross_entropy(logits, target, 255, weight), expected)
    torch.testing.assert_close(
        masked_cross_entropy(logits, target, 255), F.cross_entropy(logits, target, ignore_index=255)
    )
    coarse = logits[..., ::2, ::2]  # logits are upsampled to the labels first, as without weights
    upsampled = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        masked_cross_entropy(coarse, target, 255, weight),
        F.cross_entropy(upsampled, target, weight=weight, ignore_index=255),
    )


def test_weighted_ce_without_labelled_pixels_is_zero_not_nan() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((1, 4, 4), 255), 255, torch.tensor(WEIGHTS))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_main_and_auxiliary_ce_are_weighted() -> None:
    torch.manual_seed(0)
    module = _module(aux_head=True, class_weights=WEIGHTS)
    batch = _batch()
    output = module.model.forward_train(batch["image"])
    losses = module.supervised_losses(output, batch["mask"])
    weight = torch.tensor(WEIGHTS)
    for name, logits in (("ce", output.logits), ("aux_ce", output.aux_logits)):
        logits = F.interpolate(logits, size=batch["mask"].shape[-2:], mode="bilinear", align_corners=False)
        expected = F.cross_entropy(logits, batch["mask"], weight=weight, ignore_index=255)
        torch.testing.assert_close(losses[name], expected)
    torch.testing.assert_close(losses["loss"], losses["ce"] + 0.4 * losses["aux_ce"])
    assert not torch.allclose(_module(aux_head=True).supervised_losses(output, batch["mask"])["ce"], losses["ce"])


def test_weights_are_a_buffer_that_moves_with_the_module() -> None:
    module = _module(class_weights=WEIGHTS)
    assert "class_weights" in dict(module.named_buffers()) and "class_weights" in module.state_dict()
    assert all(name != "class_weights" for name, _ in module.named_parameters())
    assert module.to(torch.float64).class_weights.dtype == torch.float64
    assert _module().class_weights is None and "class_weights" not in _module().state_dict()


def test_modules_built_on_it_take_the_weights() -> None:
    module = ContrastiveSegmenter(num_classes=3, encoder="resnet18", head_channels=16, class_weights=WEIGHTS)
    assert torch.equal(module.class_weights, torch.tensor(WEIGHTS))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, 1.0], r"one weight per class \(num_classes=3\)"),
        ([[1.0, 1.0, 1.0]], r"one weight per class"),
        ([1.0, 0.0, 1.0], r"positive and finite, got 0.0 for class 1"),
        ([1.0, 1.0, -2.0], r"got -2.0 for class 2"),
        ([1.0, math.nan, 1.0], r"got nan for class 1"),
        ([math.inf, 1.0, 1.0], r"got inf for class 0"),
    ],
)
def test_bad_weights_fail_early(weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        _module(class_weights=weights)


class _Batches(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        batch = _batch(seed=index)
        return {key: value[0] for key, value in batch.items()}


def test_checkpoint_round_trip_keeps_the_weights(tmp_path) -> None:
    module = _module(class_weights=WEIGHTS, aux_head=True)
    loader = DataLoader(_Batches(), batch_size=2)
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(module, loader, loader)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    assert torch.equal(
        torch.load(tmp_path / "run.ckpt", weights_only=True)["state_dict"]["class_weights"], module.class_weights
    )
    restored = SegmentationModule.load_from_checkpoint(tmp_path / "run.ckpt")
    assert torch.equal(restored.class_weights, torch.tensor(WEIGHTS)) and restored.hparams.class_weights == WEIGHTS
    batch = _batch(seed=7)
    restored.eval(), module.eval()
    with torch.no_grad():
        expected = module.supervised_losses(module.model.forward_train(batch["image"]), batch["mask"])["ce"]
        actual = restored.supervised_losses(restored.model.forward_train(batch["image"]), batch["mask"])["ce"]
    torch.testing.assert_close(actual, expected)
