"""SegmentationModule: training, checkpoints, evaluation modes and bad batches."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tiny_runs import quiet_trainer
from torch.utils.data import DataLoader, Dataset

from pixcontrast.modules import SegmentationModule
from pixcontrast.modules.base import masked_cross_entropy


def tiny_batch(batch_size: int = 2, size: int = 32, num_classes: int = 3, seed: int = 0) -> dict:
    """Images whose left/right halves carry different classes, so the task is learnable."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, size, size, generator=generator) * 0.1
    masks = torch.zeros(batch_size, size, size, dtype=torch.int64)
    masks[:, :, size // 2 :] = 1
    masks[:, : size // 4] = 2
    images[:, 0] += masks.float()
    masks[:, 0, 0] = 255
    return {"image": images, "mask": masks, "name": [f"img{i}" for i in range(batch_size)]}


class RepeatedBatch(Dataset):
    def __init__(self, length: int = 4) -> None:
        self.batch = tiny_batch(batch_size=length)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {key: value[index] for key, value in self.batch.items()}


def small_module(**kwargs) -> SegmentationModule:
    defaults = dict(num_classes=3, encoder="resnet18", head="fcn", head_channels=16, optimizer="adamw", lr=1e-3)
    defaults.update(kwargs)
    return SegmentationModule(**defaults)


def test_forward_returns_logits_at_input_size():
    module = small_module().eval()
    with torch.no_grad():
        logits = module(torch.randn(1, 3, 40, 56))
    assert logits.shape == (1, 3, 40, 56)


def test_loss_decreases_on_a_tiny_problem():
    torch.manual_seed(0)
    module = small_module()
    batch = tiny_batch()
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = module.compute_losses(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_aux_head_adds_weighted_term():
    module = small_module(aux_head=True, aux_weight=0.4)
    losses = module.compute_losses(tiny_batch())
    assert set(losses) == {"ce", "aux_ce", "loss"}
    torch.testing.assert_close(losses["loss"], losses["ce"] + 0.4 * losses["aux_ce"])


def test_masked_cross_entropy_without_labelled_pixels_is_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((1, 4, 4), 255), ignore_index=255)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


def test_fit_checkpoint_round_trip_and_metrics(tmp_path):
    module = small_module(class_names=["a", "b", "c"])
    loader = DataLoader(RepeatedBatch(), batch_size=2)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(tmp_path, max_steps=3, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(module, loader, loader)
    assert {"val/miou", "val/pixel_accuracy", "val/iou_a", "val/loss"} <= set(trainer.callback_metrics)
    restored = SegmentationModule.load_from_checkpoint(tmp_path / "last.ckpt")
    images = tiny_batch()["image"]
    module.eval(), restored.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(images), module(images))
    assert restored.class_names == ["a", "b", "c"]


def test_sliding_window_mode_matches_whole_image_when_one_crop_covers_it():
    whole = small_module().eval()
    slide = small_module(eval_mode="slide", eval_crop_size=(32, 32), eval_stride=(16, 16)).eval()
    slide.load_state_dict(whole.state_dict())
    images = tiny_batch()["image"]
    with torch.no_grad():
        torch.testing.assert_close(slide.predict_logits(images), whole.predict_logits(images))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: {**b, "image": b["image"][:0], "mask": b["mask"][:0]}, "empty train batch"),
        (lambda b: {**b, "mask": torch.full_like(b["mask"], 7)}, "num_classes=3"),
        (lambda b: {"image": b["image"]}, "no 'mask' entry"),
        (lambda b: {**b, "mask": b["mask"][:, :16]}, "does not match image shape"),
    ],
)
def test_bad_batches_fail_with_a_clear_message(change, message):
    module = small_module()
    with pytest.raises((ValueError, KeyError), match=message):
        module.training_step(change(tiny_batch()), 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"eval_mode": "slide"}, "needs eval_crop_size"),
        ({"class_names": ["a"]}, "class_names has 1 names"),
    ],
)
def test_bad_arguments_fail_early(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_module(**kwargs)


def test_non_finite_loss_names_the_step_and_the_term():
    module = small_module()
    losses = {"ce": torch.tensor(1.0), "contrast": torch.tensor(float("nan")), "loss": torch.tensor(float("nan"))}
    with pytest.raises(FloatingPointError, match=r"global step 0 \(images \['a'\]\).*'contrast': nan"):
        module.check_finite(losses, ["a"])
    module.check_finite({"ce": torch.tensor(1.0), "loss": torch.tensor(1.0)}, ["a"])


def test_non_finite_check_can_be_switched_off():
    small_module(check_finite_every_n_steps=0).check_finite({"loss": torch.tensor(float("inf"))})
