"""Which pixels the losses see: label downsampling, random order within groups, anchor and pixel sampling.

One module for every "k random pixels per group" in pixcontrast: the hard anchor sampling of the pixel-contrast
loss (:func:`sample_anchor_pixels`), the memory bank's per-class picks (:func:`sample_per_class`) and the
visualiser's per-class points (:func:`sample_per_group`) all order pixels with :func:`random_group_sort`, and
:func:`gather_pixels` reads the chosen rows from a ``B x C x h x w`` map. Pure torch, vectorised: no Python
loop over images, classes or pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LABEL_LIMIT",
    "check_generator",
    "check_maps",
    "downsample_labels",
    "gather_pixels",
    "random_group_sort",
    "sample_anchor_pixels",
    "sample_anchors",
    "sample_per_class",
    "sample_per_group",
]

LABEL_LIMIT = 1 << 20
"""Class ids must lie in ``[0, LABEL_LIMIT)`` (any other value must be the ignore index)."""

_RANDOM_BITS = 40


def downsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of integer labels ``B x H x W`` to ``B x size[0] x size[1]``.

    Same result as ``F.interpolate(labels[:, None].float(), size, mode="nearest")`` (the reference code): the
    top-left pixel of each ``s x s`` block for an integer stride. Labels already at ``size`` pass unchanged.
    Returns int64.
    """
    height, width = labels.shape[-2:]
    if (height, width) == tuple(size):
        return labels.long()
    if height % size[0] == 0 and width % size[1] == 0:  # integer stride: the same pixels, without a float copy
        return labels[:, :: height // size[0], :: width // size[1]].long()
    with torch.autocast(device_type=labels.device.type, enabled=False):
        resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
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


def check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    """Raise a clear error when ``generator`` lives on another device type than the tensors it draws for."""
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but the maps are on {device}; "
            f"create it with torch.Generator(device={str(device)!r})"
        )


