"""ONNX / TorchScript export of the inference network, and loading it from a Lightning checkpoint."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tiny_runs import quiet_trainer
from torch.utils.data import DataLoader

from pixcontrast.export import export_model, load_inference_network_from_checkpoint
from pixcontrast.models import Segmenter

TINY = "test_resnet"  # timm's tiny ResNet


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(3, TINY, "ocr", aux_head=True, head_channels=8).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))


def test_torchscript_matches_forward_at_other_sizes(segmenter, images, tmp_path):
    network = segmenter.inference_network()
    path = export_model(network, tmp_path / "model.pt", format="torchscript", example_shape=(1, 3, 32, 32))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), segmenter(images))
    assert _count(loaded) == _count(segmenter.inference_network()) == _count(Segmenter(3, TINY, "ocr", head_channels=8))


def test_onnx_matches_forward_in_onnxruntime(segmenter, images, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the dev extra")
    path = export_model(segmenter.inference_network(), tmp_path / "model.onnx", example_shape=(1, 3, 32, 32))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), segmenter(images), atol=1e-4, rtol=1e-4)


def test_onnx_static_shape(segmenter, tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is in the dev extra")
    network = segmenter.inference_network()
    path = export_model(network, tmp_path / "static.onnx", example_shape=(1, 3, 32, 24), dynamic=False)
    dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 24]


def test_export_restores_training_mode(tmp_path):
    network = Segmenter(3, TINY, "fcn", head_channels=8).inference_network().train()
    export_model(network, tmp_path / "m.pt", format="torchscript", example_shape=(1, 3, 32, 32))
    assert network.training


def test_export_errors(segmenter, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model(segmenter.inference_network(), tmp_path / "m", format="tflite")
    with pytest.raises(ValueError, match="example_shape"):
        export_model(segmenter.inference_network(), tmp_path / "m.pt", format="torchscript", example_shape=(3, 32, 32))


class _ToyModule(L.LightningModule):
    """Keeps its Segmenter at ``model`` and the Segmenter arguments in its hyperparameters, like our modules."""

    def __init__(self, num_classes: int, encoder: str, head: str, aux_head: bool, head_channels: int, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.model = Segmenter(num_classes, encoder, head, aux_head=aux_head, head_channels=head_channels)

    def training_step(self, batch, batch_idx):
        output = self.model.forward_train(batch)
        return output.logits.mean() + output.aux_logits.mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def test_load_inference_network_from_lightning_checkpoint(tmp_path, images):
    torch.manual_seed(0)
    module = _ToyModule(3, TINY, "aspp", aux_head=True, head_channels=8)
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(module, DataLoader(torch.randn(2, 3, 32, 32), batch_size=2))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)  # as checkpoints of earlier versions: a projection head inside
    checkpoint["state_dict"]["model.projection_head.layers.0.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save(checkpoint, path)
    network = load_inference_network_from_checkpoint(path)
    assert not network.training
    assert not any("projection" in name or "aux_head" in name for name in network.state_dict())
    module.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(network(images), module.model(images))


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_inference_network_from_checkpoint(tmp_path / "missing.ckpt")
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="hyper_parameters"):
        load_inference_network_from_checkpoint(path)
    hyper_parameters = {"num_classes": 3, "encoder": TINY}
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "hyper_parameters": hyper_parameters}, path)
    with pytest.raises(RuntimeError, match="do not fit"):
        load_inference_network_from_checkpoint(path)
