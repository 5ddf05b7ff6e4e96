"""PiCIE's cluster losses: cross-entropy against frozen centroids, within and across two views.

Features are L2-normalised per pixel and the classifiers are the epoch's k-means centroids. With
``logits="cosine"`` (default) the centroids are normalised as well, labelling (nearest centroid) and the logits
use the same cosine similarity, and the logits are divided by ``temperature``. ``logits="dot"`` is the official
code's choice: dot products with the raw centroids, labels by Euclidean distance. Cross-entropy weights are
inverse cluster frequencies (``"balanced"``), the frequencies themselves (``"official"``) or none.
:func:`warp_features` applies the geometric transform that links the two views to a feature map (the ``G`` in
the equivariance term ``G(f(x))``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def warp_features(features: Tensor, geometry: Tensor, output_size: tuple[int, int] | None = None) -> Tensor:
    """Apply the geometric transforms to feature maps of the whole views, for the whole batch at once.

    Bilinear sampling of each crop box (``align_corners=False`` convention: box edges are pixel edges), with
    the horizontal flip folded into the sampling grid. For a flip alone the result equals ``features.flip(-1)``.

    Args:
        features: ``B x D x h x w`` feature maps of view 2.
        geometry: ``B x 5`` boxes ``x0, y0, x1, y1`` (fractions of the side) and flip flags, as in the batch.
        output_size: ``(h_out, w_out)``; default ``(h, w)``.

    Returns:
        ``B x D x h_out x w_out``, aligned pixel to pixel with view 1's feature map.
    """
    if geometry.ndim != 2 or geometry.shape[1] != 5 or geometry.shape[0] != features.shape[0]:
        raise ValueError(
            f"geometry must be B x 5 (x0, y0, x1, y1, flip) with B={features.shape[0]}, got {tuple(geometry.shape)}"
        )
    output_size = tuple(output_size or features.shape[-2:])
    geometry = geometry.to(device=features.device, dtype=torch.float32)
    x0, y0, x1, y1, flip = geometry.unbind(dim=1)
    sign = 1.0 - 2.0 * flip
    theta = torch.zeros(features.shape[0], 2, 3, device=features.device, dtype=torch.float32)
    theta[:, 0, 0] = (x1 - x0) * sign
    theta[:, 0, 2] = x0 + x1 - 1.0
    theta[:, 1, 1] = y1 - y0
    theta[:, 1, 2] = y0 + y1 - 1.0
    grid = F.affine_grid(theta, [features.shape[0], 1, *output_size], align_corners=False)
    return F.grid_sample(features, grid.to(features.dtype), mode="bilinear", align_corners=False)


def _check_pair(features: Tensor, centroids: Tensor) -> None:
    if features.ndim != 4:
        raise ValueError(f"features must be B x D x h x w, got shape {tuple(features.shape)}")
    if centroids.ndim != 2 or centroids.shape[1] != features.shape[1]:
        raise ValueError(
            f"centroids must be K x D with D={features.shape[1]} (the feature dimension), "
            f"got shape {tuple(centroids.shape)}"
        )


LOGITS = ("cosine", "dot")
CLASS_WEIGHTS = ("balanced", "official", "none")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a ``ValueError`` naming ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def cluster_scores(features: Tensor, centroids: Tensor, logits: str = "cosine") -> Tensor:
    """Similarity of every pixel to every centroid: cosine, or the plain dot product with the raw centroids.

    Args:
        features: ``B x D x h x w``, L2-normalised along ``D``.
        centroids: ``K x D`` (normalised here for ``"cosine"``, used as they are for ``"dot"``).
        logits: ``"cosine"`` or ``"dot"`` (the official code's frozen 1x1 convolution with the centroids).

    Returns:
        ``B x K x h x w`` float32 scores.
    """
    _check_pair(features, centroids)
    check_choice("logits", logits, LOGITS)
    directions = F.normalize(centroids.float(), dim=1) if logits == "cosine" else centroids.float()
    return torch.einsum("bdhw,kd->bkhw", features.float(), directions)


def assign_clusters(features: Tensor, centroids: Tensor, logits: str = "cosine") -> Tensor:
    """Pseudo-labels, ``B x h x w`` int64: the nearest centroid of every pixel.

    Nearest by cosine for ``logits="cosine"``; by Euclidean distance to the raw centroids for ``"dot"`` (the
    official labelling, ``argmax 2 z.mu - |mu|^2``).
    """
    with torch.no_grad():
        scores = cluster_scores(features, centroids, logits)
        if logits == "dot":
            scores = 2 * scores - centroids.float().square().sum(dim=1).view(1, -1, 1, 1)
        return scores.argmax(dim=1)


def cluster_weights(
    labels: Tensor, num_clusters: int, class_weights: str = "balanced", sizes: Tensor | None = None
) -> Tensor | None:
    """Cross-entropy weights of the clusters from their pixel counts, on the device (no host sync).

    ``"balanced"``: inverse counts (0 for absent clusters), so a mean-reduced cross-entropy is the mean over the
    present clusters of each cluster's mean pixel loss and small clusters count as much as large ones.
    ``"official"``: the clusters' frequencies (counts / total), the weights of the official code, which make
    large clusters count more. ``"none"``: None (every pixel counts the same).

    Args:
        labels: int64 cluster ids of any shape, values in ``[0, num_clusters)``: the counts are taken here.
        sizes: optional ``num_clusters`` cluster sizes to use instead (e.g. over the epoch, as the official code
            counts them); all zeros (no sizes known yet) falls back to the counts in ``labels``.

    Returns:
        ``num_clusters`` float32 weights, or None.
    """
    check_choice("class_weights", class_weights, CLASS_WEIGHTS)
    if class_weights == "none":
        return None
    flat = labels.reshape(-1)
    counts = torch.zeros(num_clusters, dtype=torch.float32, device=labels.device)
    counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
    if sizes is not None:
        if sizes.shape != (num_clusters,):
            raise ValueError(f"sizes must have shape ({num_clusters},), got {tuple(sizes.shape)}")
        counts = torch.where(sizes.sum() > 0, sizes.to(counts), counts)
    if class_weights == "official":
        return counts / counts.sum().clamp_min(1.0)
    return torch.where(counts > 0, counts.reciprocal(), torch.zeros_like(counts))


def cluster_cross_entropy(
    features: Tensor,
    centroids: Tensor,
    labels: Tensor,
    temperature: float = 1.0,
    class_weights: str = "balanced",
    logits: str = "cosine",
    sizes: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of the logits ``score(features, centroids) / temperature`` against ``labels``.

    Args:
        features: ``B x D x h x w`` L2-normalised.
        centroids: ``K x D``.
        labels: ``B x h x w`` int64 in ``[0, K)``.
        temperature: divides the scores.
        class_weights: ``"balanced"``, ``"official"`` or ``"none"`` (see :func:`cluster_weights`).
        logits: ``"cosine"`` or ``"dot"`` (see :func:`cluster_scores`).
        sizes: optional ``K`` cluster sizes for the weights instead of the counts in ``labels``.

    Returns:
        scalar loss.
    """
    scores = cluster_scores(features, centroids, logits) / temperature
    weight = cluster_weights(labels, centroids.shape[0], class_weights, sizes)
    return F.cross_entropy(scores, labels, weight=weight)


class PiCIELossOutput(NamedTuple):
    """Result of :func:`picie_loss`: the total and its parts (scalars), and the pseudo-labels (``B x h x w``)."""

    loss: Tensor
    within_view: Tensor
    across_view: Tensor
    labels1: Tensor
    labels2: Tensor


def picie_loss(
    features1: Tensor,
    features2: Tensor,
    centroids1: Tensor,
    centroids2: Tensor,
    temperature: float = 1.0,
    class_weights: str = "balanced",
    logits: str = "cosine",
    labels: tuple[Tensor, Tensor] | None = None,
    cluster_sizes: tuple[Tensor, Tensor] | None = None,
) -> PiCIELossOutput:
    """PiCIE's loss on two pixel-aligned views.

    Pseudo-labels ``y1``/``y2`` are given (``labels``, e.g. from a frozen copy of the network) or are the
    nearest centroids of each view's own (detached) features. The loss is the mean of four cross-entropies:
    within-view ``CE(z1.mu1, y1)``, ``CE(z2.mu2, y2)`` and across-view ``CE(z1.mu2, y2)``, ``CE(z2.mu1, y1)``.

    Args:
        features1: ``B x D x h x w`` features of view 1 (L2-normalised).
        features2: ``B x D x h x w`` features of view 2, already warped onto view 1's pixel grid.
        centroids1: ``K x D`` centroids of view 1; ``centroids2``: ``K x D`` centroids of view 2.
        temperature: divides the logits.
        class_weights: per cross-entropy, see :func:`cluster_weights`.
        logits: ``"cosine"`` or ``"dot"``, see :func:`cluster_scores`.
        labels: ``(y1, y2)``, both ``B x h x w`` int64; None labels from the features themselves.
        cluster_sizes: optional ``(n1, n2)``, ``K`` sizes of each view's clusters for the class weights of the
            cross-entropies against ``y1`` and ``y2`` (default: the counts in the batch's labels).

    Returns:
        :class:`PiCIELossOutput`; ``within_view`` and ``across_view`` are the means of their two terms and
        ``loss`` their mean.
    """
    if features1.shape != features2.shape:
        raise ValueError(
            f"the two views' features must be aligned pixel to pixel, got shapes {tuple(features1.shape)} "
            f"and {tuple(features2.shape)}"
        )
    if centroids1.shape != centroids2.shape:
        raise ValueError(
            f"the two views need centroid sets of the same shape, got {tuple(centroids1.shape)} and "
            f"{tuple(centroids2.shape)}"
        )
    if labels is None:
        labels = (
            assign_clusters(features1.detach(), centroids1, logits),
            assign_clusters(features2.detach(), centroids2, logits),
        )
    labels1, labels2 = labels
    expected = (features1.shape[0], *features1.shape[-2:])
    if tuple(labels1.shape) != expected or tuple(labels2.shape) != expected:
        raise ValueError(
            f"labels must be B x h x w = {expected}, got {tuple(labels1.shape)} and {tuple(labels2.shape)}"
        )

    sizes1, sizes2 = cluster_sizes if cluster_sizes is not None else (None, None)

    def cross_entropy(features: Tensor, centroids: Tensor, target: Tensor, sizes: Tensor | None) -> Tensor:
        return cluster_cross_entropy(features, centroids, target, temperature, class_weights, logits, sizes)

    within = 0.5 * (
        cross_entropy(features1, centroids1, labels1, sizes1) + cross_entropy(features2, centroids2, labels2, sizes2)
    )
    across = 0.5 * (
        cross_entropy(features1, centroids2, labels2, sizes2) + cross_entropy(features2, centroids1, labels1, sizes1)
    )
    return PiCIELossOutput(0.5 * (within + across), within, across, labels1, labels2)


class PiCIELoss(nn.Module):
    """Module form of :func:`picie_loss` with fixed ``temperature``, ``class_weights`` and ``logits``.

    ``forward(features1, features2, centroids1, centroids2, labels=None, cluster_sizes=None) -> PiCIELossOutput``.
    """

    def __init__(self, temperature: float = 1.0, class_weights: str = "balanced", logits: str = "cosine") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        check_choice("class_weights", class_weights, CLASS_WEIGHTS)
        check_choice("logits", logits, LOGITS)
        self.temperature = temperature
        self.class_weights = class_weights
        self.logits = logits

    def forward(
        self,
        features1: Tensor,
        features2: Tensor,
        centroids1: Tensor,
        centroids2: Tensor,
        labels: tuple[Tensor, Tensor] | None = None,
        cluster_sizes: tuple[Tensor, Tensor] | None = None,
    ) -> PiCIELossOutput:
        return picie_loss(
            features1,
            features2,
            centroids1,
            centroids2,
            self.temperature,
            self.class_weights,
            self.logits,
            labels,
            cluster_sizes,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, class_weights={self.class_weights!r}, logits={self.logits!r}"