def _check_labels(labels: Tensor, predictions: Tensor) -> None:
    if predictions.dim() != 3:
        raise ValueError(f"predictions must be B x h x w class ids, got shape {tuple(predictions.shape)}")
    if labels.dim() != 3 or labels.shape[0] != predictions.shape[0]:
        raise ValueError(
            f"labels must be B x H x W (input or embedding resolution) with B = {predictions.shape[0]}, got shape "
            f"{tuple(labels.shape)}"
        )
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

    ``labels`` may be at the input resolution ``H x W`` or at the embedding resolution ``h x w`` of
    ``predictions``; they are nearest-downsampled to ``h x w`` first (:func:`downsample_labels`).
    Each (image, class) pair whose class (not ``ignore_index``) covers more than ``max_views`` pixels forms a
    group; groups are ordered by image, then class id. With ``A`` groups every group gives
    ``n_view = min(max_samples // A, max_views)`` views (at least 1: with more groups than ``max_samples``
    each group gives one view, where the reference code would produce NaN). Hard pixels of a group are
    predicted as another class, easy ones correctly; with ``nh``/``ne`` their counts: if both are at least
    ``n_view / 2`` keep ``n_view // 2`` hard and the rest easy, else if ``nh >= n_view / 2`` keep all ``ne``
    easy and ``n_view - ne`` hard, else all ``nh`` hard and ``n_view - nh`` easy. Picks are uniform without
    replacement (:func:`random_group_sort`): each group keeps the hard (easy) pixels with the smallest keys.
    The one host sync reads ``A``.

    Args:
        labels: ``B x H x W`` or ``B x h x w`` integer ground truth, class ids in ``[0, 2**20)`` or
            ``ignore_index``.
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
    _check_labels(labels, predictions)
    if max_samples < 1 or max_views < 1:
        raise ValueError(f"max_samples and max_views must be >= 1, got {max_samples} and {max_views}")
    check_generator(generator, labels.device)
    batch = labels.shape[0]
    num_pixels = predictions[0].numel() if batch else 0
    empty = labels.new_zeros(0, dtype=torch.long)
    if batch == 0 or num_pixels == 0:
        return empty, empty.view(0, 0), empty

    lab = downsample_labels(labels, (predictions.shape[-2], predictions.shape[-1])).reshape(batch, num_pixels)
    pred = predictions.reshape(batch, num_pixels).long()
    valid = lab != ignore_index
    codes = torch.where(valid, 2 * lab + (pred == lab).long(), 2 * LABEL_LIMIT)  # hard (0) before easy (1)
    sorted_codes, order = random_group_sort(codes, generator)

    # Runs of equal class along each sorted row: one run per (image, class), at most P runs per image.
    classes = sorted_codes >> 1
    new_run = torch.ones_like(valid)
    new_run[:, 1:] = classes[:, 1:] != classes[:, :-1]
    run_id = new_run.long().cumsum(1) - 1
    run_size = torch.zeros_like(lab).scatter_add_(1, run_id, torch.ones_like(lab))
    run_hard = torch.zeros_like(lab).scatter_add_(1, run_id, (sorted_codes & 1) ^ 1)
    run_start = run_size.cumsum(1) - run_size
    run_class = torch.full_like(lab, LABEL_LIMIT).scatter_(1, run_id, classes)
    eligible = ((run_size > max_views) & (run_class < LABEL_LIMIT)).flatten()
    bad_label = valid & ((lab < 0) | (lab >= LABEL_LIMIT))
    num_groups, num_bad = torch.stack([eligible.sum(), bad_label.sum()]).tolist()  # the one host sync
    if num_bad:
        raise ValueError(
            f"{num_bad} labels lie outside [0, {LABEL_LIMIT}) and differ from ignore_index={ignore_index}; "
            "map unlabelled pixels to ignore_index"
        )
    if num_groups == 0:
        return empty, empty.view(0, 0), empty
    n_view = max(1, min(max_samples // num_groups, max_views))

    # Compact the eligible runs (image-major, class order) without a second sync.
    target = torch.where(eligible, eligible.long().cumsum(0) - 1, num_groups)
    positions = torch.arange(eligible.numel(), device=lab.device)
    group = lab.new_zeros(num_groups + 1).scatter_(0, target, positions)[:num_groups]
    image, run = group // num_pixels, group % num_pixels
    start, size, n_hard = run_start[image, run], run_size[image, run], run_hard[image, run]
    n_easy = size - n_hard

    hard_ok = 2 * n_hard >= n_view
    easy_ok = 2 * n_easy >= n_view
    keep_hard = torch.where(hard_ok & easy_ok, n_view // 2, torch.where(hard_ok, n_view - n_easy, n_hard))
    view = torch.arange(n_view, device=lab.device)
    offset = torch.where(view < keep_hard[:, None], view, n_hard[:, None] + view - keep_hard[:, None])
    pixel = order[image[:, None], start[:, None] + offset]  # A x n_view
    return image, pixel, run_class[image, run]


class _GatherPixels(torch.autograd.Function):
    """``maps.flatten(2)[image, :, pixel]`` whose backward writes each distinct pixel's gradient once.

    Autograd's backward of the indexing is an accumulating indexed write, which runs on one thread on CPU; here
    the rows of repeated pixels are summed first (a sort of the ``S`` pixel keys and an ``index_add_`` over ``S x C``
    rows), so that every pixel of the dense gradient is written once, without accumulation (2x faster on CPU,
    no host sync on any device).
    """

    @staticmethod
    def forward(ctx, maps, image, pixel):
        ctx.save_for_backward(image, pixel)
        ctx.map_shape = maps.shape
        return maps.flatten(2)[image, :, pixel]

    @staticmethod
    def backward(ctx, grad):
        image, pixel = ctx.saved_tensors
        batch, channels, height, width = ctx.map_shape
        plane = height * width
        keys, order = (image * plane + pixel).flatten().sort()  # image and pixel broadcast to S
        first = torch.ones_like(keys, dtype=torch.bool)
        first[1:] = keys[1:] != keys[:-1]
        group = first.cumsum(0) - 1  # rank of each sorted key among the distinct ones
        rows = grad.reshape(-1, channels)
        summed = torch.zeros_like(rows).index_add_(0, torch.empty_like(group).scatter_(0, order, group), rows)
        grad_maps = grad.new_zeros(batch, channels, plane)
        grad_maps[keys // plane, :, keys % plane] = summed[group]  # repeats write equal rows
        return grad_maps.view(ctx.map_shape), None, None


def gather_pixels(maps: Tensor, image: Tensor, pixel: Tensor) -> Tensor:
    """Rows of ``maps`` (``B x C x h x w``) at the given pixels, without a permuted copy of the map.

    ``image`` and ``pixel`` (flat index ``y * w + x``) broadcast together to a shape ``S``; returns
    ``S x C``, connected to the graph of ``maps`` (a pixel named several times gets the sum of its rows'
    gradients).
    """
    return _GatherPixels.apply(maps, image, pixel)


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
        labels: ``B x H x W`` ground truth at the input or the embedding resolution (resized as the loss does).
        predictions: ``B x h x w`` predicted class ids at the embedding resolution.
        max_samples, max_views, ignore_index: as in :func:`sample_anchor_pixels`.
        generator: optional ``torch.Generator`` on the embeddings' device.

    Returns:
        ``(anchors, anchor_labels)``: ``A x n_view x D`` embeddings and ``A`` int64 class ids
        (``0 x 0 x D`` and ``0`` when no group qualifies; the anchors stay connected to the graph).
    """
    check_maps(embeddings, labels, predictions)
    image, pixel, anchor_labels = sample_anchor_pixels(
        labels, predictions, max_samples, max_views, ignore_index, generator
    )
    return gather_pixels(embeddings, image[:, None], pixel), anchor_labels


def check_maps(embeddings: Tensor, labels: Tensor, predictions: Tensor) -> None:
    """Raise a clear error unless ``embeddings`` is ``B x D x h x w``, ``predictions`` ``B x h x w`` and ``labels``
    ``B x H x W`` integer class ids."""
    if embeddings.dim() != 4:
        raise ValueError(f"embeddings must be B x D x h x w, got shape {tuple(embeddings.shape)}")
    b, _, h, w = embeddings.shape
    if predictions.shape != (b, h, w):
        raise ValueError(
            f"predictions must be B x h x w = {(b, h, w)} (argmax of the logits at the embedding resolution), "
            f"got shape {tuple(predictions.shape)}"
        )
    _check_labels(labels, predictions)


def sample_per_class(
    codes: Tensor, num_classes: int, count: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Up to ``count`` distinct random pixels of every class in every row, with fixed shapes and no host sync.

    Args:
        codes: ``B x P`` int64 class ids in ``[0, num_classes]``; ``num_classes`` marks pixels never drawn.
        num_classes: ``K``.
        count: picks per (row, class).
        generator: optional ``torch.Generator`` on the codes' device.

    Returns:
        ``(pixel, valid)``, both ``B x K x count``: flat pixel indices into ``P`` and whether each slot holds a
        pixel of the class (valid slots come first; invalid slots point at an arbitrary pixel).
    """
    batch, num_pixels = codes.shape
    sorted_codes, order = random_group_sort(codes, generator)
    classes = torch.arange(num_classes, device=codes.device).expand(batch, -1).contiguous()
    start = torch.searchsorted(sorted_codes, classes)
    size = torch.searchsorted(sorted_codes, classes, right=True) - start  # B x K pixels per class
    slot = torch.arange(count, device=codes.device)
    position = (start[..., None] + slot).clamp(max=max(num_pixels - 1, 0)).flatten(1)
    pixel = order.gather(1, position).view(batch, num_classes, count)
    return pixel, slot < size[..., None]


def sample_per_group(
    groups: Tensor, max_per_group: int, generator: torch.Generator | None = None, ignore_index: int = 255
) -> Tensor:
    """Indices of at most ``max_per_group`` uniformly drawn entries of each group id in the 1-D ``groups``.

    Entries equal to ``ignore_index`` or negative are never drawn. Returns int64 indices, grouped by id.
    Reads the largest group id back to the host (one sync).
    """
    drawn = (groups >= 0) & (groups != ignore_index)
    num_groups = int(groups[drawn].max()) + 1 if bool(drawn.any()) else 0
    codes = torch.where(drawn, groups.long(), num_groups)[None]
    pixel, valid = sample_per_class(codes, num_groups, max_per_group, generator)
    return pixel[valid]
