"""Encoder weights from local files and the local cache: wrapper prefixes, formats, clear errors."""

from __future__ import annotations

import pytest
import timm
import torch

from pixcontrast.models import weights
from pixcontrast.models.backbones import build_encoder

TINY = "test_resnet"  # timm's tiny ResNet: weights loading does not depend on the model size


def _save_tiny(path, wrap):
    torch.manual_seed(0)
    source = timm.create_model(TINY, pretrained=False)
    torch.save(wrap(source.state_dict()), path)
    return source


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"model": {f"backbone.{k}": v for k, v in sd.items()}, "epoch": 3},
    ],
    ids=["plain", "nested-state_dict-module", "nested-model-backbone"],
)
def test_weights_path_round_trip(tmp_path, wrap):
    path = tmp_path / "weights.pth"
    source = _save_tiny(path, wrap)
    encoder = build_encoder(TINY, weights_path=str(path))
    loaded = encoder.model.state_dict()
    for key, value in loaded.items():
        torch.testing.assert_close(value, source.state_dict()[key])


def test_weights_path_from_segmenter_state_dict(tmp_path):
    from pixcontrast.models import Segmenter

    torch.manual_seed(1)
    segmenter = Segmenter(3, TINY, head_channels=8)
    path = tmp_path / "segmenter.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in segmenter.state_dict().items()}}, path)
    encoder = build_encoder(TINY, weights_path=str(path))
    torch.testing.assert_close(encoder.model.layer1[0].conv1.weight, segmenter.encoder.model.layer1[0].conv1.weight)


def test_weights_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights_path"):
        build_encoder(TINY, weights_path=str(tmp_path / "missing.pth"))
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), other)
    with pytest.raises(RuntimeError, match="missing"):
        build_encoder(TINY, weights_path=str(other))
    state = timm.create_model(TINY).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(1)
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(RuntimeError, match="other shapes"):
        build_encoder(TINY, weights_path=str(wrong))
    pickled = tmp_path / "module.pth"
    torch.save(timm.create_model(TINY), pickled)
    with pytest.raises(RuntimeError, match="pickled Python objects"):
        build_encoder(TINY, weights_path=str(pickled))


def test_weights_path_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    source = timm.create_model(TINY)
    path = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), str(path))
    encoder = build_encoder(TINY, weights_path=str(path))
    torch.testing.assert_close(encoder.model.layer2[0].conv1.weight, source.layer2[0].conv1.weight)


def test_pretrained_loads_the_cached_file_without_a_download(tmp_path, monkeypatch):
    path = tmp_path / "cached.pth"
    source = _save_tiny(path, lambda sd: sd)
    monkeypatch.setattr(weights, "cached_pretrained_file", lambda name: str(path))
    monkeypatch.setattr(weights, "_download_from_hub", pytest.fail)  # the cache comes first
    encoder = build_encoder(TINY, pretrained=True)
    torch.testing.assert_close(encoder.model.layer4[0].conv2.weight, source.layer4[0].conv2.weight)
    with pytest.raises(ValueError, match="not both"):
        build_encoder(TINY, pretrained=True, weights_path=str(path))


def test_unknown_pretrained_tag_lists_the_tags():
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'foo' of encoder 'resnet18'; its tags: .*resnet18\.a1_in1k"):
        build_encoder("resnet18.foo")


def test_model_without_pretrained_weights_is_rejected_before_any_download(monkeypatch):
    monkeypatch.setattr(weights, "_download_from_hub", pytest.fail)
    arch = next(name for name in timm.list_models() if not timm.list_pretrained(f"{name}.*"))
    with pytest.raises(ValueError, match=f"no pretrained weights for '{arch}'"):
        weights.pretrained_weights_file(arch)
