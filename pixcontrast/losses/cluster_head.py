"""PiCIE's cluster heads: frozen k-means centroids as classifiers of pixel features, and their state.

Features are L2-normalised per pixel and the classifiers are an epoch's k-means centroids. With
``logits="cosine"`` (default) the centroids are normalised as well, and labelling (nearest centroid) and the
scores use the same cosine similarity. ``logits="dot"`` is the official code's choice: dot products with the raw
centroids, labels by Euclidean distance. Cross-entropy weights are inverse cluster frequencies (``"balanced"``),
the frequencies themselves (``"official"``) or none. The functions are the math; :class:`ClusterHead` holds one
feature set's centroids, cluster sizes and clustered flag and applies the math with them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOGITS = ("cosine", "dot")
CLASS_WEIGHTS = ("balanced", "official", "none")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a ``ValueError`` naming ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_pair(features: Tensor, centroids: Tensor) -> None:
    if features.ndim != 4:
        raise ValueError(f"features must be B x D x h x w, got shape {tuple(features.shape)}")
    if centroids.ndim != 2 or centroids.shape[1] != features.shape[1]:
        raise ValueError(
            f"centroids must be K x D with D={features.shape[1]} (the feature dimension), "
            f"got shape {tuple(centroids.shape)}"
        )


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
    """Pseudo-labels, ``B x h x w`` int64: the nearest centroid of every pixel (no gradient).

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


class ClusterHead(nn.Module):
    """The frozen classifier of one clustered feature set: its centroids, cluster sizes and clustered flag.

    Args:
        num_clusters: K.
        dim: D, the feature dimension.
        logits: ``"cosine"`` (centroids stored normalised, labels by cosine) or ``"dot"`` (raw centroids, labels
            by Euclidean distance); see :func:`cluster_scores`.
        class_weights: ``"balanced"``, ``"official"`` (weights from the stored cluster sizes) or ``"none"``; see
            :func:`cluster_weights`.

    Buffers (so checkpoints hold them): ``centroids`` ``K x D`` float32, ``sizes`` ``K`` float32 (points per
    cluster in the clustering pass's sample; zeros until set) and ``clustered`` (bool scalar, set by
    :meth:`set_centroids`). Reading ``clustered`` as a Python bool is a host sync on an accelerator.
    """

    centroids: Tensor
    sizes: Tensor
    clustered: Tensor

    def __init__(self, num_clusters: int, dim: int, logits: str = "cosine", class_weights: str = "balanced") -> None:
        super().__init__()
        if num_clusters < 1 or dim < 1:
            raise ValueError(f"num_clusters and dim must be >= 1, got {num_clusters} and {dim}")
        check_choice("logits", logits, LOGITS)
        check_choice("class_weights", class_weights, CLASS_WEIGHTS)
        self.logits = logits
        self.class_weights = class_weights
        self.register_buffer("centroids", torch.zeros(num_clusters, dim))
        self.register_buffer("sizes", torch.zeros(num_clusters))
        self.register_buffer("clustered", torch.zeros((), dtype=torch.bool))

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    @torch.no_grad()
    def set_centroids(self, centroids: Tensor) -> None:
        """Store fitted ``K x D`` centroids (normalised for cosine logits, raw for dot) and mark the head clustered."""
        centroids = _checked("centroids", centroids, self.centroids).to(self.centroids)
        self.centroids.copy_(F.normalize(centroids, dim=1) if self.logits == "cosine" else centroids)
        self.clustered.fill_(True)

    @torch.no_grad()
    def set_sizes(self, sizes: Tensor) -> None:
        """Store the ``K`` points per cluster of the clustering pass (the weights of ``class_weights="official"``)."""
        self.sizes.copy_(_checked("cluster sizes", sizes, self.sizes))

    def scores(self, features: Tensor) -> Tensor:
        """``B x D x h x w`` features -> ``B x K x h x w`` float32 scores (see :func:`cluster_scores`)."""
        return cluster_scores(features, self.centroids, self.logits)

    def assign(self, features: Tensor) -> Tensor:
        """``B x D x h x w`` features -> ``B x h x w`` int64 pseudo-labels, the nearest centroids (no gradient)."""
        return assign_clusters(features, self.centroids, self.logits)

    def weights(self, labels: Tensor) -> Tensor | None:
        """``K`` cross-entropy weights for the cluster ids ``labels`` (any shape), or None for ``"none"``."""
        sizes = self.sizes if self.class_weights == "official" else None
        return cluster_weights(labels, self.num_clusters, self.class_weights, sizes)

    def cross_entropy(self, features: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
        """Weighted cross-entropy of the scores of ``features`` (``B x D x h x w``) divided by ``temperature``
        against ``labels`` (``B x h x w`` in ``[0, K)``), with :meth:`weights` of ``labels``: a scalar."""
        return F.cross_entropy(self.scores(features) / temperature, labels, weight=self.weights(labels))

    def extra_repr(self) -> str:
        return (
            f"num_clusters={self.num_clusters}, dim={self.centroids.shape[1]}, logits={self.logits!r}, "
            f"class_weights={self.class_weights!r}"
        )


def _checked(name: str, value: Tensor, buffer: Tensor) -> Tensor:
    """``value`` if it has ``buffer``'s shape, else a ``ValueError`` naming both shapes."""
    if value.shape != buffer.shape:
        raise ValueError(f"{name} must be {tuple(buffer.shape)}, got {tuple(value.shape)}")
    return value
