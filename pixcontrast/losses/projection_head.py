"""ProjectionHead: the pixel-contrast projection from a feature map to unit-norm embeddings (pure torch)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from pixcontrast.distributed import is_synchronised

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """Pixel-contrast projection: 1x1 conv (C_in -> C_in) -> BN -> ReLU -> 1x1 conv (C_in -> proj_dim), L2-normalised.

    ``forward(features B x C_in x h x w) -> embeddings B x proj_dim x h x w`` with unit norm per pixel.
    :meth:`project_pixels` applies the same function to selected pixels only. Plain ``nn.BatchNorm2d``, so
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` converts it.

    Args:
        in_channels: ``C_in``, channels of the features projected.
        proj_dim: size of the embeddings.
    """

    def __init__(self, in_channels: int, proj_dim: int = 256) -> None:
        super().__init__()
        if proj_dim < 1:
            raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
        hidden = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1, bias=False), nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True)
        )
        self.layers = nn.Sequential(hidden, nn.Conv2d(in_channels, proj_dim, 1))

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.layers(features), p=2, dim=1)

    def project_pixels(self, pixels: Tensor) -> Tensor:
        """Embeddings of pixel features ``N x C_in`` -> ``N x proj_dim`` (unit rows), pixel by pixel.

        The same layers as :meth:`forward`, run as matrix products on the given rows only. In training the
        BatchNorm statistics are those of these ``N`` rows (synchronised across ranks by SyncBatchNorm); a
        single row on one process, which BatchNorm cannot normalise by itself, uses the running statistics.
        ``N = 0`` gives ``0 x proj_dim``.
        """
        block, last = self.layers
        assert isinstance(block, nn.Sequential) and isinstance(last, nn.Conv2d)  # the layers built in __init__
        first, norm, activation = block
        assert isinstance(first, nn.Conv2d) and isinstance(norm, _BatchNorm)  # BatchNorm2d or its SyncBatchNorm
        hidden = F.linear(pixels, first.weight.flatten(1), first.bias)[:, :, None, None]  # N x C x 1 x 1
        if norm.training and pixels.shape[0] == 1 and not is_synchronised(norm):
            hidden = F.batch_norm(hidden, norm.running_mean, norm.running_var, norm.weight, norm.bias, eps=norm.eps)
        else:
            hidden = norm(hidden)
        embeddings = F.linear(activation(hidden.flatten(1)), last.weight.flatten(1), last.bias)
        return F.normalize(embeddings, p=2, dim=1)
