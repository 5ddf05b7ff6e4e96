"""Encoder weights from local files and the local cache: wrapper prefixes, formats, clear errors."""

from __future__ import annotations

import re
import shutil

import pytest
import timm
import torch
import yaml

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
    with pytest.raises(
        ValueError, match=r"unknown pretrained tag 'foo' of encoder 'resnet18'; its tags: .*resnet18\.a1_in1k"
    ):
        build_encoder("resnet18.foo")


def test_model_without_pretrained_weights_is_rejected_before_any_download(monkeypatch):
    monkeypatch.setattr(weights, "_download_from_hub", pytest.fail)
    arch = next(name for name in timm.list_models() if not timm.list_pretrained(f"{name}.*"))
    with pytest.raises(ValueError, match=f"no pretrained weights for '{arch}'"):
        weights.pretrained_weights_file(arch)


def _lightning_checkpoint(module, path):
    """A checkpoint in Lightning's layout (what ``pixcontrast fit`` writes), without running a trainer."""
    torch.save(
        {
            "epoch": 3,
            "global_step": 48,
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "optimizer_states": [],
            "callbacks": {},
        },
        path,
    )
    return path


@pytest.mark.parametrize("module_class", ["SegmentationModule", "ContrastiveSegmenter", "PiCIE"])
def test_lightning_checkpoint_of_a_module_gives_its_encoder(tmp_path, module_class):
    from pixcontrast import modules

    torch.manual_seed(3)
    kwargs = {"num_clusters": 4, "feature_dim": 8, "label_source": "epoch"} if module_class == "PiCIE" else {}
    source = getattr(modules, module_class)(num_classes=3, encoder=TINY, **kwargs)
    if module_class == "PiCIE":  # the trained network, not its frozen labelling copy, must be picked
        torch.nn.init.zeros_(next(source.label_network.encoder.model.parameters()))
    path = _lightning_checkpoint(source, tmp_path / "last.ckpt")
    state = torch.load(path, weights_only=True)["state_dict"]
    prefix = "network.encoder.model." if module_class == "PiCIE" else "model.network.encoder.model."
    torch.manual_seed(4)
    picie = modules.PiCIE(num_classes=5, num_clusters=5, encoder=TINY, feature_dim=8, weights_path=str(path))
    loaded = picie.network.encoder.model.state_dict()
    assert loaded and all(torch.equal(value, state[prefix + key]) for key, value in loaded.items())


def test_checkpoint_of_another_encoder_is_a_clear_error(tmp_path):
    from pixcontrast.modules import PiCIE, SegmentationModule

    path = _lightning_checkpoint(SegmentationModule(num_classes=3, encoder="test_efficientnet"), tmp_path / "o.ckpt")
    with pytest.raises(RuntimeError, match=r"does not fit the encoder.*same encoder"):
        PiCIE(num_classes=3, encoder=TINY, weights_path=str(path))
    no_weights = tmp_path / "empty.ckpt"
    torch.save({"epoch": 0, "state_dict": {"centroids_view1": torch.zeros(4, 8)}}, no_weights)
    with pytest.raises(RuntimeError, match="does not fit the encoder"):
        PiCIE(num_classes=3, encoder=TINY, weights_path=str(no_weights))


def test_missing_run_checkpoint_names_the_command_that_writes_it(tmp_path, monkeypatch):
    from pixcontrast.bundled_configs import CONFIG_DIR
    from pixcontrast.models.run_files import find_writing_config

    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the bundled config is named
    expected = "pixcontrast fit --config synthetic_pretrain`"
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        build_encoder(TINY, weights_path="runs/synthetic_pretrain/checkpoints/last.ckpt")
    with pytest.raises(FileNotFoundError, match="default_root_dir=runs/elsewhere"):
        build_encoder(TINY, weights_path="runs/elsewhere/checkpoints/last.ckpt")
    with pytest.raises(FileNotFoundError, match=r"'weights.pth' does not exist or is not a file$"):
        build_encoder(TINY, weights_path="weights.pth")
    # the demo's PiCIE config starts from the checkpoint the pretraining config writes
    picie = yaml.safe_load((CONFIG_DIR / "synthetic_picie.yaml").read_text())
    weights = picie["model"]["init_args"]["weights_path"]
    assert find_writing_config(weights, cwd=tmp_path) == "synthetic_pretrain"
    # a config of one's own in configs/ is named by its path, before the bundled ones
    (tmp_path / "configs").mkdir()
    mine = (CONFIG_DIR / "synthetic_pretrain.yaml").read_text().replace("runs/synthetic_pretrain", "runs/mine")
    (tmp_path / "configs" / "mine.yaml").write_text(mine)
    shutil.copy(CONFIG_DIR / "synthetic_pretrain.yaml", tmp_path / "configs" / "pretrain_copy.yaml")
    with pytest.raises(FileNotFoundError, match=re.escape("pixcontrast fit --config configs/mine.yaml`")):
        build_encoder(TINY, weights_path="runs/mine/checkpoints/last.ckpt")
    assert find_writing_config("runs/synthetic_pretrain/checkpoints/last.ckpt") == "configs/pretrain_copy.yaml"
