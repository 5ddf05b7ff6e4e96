"""Supervised pixel contrast (Wang et al., ICCV 2021): hard anchor sampling and the contrastive loss.

Everything here is pure torch, device-agnostic and vectorised: no Python loop runs over images, classes or
pixels. Sampling reads exactly one number back from the device (the number of anchor groups, which fixes the
number of views per group); projecting only the sampled pixels with a memory bank reads one more (the number of
new memory pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pixcontrast.losses.class_memory import class_memory_contrastive_loss

if TYPE_CHECKING:
    from pixcontrast.losses.memory_bank import PixelMemoryBank

__all__ = [
    "PixelContrastLoss",
    "downsample_labels",
    "gather_pixels",
    "sample_anchor_pixels",
    "sample_anchors",
    "supervised_contrastive_loss",
]

LABEL_LIMIT = 1 << 20
"""Class ids must lie in ``[0, LABEL_LIMIT)`` (any other value must be the ignore index)."""

_RANDOM_BITS = 40


def downsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of integer labels ``B x H x W`` to ``B x size[0] x size[1]``.

    Same result as ``F.interpolate(labels[:, None].float(), size, mode="nearest")`` (the reference code): the
    top-left pixel of each ``s x s`` block for an integer stride. Returns int64.
    """
    height, width = labels.shape[-2:]
    if (height, width) == tuple(size):
        return labels.long()
    if height % size[0] == 0 and width % size[1] == 0:  # integer stride: the same pixels, without a float copy
        return labels[:, :: height // size[0], :: width // size[1]].long()
    with torch.autocast(device_type=labels.device.type, enabled=False):
        resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
    return resized[:, 0].long()


def random_group_sort(codes: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Sort each row of non-negative int64 ``codes`` (``B x P``, each ``< 2**22``) by code, random within a code.

    Every pixel gets a random 40-bit key ``torch.randint(0, 2**40, (B, P), generator=generator)``; a stable
    sort by ``(code, key)`` puts each code's pixels in uniformly random order (ties broken by pixel index).
    Returns ``(sorted_codes, order)``, both ``B x P``: ``order[b, i]`` is the pixel at sorted position ``i``.
    """
    keys = torch.randint(0, 1 << _RANDOM_BITS, codes.shape, generator=generator, device=codes.device)
    _, order = torch.sort((codes << _RANDOM_BITS) | keys, dim=1, stable=True)
    return codes.gather(1, order), order


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but the maps are on {device}; "
            f"create it with torch.Generator(device={str(device)!r})"
        )


def _check_maps(embeddings: Tensor, labels: Tensor, predictions: Tensor, label_size: str) -> None:
    if embeddings.dim() != 4:
        raise ValueError(f"embeddings must be B x D x h x w, got shape {tuple(embeddings.shape)}")
    b, _, h, w = embeddings.shape
    if predictions.shape != (b, h, w):
        raise ValueError(
            f"predictions must be B x h x w = {(b, h, w)} (argmax of the logits at the embedding resolution), "
            f"got shape {tuple(predictions.shape)}"
        )
    if labels.dim() != 3 or labels.shape[0] != b:
        raise ValueError(f"labels must be {label_size} with B = {b}, got shape {tuple(labels.shape)}")
    _check_integer(labels, predictions)


def _check_integer(labels: Tensor, predictions: Tensor) -> None:
    if labels.is_floating_point() or predictions.is_floating_point():
        raise ValueError("labels and predictions must be integer class ids (e.g. torch.long), not floats")


def sample_anchor_pixels(
    labels: Tensor,
    predictions: Tensor,
    max_samples: int = 1024,
    max_views: int = 100,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hard anchor sampling of the paper on label maps alone, vectorised over images and classes.

    Each (image, class) pair whose class (not ``ignore_index``) covers more than ``max_views`` pixels forms a
    group; groups are ordered by image, then class id. With ``A`` groups every group gives
    ``n_view = min(max_samples // A, max_views)`` views (at least 1: with more groups than ``max_samples``
    each group gives one view, where the reference code would produce NaN). Hard pixels of a group are
    predicted as another class, easy ones correctly; with ``nh``/``ne`` their counts: if both are at least
    ``n_view / 2`` keep ``n_view // 2`` hard and the rest easy, else if ``nh >= n_view / 2`` keep all ``ne``
    easy and ``n_view - ne`` hard, else all ``nh`` hard and ``n_view - nh`` easy. Picks are uniform without
    replacement: one random key per pixel (``torch.randint(0, 2**40, (B, h * w), generator=generator)``), and
    each group keeps the hard (easy) pixels with the smallest keys, ties broken by pixel index.
    The one host sync reads ``A``.

    Args:
        labels: ``B x h x w`` integer ground truth at the embedding resolution, class ids in
            ``[0, 2**20)`` or ``ignore_index``.
        predictions: ``B x h x w`` predicted class ids at the embedding resolution.
        max_samples: budget of sampled pixels over the batch.
        max_views: most views per group; also the pixel count a class must exceed to form a group.
        ignore_index: label of unlabelled pixels.
        generator: optional ``torch.Generator`` on the labels' device.

    Returns:
        ``(image, pixel, anchor_labels)``: the image of each group (``A``), the flat pixel index
        (``y * w + x``) of each view (``A x n_view``) and each group's class id (``A``), all int64
        (``0``, ``0 x 0`` and ``0`` when no group qualifies). :func:`gather_pixels` reads the views from a map.
    """
    if labels.dim() != 3 or labels.shape != predictions.shape:
        raise ValueError(
            f"labels must be B x h x w at the embedding resolution {tuple(predictions.shape)}, got "
            f"{tuple(labels.shape)}; PixelContrastLoss (or downsample_labels) resizes full-resolution labels"
        )
    _check_integer(labels, predictions)
    if max_samples < 1 or max_views < 1:
        raise ValueError(f"max_samples and max_views must be >= 1, got {max_samples} and {max_views}")
    _check_generator(generator, labels.device)
    batch = labels.shape[0]
    num_pixels = labels[0].numel() if batch else 0
    if batch == 0 or num_pixels == 0:
        empty = labels.new_zeros(0, dtype=torch.long)
        return empty, empty.view(0, 0), empty

    lab = labels.reshape(batch, num_pixels).long()
    pred = predictions.reshape(batch, num_pixels).long()
    valid = lab != ignore_index
    sentinel = 2 * LABEL_LIMIT
    codes = torch.where(valid, 2 * lab + (pred == lab).long(), sentinel)  # hard (0) before easy (1)
    sorted_codes, order = random_group_sort(codes, generator)

    # Runs of equal class along each sorted row: one run per (image, class), at most P runs per image.
    classes = sorted_codes >> 1
    new_run = torch.ones_like(valid)
    new_run[:, 1:] = classes[:, 1:] != classes[:, :-1]
    run_id = new_run.long().cumsum(1) - 1
    ones = torch.ones_like(lab)
    run_size = torch.zeros_like(lab).scatter_add_(1, run_id, ones)
    run_hard = torch.zeros_like(lab).scatter_add_(1, run_id, (sorted_codes & 1) ^ 1)
    run_start = run_size.cumsum(1) - run_size
    run_class = torch.full_like(lab, LABEL_LIMIT).scatter_(1, run_id, classes)
    eligible = (run_size > max_views) & (run_class < LABEL_LIMIT)
    flat_eligible = eligible.flatten()
    bad_label = valid & ((lab < 0) | (lab >= LABEL_LIMIT))
    num_groups, num_bad = torch.stack([flat_eligible.sum(), bad_label.sum()]).tolist()  # the one host sync
    if num_bad:
        raise ValueError(
            f"{num_bad} labels lie outside [0, {LABEL_LIMIT}) and differ from ignore_index={ignore_index}; "
            "map unlabelled pixels to ignore_index"
        )
    if num_groups == 0:
        empty = lab.new_zeros(0)
        return empty, empty.view(0, 0), empty
    n_view = max(1, min(max_samples // num_groups, max_views))

    # Compact the eligible runs (image-major, class order) without a second sync.
    rank = flat_eligible.long().cumsum(0) - 1
    target = torch.where(flat_eligible, rank, num_groups)
    positions = torch.arange(flat_eligible.numel(), device=lab.device)
    group = lab.new_zeros(num_groups + 1).scatter_(0, target, positions)[:num_groups]
    image = group // num_pixels
    run = group % num_pixels
    start, size, n_hard = run_start[image, run], run_size[image, run], run_hard[image, run]
    n_easy = size - n_hard

    hard_ok = 2 * n_hard >= n_view
    easy_ok = 2 * n_easy >= n_view
    keep_hard = torch.where(hard_ok & easy_ok, n_view // 2, torch.where(hard_ok, n_view - n_easy, n_hard))
    view = torch.arange(n_view, device=lab.device)
    offset = torch.where(view < keep_hard[:, None], view, n_hard[:, None] + view - keep_hard[:, None])
    pixel = order[image[:, None], start[:, None] + offset]  # A x n_view
    return image, pixel, run_class[image, run]


def gather_pixels(maps: Tensor, image: Tensor, pixel: Tensor) -> Tensor:
    """Rows of ``maps`` (``B x C x h x w``) at the given pixels, without a permuted copy of the map.

    ``image`` and ``pixel`` (flat index ``y * w + x``) broadcast together to a shape ``S``; returns
    ``S x C``, connected to the graph of ``maps``.
    """
    return maps.flatten(2)[image, :, pixel]


def sample_anchors(
    embeddings: Tensor,
    labels: Tensor,
    predictions: Tensor,
    max_samples: int = 1024,
    max_views: int = 100,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Hard anchor sampling of the paper (:func:`sample_anchor_pixels`), then the anchors' embeddings.

    Embeddings are gathered straight from the ``B x D x h x w`` map (no permuted copy); the one host sync
    reads the number of groups ``A``.

    Args:
        embeddings: ``B x D x h x w`` pixel embeddings (any float dtype; kept as is).
        labels, predictions, max_samples, max_views, ignore_index: as in :func:`sample_anchor_pixels`.
        generator: optional ``torch.Generator`` on the embeddings' device.

    Returns:
        ``(anchors, anchor_labels)``: ``A x n_view x D`` embeddings and ``A`` int64 class ids
        (``0 x 0 x D`` and ``0`` when no group qualifies; the anchors stay connected to the graph).
    """
    _check_maps(embeddings, labels, predictions, "B x h x w (labels at the embedding resolution)")
    image, pixel, anchor_labels = sample_anchor_pixels(
        labels, predictions, max_samples, max_views, ignore_index, generator
    )
    return gather_pixels(embeddings, image[:, None], pixel), anchor_labels


class _ContrastFunction(torch.autograd.Function):
    """Loss of the paper from similarities, with an analytic backward (few ``N x C`` temporaries, float32).

    ``contrast=None`` means the anchors contrast with themselves (symmetric: one matmul in backward).
    """

    @staticmethod
    def forward(ctx, features, contrast, positive, negative, temperature, scale):  # noqa: D102
        other = features if contrast is None else contrast
        logits = (features @ other.T).mul_(1.0 / temperature)  # N x C
        # log-sum-exp over each anchor's negatives, shifted by their max (rows without negatives: -inf)
        shifted = torch.where(negative, logits, float("-inf"))
        row_max = shifted.amax(dim=1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
        exp_negative = shifted.sub_(row_max).exp_()  # exp(s_ik - max_i) on negatives, 0 elsewhere
        sum_negative = exp_negative.sum(dim=1, keepdim=True)  # 0 or >= 1
        log_negative = row_max + sum_negative.log()
        # log(exp(s_ij) / (exp(s_ij) + sum_k exp(s_ik))) = logsigmoid(s_ij - log_negative_i)
        margin = logits.sub_(log_negative)
        log_prob = F.logsigmoid(margin).mul_(positive)
        num_positive = positive.sum(dim=1).to(logits.dtype)
        has_positive = num_positive > 0
        weight = scale / num_positive.clamp(min=1) / has_positive.sum().clamp(min=1) * has_positive  # N
        loss = -(log_prob.sum(dim=1) * weight).sum()
        # gradient w.r.t. the similarities s (before the division by the temperature)
        del log_prob
        pull = margin.neg_().sigmoid_().mul_(positive)  # 1 - p_ij on positives
        push = (weight * pull.sum(dim=1))[:, None] / sum_negative.clamp(min=1)
        grad = exp_negative.mul_(push).sub_(pull.mul_(weight[:, None]))
        ctx.temperature = temperature
        ctx.symmetric = contrast is None
        if ctx.symmetric:
            ctx.save_for_backward(features, grad)
        else:
            # The contrast rows may be a live memory queue that is overwritten in place before backward runs,
            # so keep the (small) products instead of the rows themselves.
            grad_features = grad @ other if ctx.needs_input_grad[0] else None
            grad_other = grad.T @ features if ctx.needs_input_grad[1] else None
            ctx.save_for_backward(grad_features, grad_other)
        return loss

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        factor = grad_output / ctx.temperature
        if ctx.symmetric:
            features, grad = ctx.saved_tensors
            with torch.autocast(device_type=grad.device.type, enabled=False):
                grad = grad * factor
                return (grad + grad.T) @ features, None, None, None, None, None
        grad_features, grad_other = ctx.saved_tensors
        return (
            None if grad_features is None else grad_features * factor,
            None if grad_other is None else grad_other * factor,
            None,
            None,
            None,
            None,
        )


def _contrast(
    features: Tensor,
    labels: Tensor,
    contrast: Tensor | None,
    contrast_labels: Tensor | None,
    self_index: Tensor | None,
    temperature: float,
    base_temperature: float,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean over anchors with a positive of the per-anchor loss (float32 at least). ``features`` N x D vs C x D.

    ``contrast=None`` contrasts the anchors with each other (excluding themselves). Contrast rows with a
    negative label are padding; ``self_index`` (N) names each anchor's own contrast row; ``mask`` (N x C bool)
    optionally restricts each anchor's contrast rows.
    """
    num_contrast = features.shape[0] if contrast is None else contrast.shape[0]
    if features.shape[0] == 0 or num_contrast == 0:
        return features.float().sum() * 0.0  # nothing to contrast: a zero that keeps the graph
    with torch.autocast(device_type=features.device.type, enabled=False):
        symmetric = contrast is None
        if symmetric:
            contrast_labels = labels
            self_index = torch.arange(features.shape[0], device=features.device)
        same = labels[:, None] == contrast_labels[None, :]
        used = contrast_labels[None, :] >= 0
        if mask is not None:
            used = used & mask
        positive = (same & used).scatter_(1, self_index[:, None], False) if self_index is not None else same & used
        negative = ~same & used
        dtype = torch.promote_types(features.dtype, torch.float32)  # float32, or float64 if given
        other = None if symmetric else contrast.to(dtype)
        return _ContrastFunction.apply(
            features.to(dtype), other, positive, negative, temperature, temperature / base_temperature
        )


def supervised_contrastive_loss(
    anchors: Tensor,
    anchor_labels: Tensor,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    memory: Tensor | None = None,
    memory_labels: Tensor | None = None,
    *,
    memory_mask: Tensor | None = None,
) -> Tensor:
    """Supervised contrastive loss of the paper on sampled embeddings.

    With ``z`` the ``A * V`` anchors (``anchors.reshape(-1, D)``, group-major) and ``s_ij = z_i . z_j / tau``:
    ``L_i = -(tau / tau_base) / |P(i)| * sum_{j in P(i)} [s_ij - log(exp(s_ij) + sum_{k in N(i)} exp(s_ik))]``
    where P(i) are the other anchors of i's class and N(i) the anchors of other classes. With ``memory``
    the contrast set is the memory rows instead: P(i) = rows of i's class, N(i) = rows of other classes
    (the anchors do not contrast among themselves). The result is the mean of ``L_i`` over anchors with at
    least one positive; with none it is a zero still connected to the graph. Computed in float32 with a
    log-sum-exp, also under autocast (float64 inputs stay float64). Embeddings need not be L2-normalised
    (any scale is numerically safe), but the paper's temperatures assume they are (our projection heads
    normalise).

    Args:
        anchors: ``A x V x D`` sampled embeddings.
        anchor_labels: ``A`` class ids, one per group.
        temperature: ``tau``.
        base_temperature: ``tau_base``, scales the loss by ``tau / tau_base``.
        memory: optional ``M x D`` contrast rows.
        memory_labels: ``M`` class ids of the memory rows; a negative label marks an unused row.
        memory_mask: optional ``(A * V) x M`` bool: which memory rows each anchor uses (hard mining).

    Returns:
        scalar float32 loss.
    """
    if anchors.dim() != 3:
        raise ValueError(f"anchors must be A x V x D, got shape {tuple(anchors.shape)}")
    num_groups, n_view, dim = anchors.shape
    if anchor_labels.shape != (num_groups,):
        raise ValueError(f"anchor_labels must have shape ({num_groups},), got {tuple(anchor_labels.shape)}")
    if (memory is None) != (memory_labels is None):
        raise ValueError("pass memory and memory_labels together (or neither)")
    features = anchors.reshape(num_groups * n_view, dim)
    labels = anchor_labels.long().repeat_interleave(n_view)
    if memory is None:
        if memory_mask is not None:
            raise ValueError("memory_mask needs memory and memory_labels")
        return _contrast(features, labels, None, None, None, temperature, base_temperature)
    if memory.dim() != 2 or memory.shape[1] != dim:
        raise ValueError(f"memory must be M x D with D = {dim} (the anchors' dim), got {tuple(memory.shape)}")
    if memory_labels.shape != (memory.shape[0],):
        raise ValueError(f"memory_labels must have shape ({memory.shape[0]},), got {tuple(memory_labels.shape)}")
    if memory_mask is not None and memory_mask.shape != (features.shape[0], memory.shape[0]):
        raise ValueError(
            f"memory_mask must be (A * V) x M = {(features.shape[0], memory.shape[0])}, got {tuple(memory_mask.shape)}"
        )
    return _contrast(
        features, labels, memory, memory_labels.long(), None, temperature, base_temperature, memory_mask
    )


def all_gather_padded(tensors: list[Tensor], fill: list[float]) -> tuple[list[Tensor], int]:
    """All-gather tensors whose first dimension may differ between ranks (no gradient).

    Each tensor is padded along dim 0 to the largest size over ranks with its ``fill`` value, gathered and
    concatenated in rank order. Returns the gathered tensors and the padded per-rank size. Costs one size
    exchange (a host sync) plus one all-gather per tensor.
    """
    world = dist.get_world_size()
    size = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    padded_size = int(torch.cat(sizes).max())
    gathered = []
    for tensor, value in zip(tensors, fill):
        as_int = tensor.dtype == torch.bool
        local = tensor.to(torch.uint8) if as_int else tensor.detach()
        pad = local.new_full((padded_size - local.shape[0], *local.shape[1:]), value)
        local = torch.cat([local, pad]).contiguous()
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
        out = torch.cat(parts)
        gathered.append(out.bool() if as_int else out)
    return gathered, padded_size


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class PixelContrastLoss(nn.Module):
    """Pixel-contrast loss: resize labels, sample hard anchors, contrast them (with a memory bank if given).

    Args:
        temperature: ``tau`` (0.1 in the paper's Cityscapes configs, 0.07 elsewhere).
        base_temperature: ``tau_base``.
        max_samples: anchor budget per batch (per rank).
        max_views: most views per (image, class) group (1 in the memory configs).
        ignore_index: label of unlabelled pixels.
        memory_bank: optional :class:`PixelMemoryBank`; the loss then contrasts the anchors with the bank's
            filled rows (the paper's memory variant), using the bank's hard mining if enabled.
        gather_anchors: under DDP, all-gather the sampled anchors so each rank contrasts its anchors with the
            whole global batch (gradients flow to the local anchors only; remote rows are constants). Costs a
            size exchange (one extra sync) and an all-gather of ``max_samples x D`` per rank per step, and a
            ``max_samples x (world * max_samples)`` similarity matrix. Off by default (the reference contrasts
            per GPU); ignored outside DDP. Not combinable with a memory bank, whose rows are already global.
        update_memory: with a memory bank, enqueue the batch after computing the loss (training mode only).
            Set False to call ``memory_bank.enqueue(embeddings, labels)`` yourself.

    Order with a memory bank: the loss uses the bank as it is before this batch, then (if ``update_memory``
    and the module is in training mode) the batch's detached embeddings are enqueued.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        max_samples: int = 1024,
        max_views: int = 100,
        ignore_index: int = 255,
        memory_bank: PixelMemoryBank | None = None,
        gather_anchors: bool = False,
        update_memory: bool = True,
    ) -> None:
        super().__init__()
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError(f"temperatures must be > 0, got {temperature} and {base_temperature}")
        if max_samples < 1 or max_views < 1:
            raise ValueError(f"max_samples and max_views must be >= 1, got {max_samples} and {max_views}")
        if memory_bank is not None and gather_anchors:
            raise ValueError("gather_anchors has no effect with a memory bank (its rows are gathered); drop one")
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.max_samples = max_samples
        self.max_views = max_views
        self.ignore_index = ignore_index
        self.memory_bank = memory_bank
        self.gather_anchors = gather_anchors
        self.update_memory = update_memory

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        predictions: Tensor,
        generator: torch.Generator | None = None,
        *,
        projection: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Loss of a batch.

        Args:
            embeddings: ``B x D x h x w`` pixel embeddings (L2-normalised in the paper); with ``projection``,
                the ``B x C x h x w`` features the projection reads instead.
            labels: ``B x H x W`` ground truth (nearest-downsampled here to ``h x w``).
            predictions: ``B x h x w`` argmax of the segmentation logits at the embedding resolution.
            generator: optional ``torch.Generator`` on the embeddings' device.
            projection: optional map from pixel features ``N x C`` to embeddings ``N x D``, such as
                :meth:`ProjectionHead.project_pixels`. Given, only the pixels the loss uses are projected,
                in one call: the anchors and, when the memory bank is updated, the bank's new pixels (see
                :meth:`PixelMemoryBank.sample_pixels`). Sampling needs only labels and predictions, so the
                result equals projecting the whole map first, except that the projection's BatchNorm
                statistics come from these pixels and segment rows average at most ``segment_pixels`` pixels.

        Returns:
            scalar float32 loss (a zero connected to the graph when no anchor has a positive).
        """
        _check_maps(embeddings, labels, predictions, "B x H x W")
        small = downsample_labels(labels, tuple(embeddings.shape[-2:]))
        image, pixel, anchor_labels = sample_anchor_pixels(
            small, predictions, self.max_samples, self.max_views, self.ignore_index, generator
        )
        enqueue = self.memory_bank is not None and self.update_memory and self.training
        if projection is None:
            anchors = gather_pixels(embeddings, image[:, None], pixel)  # A x V x D
        else:
            anchors, samples = self._project(
                projection, embeddings, image, pixel, small if enqueue else None, generator
            )
        if self.memory_bank is not None:
            loss = self._memory_loss(anchors, anchor_labels, generator)
            if enqueue and projection is not None:
                self.memory_bank.enqueue_samples(*samples)
            elif enqueue:
                self.memory_bank.enqueue(embeddings, labels, generator)
            return loss
        if self.gather_anchors and is_distributed():
            return self._global_loss(anchors, anchor_labels)
        return supervised_contrastive_loss(anchors, anchor_labels, self.temperature, self.base_temperature)

    def _memory_loss(self, anchors: Tensor, anchor_labels: Tensor, generator: torch.Generator | None) -> Tensor:
        """Contrast with the bank: its class-grouped rows, or the rows each anchor mines with hard mining."""
        bank = self.memory_bank
        if not bank.hard_mining:
            memory, filled = bank.class_rows()
            return class_memory_contrastive_loss(
                anchors, anchor_labels, memory, filled, self.temperature, self.base_temperature
            )
        features = anchors.reshape(-1, anchors.shape[-1])
        memory, memory_labels, mask = bank.contrast_set(
            features, anchor_labels.repeat_interleave(anchors.shape[1]), generator
        )
        return supervised_contrastive_loss(
            anchors, anchor_labels, self.temperature, self.base_temperature, memory, memory_labels, memory_mask=mask
        )

    def _project(
        self,
        projection: Callable[[Tensor], Tensor],
        features: Tensor,
        image: Tensor,
        pixel: Tensor,
        labels: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Embed the anchor pixels (``image`` A, ``pixel`` A x V) and, given ``labels``, the bank's new pixels.

        Returns the anchor embeddings ``A x V x D`` and, with ``labels``, the bank's ``(samples, valid)``.
        One gather and one projection call cover all rows, so they share the BatchNorm statistics.
        """
        num_groups, n_view = pixel.shape
        images, pixels = image.repeat_interleave(n_view), pixel.flatten()
        if labels is not None:
            memory_pixel, valid = self.memory_bank.sample_pixels(labels, generator)  # B x K x S
            where = valid.nonzero(as_tuple=True)  # host sync: the number of new memory pixels
            images, pixels = torch.cat([images, where[0]]), torch.cat([pixels, memory_pixel[where]])
        embedded = projection(gather_pixels(features, images, pixels))
        anchors = embedded[: num_groups * n_view].view(num_groups, n_view, embedded.shape[1])
        if labels is None:
            return anchors, None
        samples = embedded.new_zeros(*valid.shape, embedded.shape[1])
        samples[where] = embedded[num_groups * n_view :].detach()
        return anchors, (samples, valid)

    def _global_loss(self, anchors: Tensor, anchor_labels: Tensor) -> Tensor:
        features = anchors.reshape(-1, anchors.shape[-1])
        labels = anchor_labels.repeat_interleave(anchors.shape[1])
        (contrast, contrast_labels), padded = all_gather_padded([features, labels], [0.0, -1])
        offset = dist.get_rank() * padded
        local = torch.arange(features.shape[0], device=features.device) + offset
        contrast = contrast.to(features.dtype).index_copy(0, local, features)  # local rows keep their gradient
        return _contrast(
            features, labels, contrast, contrast_labels, local, self.temperature, self.base_temperature
        )
