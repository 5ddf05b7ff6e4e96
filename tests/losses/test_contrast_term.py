"""PixelContrast and PixelContrastSettings: warm-up and weighting, options, the bank, input checks, no Lightning."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from pixcontrast.losses import ContrastTerms, PixelContrast, PixelContrastSettings


def feature_batch(channels: int = 6, classes: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, classes, (2, 4, 4), generator=generator).repeat_interleave(4, 1).repeat_interleave(4, 2)
    features = torch.randn(2, channels, 8, 8, generator=generator, requires_grad=True)
    logits = torch.randn(2, classes, 4, 4, generator=generator)  # another resolution than the features
    return features, masks, logits


def test_warmup_gives_zero_gradients_then_the_weighted_loss():
    term = PixelContrast(6, 3, proj_dim=4, loss_weight=0.5, warmup_steps=2, max_views=4)
    features, masks, logits = feature_batch()
    idle = term(features, masks, logits, step=1)
    assert idle.item() == 0.0 and term.loss(features, masks, logits, step=1) is None
    idle.backward()
    assert all(p.grad is not None and not p.grad.any() for p in term.head.parameters())
    term.zero_grad()
    weighted = term(features, masks, logits, step=2, generator=torch.Generator().manual_seed(0))
    plain = term.loss(features, masks, logits, step=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(weighted, 0.5 * plain)
    assert plain > 0
    weighted.backward()
    assert all(p.grad.abs().sum() > 0 for p in term.head.parameters())
    assert features.grad.abs().sum() > 0


def test_memory_bank_lives_in_the_term():
    term = PixelContrast(6, 3, proj_dim=4, memory_size=8, pixels_per_image=2, max_views=1)
    features, masks, logits = feature_batch()
    term(features, masks, logits, step=0)
    assert term.memory_bank is not None and term.memory_bank.filled.sum() > 0
    assert any(key.startswith("criterion.memory_bank.") for key in term.state_dict())
    assert PixelContrast(6, 3).memory_bank is None


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((2, 5, 8, 8), (2, 16, 16), (2, 3, 4, 4)), "in_channels=6"),
        (((2, 6, 8, 8), (2, 16), (2, 3, 4, 4)), "masks must be"),
        (((2, 6, 8, 8), (3, 16, 16), (2, 3, 4, 4)), "masks must be"),
        (((2, 6, 8, 8), (2, 16, 16), (2, 4, 4)), "logits must be"),
    ],
)
def test_bad_inputs_name_the_cause(shapes, message):
    features, masks, logits = (torch.zeros(shape) for shape in shapes)
    with pytest.raises(ValueError, match=message):
        PixelContrast(6, 3)(features, masks.long(), logits, step=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"proj_dim": 0}, "proj_dim"),
        ({"loss_weight": -1.0}, "loss_weight"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"memory_size": -1}, "memory_size"),
        ({"segment_pixels": 0, "memory_size": 4}, "segment_pixels"),
        ({"max_views": 0}, "max_views"),
        ({"mining_fraction": 0.0, "memory_size": 4}, "mining_fraction"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_pixel_contrast_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PixelContrast(**{"in_channels": 6, "num_classes": 3, **kwargs})


def test_terms_give_the_weighted_term_and_the_loss_to_log():
    term = PixelContrast(6, 3, proj_dim=4, loss_weight=0.5, warmup_steps=2, max_views=4)
    features, masks, logits = feature_batch()
    warm_up = term.terms(features, masks, logits, step=1)
    assert isinstance(warm_up, ContrastTerms) and warm_up.loss is None and warm_up.weighted.item() == 0.0
    on = term.terms(features, masks, logits, step=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(on.weighted, 0.5 * on.loss)
    torch.testing.assert_close(
        term(features, masks, logits, step=2, generator=torch.Generator().manual_seed(0)), on.weighted
    )


def non_default_settings() -> PixelContrastSettings:
    """Every option away from its default (values a term can be built with)."""
    return PixelContrastSettings(
        proj_dim=5,
        loss_weight=0.3,
        warmup_steps=7,
        project_sampled_pixels=False,
        temperature=0.2,
        base_temperature=0.1,
        max_samples=50,
        max_views=3,
        ignore_index=250,
        gather_anchors=False,  # True is not combinable with a memory bank
        update_memory=False,
        memory_size=6,
        pixels_per_image=4,
        segment_pixels=9,
        memory_dtype="bfloat16",
        hard_mining=True,
        mining_fraction=0.5,
        num_hard_positives=11,
        num_hard_negatives=13,
        gather_distributed=False,
    )


def test_every_option_reaches_the_part_that_uses_it():
    settings = non_default_settings()
    defaults = PixelContrastSettings()
    changed = {
        field.name
        for field in dataclasses.fields(settings)
        if getattr(settings, field.name) != getattr(defaults, field.name)
    }
    assert changed == {field.name for field in dataclasses.fields(settings)} - {"gather_anchors"}
    term = PixelContrast(6, 3, settings)
    bank, criterion = term.memory_bank, term.criterion
    assert term.settings == settings and term.head.layers[1].out_channels == 5
    assert (criterion.temperature, criterion.base_temperature, criterion.max_samples, criterion.max_views) == (
        0.2,
        0.1,
        50,
        3,
    )
    assert (criterion.ignore_index, criterion.gather_anchors, criterion.update_memory) == (250, False, False)
    assert (bank.dim, bank.memory_size, bank.pixels_per_image, bank.segment_pixels, bank.ignore_index) == (
        5,
        6,
        4,
        9,
        250,
    )
    assert bank.queue.dtype == torch.bfloat16 and bank.hard_mining and not bank.gather_distributed
    assert (bank.mining_fraction, bank.num_hard_positives, bank.num_hard_negatives) == (0.5, 11, 13)
    assert PixelContrast(6, 3, gather_anchors=True).criterion.gather_anchors


def test_options_override_the_settings_and_unknown_names_are_a_type_error():
    base = PixelContrastSettings(proj_dim=16, memory_size=8)
    term = PixelContrast(6, 3, base, proj_dim=4, warmup_steps=3)
    assert term.settings == dataclasses.replace(base, proj_dim=4, warmup_steps=3)
    assert PixelContrast(6, 3).settings == PixelContrastSettings()
    with pytest.raises(TypeError, match=r"'prj_dim' \(did you mean 'proj_dim'\?\), 'zzz';"):
        PixelContrast(6, 3, prj_dim=4, zzz=1)
    with pytest.raises(TypeError, match="settings must be a PixelContrastSettings, got int"):
        PixelContrast(6, 3, 32)  # the 0.1 positional proj_dim


def test_settings_are_frozen_and_replace_returns_a_copy():
    settings = PixelContrastSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.proj_dim = 3  # type: ignore[misc]
    assert settings.replace(proj_dim=3).proj_dim == 3 and settings.proj_dim == 256


def test_the_core_imports_no_lightning():
    """The pure-torch names of the package root load without Lightning (lightning_utilities is torchmetrics')."""
    code = (
        "import sys, pixcontrast\n"
        "pixcontrast.PixelContrast, pixcontrast.PixelContrastSettings, pixcontrast.PixelContrastLoss\n"
        "pixcontrast.PixelMemoryBank, pixcontrast.KMeans, pixcontrast.HungarianMatchedSegmentation\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [("pixcontrast.modules", "PixelContrast", PixelContrast), ("pixcontrast.models", "ProjectionHead", None)],
)
def test_the_old_imports_still_work_with_a_deprecation_warning(old, name, new):
    import importlib

    from pixcontrast.losses import ProjectionHead

    module = importlib.import_module(old)
    with pytest.warns(
        DeprecationWarning,
        match=f"{old}.{name} moved to pixcontrast.losses: use 'from pixcontrast.losses import {name}'",
    ):
        value = getattr(module, name)
    assert value is (new or ProjectionHead)
    assert name not in module.__all__
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        module.NoSuchName  # noqa: B018
