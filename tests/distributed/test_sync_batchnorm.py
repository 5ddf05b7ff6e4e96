"""``--trainer.sync_batchnorm=true`` with every head.

Lightning converts the model with ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` when DDP sets up. PyTorch
runs the synchronised statistics on GPU/XPU only (``batch_norm_stats`` has no CPU kernel and SyncBatchNorm raises
"SyncBatchNorm expected input tensor to be on GPU" in distributed CPU training), so the cross-rank statistics
cannot run here. What we check on CPU is what depends on our code: every normalisation layer of every head is
converted (no BatchNorm left behind, no custom norm that would silently stay per-GPU), the state dict keeps its
keys (checkpoints load into either form), the converted model computes exactly what the original computes
outside a process group (train and eval), and PiCIE's frozen-statistics clustering still finds the layers.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixcontrast.losses import ProjectionHead
from pixcontrast.models import Segmenter
from pixcontrast.models.fpn import PiCIENetwork


def networks() -> dict[str, nn.Module]:
    return {
        **{
            head: Segmenter(4, encoder="resnet10t", head=head, aux_head=True, head_channels=16)
            for head in ("fcn", "aspp", "ocr")
        },
        "picie_fpn": PiCIENetwork("resnet10t", 16),
        "projection": ProjectionHead(3, 8),  # PixelContrast's head (here on the images themselves)
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn", "aspp", "ocr", "picie_fpn", "projection"])
def test_sync_batchnorm_conversion_covers_every_norm_and_keeps_outputs(name):
    torch.manual_seed(0)
    network = networks()[name]
    images = torch.randn(2, 3, 48, 48)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(_copy(network))
    norms = [type(m) for m in synced.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert norms and all(kind is nn.SyncBatchNorm for kind in norms), set(norms)
    assert not any(isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)) for m in synced.modules())
    assert synced.state_dict().keys() == network.state_dict().keys()
    for train in (True, False):
        network.train(train), synced.train(train)
        with torch.no_grad():
            torch.manual_seed(1)  # the same dropout masks
            expected = _outputs(network, images, train)
            torch.manual_seed(1)
            actual = _outputs(synced, images, train)
        for a, b in zip(actual, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in synced.modules() if isinstance(m, nn.SyncBatchNorm)
    )


def _copy(network: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(network)


def _outputs(network: nn.Module, images: torch.Tensor, train: bool) -> list[torch.Tensor]:
    if isinstance(network, Segmenter) and train:
        output = network.forward_train(images)
        return [output.logits, output.aux_logits, output.features]
    return [network(images)]
