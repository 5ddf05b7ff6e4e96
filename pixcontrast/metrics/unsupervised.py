"""Evaluation of unsupervised segmentation: match clusters to classes, then score as a segmentation.

The confusion histogram has ground-truth classes as rows and clusters as columns. Clusters are mapped to
classes either one-to-one (Hungarian matching maximising matched pixels, the protocol of PiCIE and later
work) or many-to-one (each cluster to its majority class, for over-clustering).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

MATCHINGS = ("hungarian", "majority")


def _check_histogram(histogram: Tensor) -> None:
    if histogram.ndim != 2:
        raise ValueError(
            f"histogram must be num_classes x num_clusters (rows: classes, columns: clusters), "
            f"got shape {tuple(histogram.shape)}"
        )


def hungarian_match(histogram: Tensor) -> Tensor:
    """One-to-one matching of clusters to classes that maximises the number of matched pixels.

    Args:
        histogram: ``C x K`` pixel counts, rows ground-truth classes, columns clusters.

    Returns:
        ``K`` int64 tensor on the histogram's device: the class of each cluster, ``-1`` for a cluster left
        unmatched (possible when ``K > C``). When ``K < C``, ``C - K`` classes receive no cluster.
    """
    from scipy.optimize import linear_sum_assignment

    _check_histogram(histogram)
    counts = histogram.detach().to("cpu", torch.float64).numpy()
    rows, cols = linear_sum_assignment(counts, maximize=True)
    assignment = torch.full((histogram.shape[1],), -1, dtype=torch.int64)
    assignment[torch.as_tensor(cols, dtype=torch.int64)] = torch.as_tensor(rows, dtype=torch.int64)
    return assignment.to(histogram.device)


def majority_match(histogram: Tensor) -> Tensor:
    """Many-to-one matching: every cluster goes to the class it overlaps most.

    Args:
        histogram: ``C x K`` pixel counts, rows ground-truth classes, columns clusters.

    Returns:
        ``K`` int64 tensor, the class of each cluster (``-1`` for a cluster without labelled pixels).
    """
    _check_histogram(histogram)
    assignment = histogram.argmax(dim=0)
    return torch.where(histogram.sum(dim=0) > 0, assignment, torch.full_like(assignment, -1))


def scores_from_assignment(histogram: Tensor, assignment: Tensor) -> dict[str, Tensor]:
    """Pixel accuracy, mIoU and per-class IoU once clusters are mapped to classes.

    Pixels of unmatched clusters (``assignment == -1``) count as wrong for their class. Classes that are
    neither labelled nor predicted have an IoU of NaN and are left out of the mean.

    Args:
        histogram: ``C x K`` pixel counts, rows ground-truth classes, columns clusters.
        assignment: ``K`` int64, class of each cluster or ``-1``.

    Returns:
        dict with ``pixel_accuracy`` and ``miou`` (float scalars) and ``per_class_iou`` (``C`` floats).
    """
    _check_histogram(histogram)
    num_classes = histogram.shape[0]
    counts = histogram.double()
    # Column c of ``matched`` sums the clusters assigned to class c; unmatched clusters go to an extra column.
    target_column = torch.where(assignment >= 0, assignment, torch.full_like(assignment, num_classes))
    matched = counts.new_zeros(num_classes, num_classes + 1).index_add_(1, target_column, counts)[:, :num_classes]
    true_positive = matched.diagonal()
    labelled = counts.sum(dim=1)
    predicted = matched.sum(dim=0)
    union = labelled + predicted - true_positive
    per_class_iou = true_positive / union  # 0 / 0 -> NaN for classes absent from both
    total = counts.sum()
    return {
        "pixel_accuracy": (true_positive.sum() / total.clamp_min(1)).float(),
        "miou": per_class_iou.nanmean().float(),
        "per_class_iou": per_class_iou.float(),
    }


class HungarianMatchedSegmentation(Metric):
    """Segmentation scores of cluster predictions after matching clusters to classes.

    Accumulates a ``num_classes x num_clusters`` confusion histogram (summed across processes under DDP) and
    matches at :meth:`compute` time, over the whole evaluation set.

    Args:
        num_classes: number of ground-truth classes ``C``.
        num_clusters: number of predicted clusters ``K`` (default ``C``).
        ignore_index: label of unlabelled pixels, left out of every count.
        matching: ``"hungarian"`` (one-to-one, maximising matched pixels) or ``"majority"`` (many-to-one,
            for over-clustering with ``K > C``).
        validate_args: check that labels and cluster ids are in range (one host sync per update).

    ``update(preds, target)``: ``preds`` is either ``B x H x W`` integer cluster ids or ``B x K x h x w``
    float scores (upsampled bilinearly to the label size, then arg-maxed); ``target`` is ``B x H x W`` int.

    ``compute()`` returns a dict: ``pixel_accuracy``, ``miou`` (scalars), ``per_class_iou`` (``C``) and
    ``assignment`` (``K`` int64, class of each cluster, ``-1`` if unmatched).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    histogram: Tensor

    def __init__(
        self,
        num_classes: int,
        num_clusters: int | None = None,
        ignore_index: int = 255,
        matching: str = "hungarian",
        validate_args: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        num_clusters = num_classes if num_clusters is None else num_clusters
        if num_classes < 1 or num_clusters < 1:
            raise ValueError(
                f"num_classes and num_clusters must be >= 1, got num_classes={num_classes}, num_clusters={num_clusters}"
            )
        if matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index={ignore_index} is a valid class id (num_classes={num_classes}); "
                "use a value outside [0, num_classes), e.g. 255"
            )
        self.num_classes = num_classes
        self.num_clusters = num_clusters
        self.ignore_index = ignore_index
        self.matching = matching
        self.validate_args = validate_args
        self.add_state(
            "histogram", default=torch.zeros(num_classes, num_clusters, dtype=torch.int64), dist_reduce_fx="sum"
        )

    def _cluster_ids(self, preds: Tensor, target: Tensor) -> Tensor:
        if preds.is_floating_point():
            if preds.ndim != 4 or preds.shape[1] != self.num_clusters:
                raise ValueError(
                    f"float preds must be B x num_clusters x h x w with num_clusters={self.num_clusters}, "
                    f"got shape {tuple(preds.shape)}"
                )
            if preds.shape[-2:] != target.shape[-2:]:
                preds = F.interpolate(preds, size=target.shape[-2:], mode="bilinear", align_corners=False)
            return preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(
                f"integer preds must have the shape of target {tuple(target.shape)}, got {tuple(preds.shape)}"
            )
        return preds.long()

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: ``preds`` ``B x H x W`` cluster ids or ``B x K x h x w`` scores, ``target`` ``B x H x W``."""
        if target.ndim != 3:
            raise ValueError(f"target must be B x H x W, got shape {tuple(target.shape)}")
        clusters = self._cluster_ids(preds, target)
        target = target.long()
        valid = target != self.ignore_index
        if self.validate_args:
            bad_target = valid & ((target < 0) | (target >= self.num_classes))
            bad_cluster = valid & ((clusters < 0) | (clusters >= self.num_clusters))
            if bool(bad_target.any()):
                raise ValueError(
                    f"target holds labels outside [0, {self.num_classes}) other than ignore_index="
                    f"{self.ignore_index}; check num_classes and the dataset's label set"
                )
            if bool(bad_cluster.any()):
                raise ValueError(f"preds hold cluster ids outside [0, {self.num_clusters}); check num_clusters")
        bins = self.num_classes * self.num_clusters
        # Ignored pixels go to one extra bin that is dropped, so no boolean indexing (no host sync).
        index = torch.where(valid, target * self.num_clusters + clusters, torch.full_like(target, bins))
        counts = torch.zeros(bins + 1, dtype=torch.int64, device=index.device)
        counts.index_add_(0, index.flatten(), torch.ones_like(index.flatten()))
        self.histogram += counts[:bins].view(self.num_classes, self.num_clusters)

    def match(self) -> Tensor:
        """The current cluster -> class assignment (``K`` int64, ``-1`` = unmatched)."""
        if self.matching == "hungarian":
            return hungarian_match(self.histogram)
        return majority_match(self.histogram)

    def compute(self) -> dict[str, Tensor]:
        assignment = self.match()
        return {**scores_from_assignment(self.histogram, assignment), "assignment": assignment}
