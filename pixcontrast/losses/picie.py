"""PiCIE's two-view math: the view geometry ``G`` and its warp, the within/across-view cluster loss.

:class:`ViewGeometry` is the geometric transform that links the two views (a crop box and a flip): the data
builds it per item, :func:`warp_features` applies it to view 2's feature map (the ``G`` in the equivariance term
``G(f(x))``). :func:`picie_loss` is the cross-entropy of both views' features against both views' cluster heads
(:class:`~pixcontrast.losses.cluster_head.ClusterHead`) and given pseudo-labels.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pixcontrast.losses.cluster_head import ClusterHead


class ViewGeometry(NamedTuple):
    """The geometric transform ``G`` from view 2 to view 1: a square crop box, then an optional horizontal flip.

    ``boxes``: the crop ``x0, y0, x1, y1`` as fractions of the view side, float32; ``flips``: bool. One item holds
    ``4`` and a scalar; ``default_collate`` stacks items into a batch of ``B x 4`` and ``B``. :meth:`to` moves
    both tensors (Lightning's batch transfer calls it).
    """

    boxes: Tensor
    flips: Tensor

    def to(self, *args: Any, **kwargs: Any) -> ViewGeometry:
        """Both tensors through :meth:`torch.Tensor.to` (e.g. to a device)."""
        return ViewGeometry(self.boxes.to(*args, **kwargs), self.flips.to(*args, **kwargs))


def warp_features(features: Tensor, geometry: ViewGeometry, output_size: tuple[int, int] | None = None) -> Tensor:
    """Apply the geometric transforms to feature maps of the whole views, for the whole batch at once.

    Bilinear sampling of each crop box (``align_corners=False`` convention: box edges are pixel edges), with
    the horizontal flip folded into the sampling grid. For a flip alone the result equals ``features.flip(-1)``.

    Args:
        features: ``B x D x h x w`` feature maps of view 2.
        geometry: the batch's :class:`ViewGeometry` (``B x 4`` boxes, ``B`` flips).
        output_size: ``(h_out, w_out)``; default ``(h, w)``.

    Returns:
        ``B x D x h_out x w_out``, aligned pixel to pixel with view 1's feature map.
    """
    if not isinstance(geometry, ViewGeometry):
        raise TypeError(f"geometry must be a ViewGeometry (crop boxes and flips), got {type(geometry).__name__}")
    batch = features.shape[0]
    if geometry.boxes.shape != (batch, 4) or geometry.flips.shape != (batch,):
        raise ValueError(
            f"geometry must hold B x 4 boxes and B flips with B={batch}, got {tuple(geometry.boxes.shape)} and "
            f"{tuple(geometry.flips.shape)}"
        )
    size = tuple(output_size or features.shape[-2:])
    x0, y0, x1, y1 = geometry.boxes.to(device=features.device, dtype=torch.float32).unbind(dim=1)
    sign = 1.0 - 2.0 * geometry.flips.to(device=features.device, dtype=torch.float32)
    theta = torch.zeros(batch, 2, 3, device=features.device, dtype=torch.float32)
    theta[:, 0, 0] = (x1 - x0) * sign
    theta[:, 0, 2] = x0 + x1 - 1.0
    theta[:, 1, 1] = y1 - y0
    theta[:, 1, 2] = y0 + y1 - 1.0
    grid = F.affine_grid(theta, [batch, 1, *size], align_corners=False)
    return F.grid_sample(features, grid.to(features.dtype), mode="bilinear", align_corners=False)


class PiCIELossOutput(NamedTuple):
    """Result of :func:`picie_loss`: the total and its parts, scalars."""

    loss: Tensor
    within_view: Tensor
    across_view: Tensor


def picie_loss(
    features1: Tensor,
    features2: Tensor,
    head1: ClusterHead,
    head2: ClusterHead,
    labels: tuple[Tensor, Tensor],
    temperature: float = 1.0,
) -> PiCIELossOutput:
    """PiCIE's loss on two pixel-aligned views against the pseudo-labels ``labels = (y1, y2)``.

    The mean of four cross-entropies (:meth:`ClusterHead.cross_entropy`, each weighted by the head of its labels'
    view): within-view ``CE(z1.mu1, y1)``, ``CE(z2.mu2, y2)`` and across-view ``CE(z1.mu2, y2)``,
    ``CE(z2.mu1, y1)``.

    Args:
        features1: ``B x D x h x w`` features of view 1 (L2-normalised).
        features2: ``B x D x h x w`` features of view 2, already warped onto view 1's pixel grid.
        head1, head2: the cluster heads of view 1 and view 2 (centroids ``K x D`` each).
        labels: ``(y1, y2)``, both ``B x h x w`` int64 in ``[0, K)``: the pseudo-labels of each view, e.g.
            ``head1.assign(features1)`` (live labels) or the heads' assignment of a frozen network's features.
        temperature: divides the logits.

    Returns:
        :class:`PiCIELossOutput`; ``within_view`` and ``across_view`` are the means of their two terms and
        ``loss`` their mean.
    """
    if features1.shape != features2.shape:
        raise ValueError(
            f"the two views' features must be aligned pixel to pixel, got shapes {tuple(features1.shape)} "
            f"and {tuple(features2.shape)}"
        )
    if head1.centroids.shape != head2.centroids.shape:
        raise ValueError(
            f"the two views need centroid sets of the same shape, got {tuple(head1.centroids.shape)} and "
            f"{tuple(head2.centroids.shape)}"
        )
    labels1, labels2 = labels
    expected = (features1.shape[0], *features1.shape[-2:])
    if tuple(labels1.shape) != expected or tuple(labels2.shape) != expected:
        raise ValueError(
            f"labels must be B x h x w = {expected}, got {tuple(labels1.shape)} and {tuple(labels2.shape)}"
        )
    within = 0.5 * (
        head1.cross_entropy(features1, labels1, temperature) + head2.cross_entropy(features2, labels2, temperature)
    )
    across = 0.5 * (
        head2.cross_entropy(features1, labels2, temperature) + head1.cross_entropy(features2, labels1, temperature)
    )
    return PiCIELossOutput(0.5 * (within + across), within, across)
