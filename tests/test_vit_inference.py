"""A plain-ViT Segmenter through export (TorchScript, ONNX) and sliding-window / multi-scale evaluation."""

from __future__ import annotations

import pytest
import torch

from pixcontrast.export import export_model
from pixcontrast.inference import multiscale_inference, sliding_window_inference
from pixcontrast.losses import PixelContrastSettings
from pixcontrast.models import Segmenter
from pixcontrast.modules import ContrastiveSegmenter

VIT = "test_vit"  # timm's tiny ViT (patch 16, made for 160 x 160)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(3, VIT, "ocr", head_channels=8).eval()


@pytest.fixture
def images() -> torch.Tensor:  # neither side a multiple of the patch size, nor the example size of the export
    return torch.randn(2, 3, 45, 70, generator=torch.Generator().manual_seed(1))


def test_torchscript_export_keeps_any_input_size_and_drops_the_projection_head(images, tmp_path):
    torch.manual_seed(0)
    contrast = PixelContrastSettings(proj_dim=8)
    module = ContrastiveSegmenter(3, encoder=VIT, head="ocr", head_channels=8, contrast=contrast).eval()
    network = module.model.inference_network()
    path = export_model(network, tmp_path / "vit.pt", format="torchscript", example_shape=(1, 3, 64, 64))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), module(images))
    assert _count(loaded) == _count(network) == _count(module) - _count(module.contrast)


@pytest.mark.parametrize("dynamic", [True, False])
def test_onnx_export_in_onnxruntime(segmenter, images, tmp_path, dynamic):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the dev extra")
    example = (1, 3, 64, 64) if dynamic else tuple(images.shape)  # dynamic: traced at another size
    path = export_model(segmenter.inference_network(), tmp_path / "vit.onnx", example_shape=example, dynamic=dynamic)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), segmenter(images), atol=1e-4, rtol=1e-4)


def test_sliding_window_equals_averaging_each_window(segmenter, images):
    crop, stride = (32, 48), (16, 24)
    with torch.no_grad():
        result = sliding_window_inference(segmenter, images, crop, stride)
        total, count = torch.zeros(2, 3, 45, 70), torch.zeros(45, 70)
        for y in (0, 13):  # 45 - 32 = 13: the last row of windows is aligned to the border
            for x in (0, 22):  # 70 - 48 = 22
                total[..., y : y + 32, x : x + 48] += segmenter(images[..., y : y + 32, x : x + 48])
                count[y : y + 32, x : x + 48] += 1
    torch.testing.assert_close(result, total / count)


def test_multiscale_with_flip_runs_the_vit_at_every_scale(segmenter, images):
    calls: list[tuple[int, ...]] = []
    hook = segmenter.network.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape)))
    try:
        logits = multiscale_inference(segmenter, images, scales=(0.75, 1.5), flip=True)
    finally:
        hook.remove()
    assert logits.shape == (2, 3, 45, 70) and torch.isfinite(logits).all()
    assert calls == [(4, 3, 34, 52), (4, 3, 68, 105)]  # flipped copies in the same batch


def test_onnx_export_of_a_vit_below_opset_18_says_which_opset(segmenter, tmp_path):
    pytest.importorskip("onnx", reason="onnx is in the dev extra")
    with pytest.raises(RuntimeError, match=r"opset 17.*needs opset >= 18"):
        export_model(segmenter.inference_network(), tmp_path / "old.onnx", example_shape=(1, 3, 32, 32), opset=17)
