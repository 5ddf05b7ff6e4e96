"""The supervised contrastive loss of pixel contrast on given rows, with an analytic backward.

:func:`contrast_terms` is the one place where the loss and its gradient w.r.t. the similarities are computed
(log-sum-exp over the negatives, log-sigmoid pull on the positives, the push on the negatives); the generic
kernel here and the memory bank's class-layout kernel (:mod:`pixcontrast.losses.memory_bank`) both call it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["as_contrast_rows", "contrast_rows", "contrast_terms", "rows_product", "supervised_contrastive_loss"]


def as_contrast_rows(rows: Tensor, dtype: torch.dtype) -> Tensor:
    """Contrast rows as the kernels use them: a bfloat16 memory as stored (see :func:`rows_product`), others in
    ``dtype`` (the loss's float32 or float64)."""
    return rows if rows.dtype == torch.bfloat16 else rows.to(dtype)


def rows_product(left: Tensor, right: Tensor, bias: Tensor | None = None) -> Tensor:
    """``bias + left @ right`` in float32 at least, where ``right`` holds contrast rows in their storage precision.

    Float32 (or float64) rows give the exact product in the wider of the two dtypes (one ``addmm`` with a bias).
    With bfloat16 rows (a bfloat16 memory bank), ``left`` is rounded to bfloat16, the product runs on the bfloat16
    units (tensor cores, AMX) with float32 accumulation, and each result is rounded to bfloat16 (relative error at
    most ``2**-9``) before it is widened to float32, where ``bias`` is added in place. ``bias`` broadcasts to the
    result.
    """
    if right.dtype == torch.bfloat16:
        product = (left.to(right.dtype) @ right).float()  # widen, then add in float32 (a mixed add is 3-5x slower)
        return product if bias is None else product.add_(bias)
    dtype = torch.promote_types(left.dtype, right.dtype)
    left, right = left.to(dtype), right.to(dtype)
    return left @ right if bias is None else torch.addmm(bias.to(dtype), left, right)


def contrast_terms(
    negative_logits: Tensor, positive_logits: Tensor, positive: Tensor, scale: float, with_grad: bool = True
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Loss of the paper from similarities, and its gradient w.r.t. them (both inputs are overwritten).

    With ``s`` the similarities divided by the temperature,
    ``L_i = -scale / |P(i)| * sum_{j in P(i)} log(exp(s_ij) / (exp(s_ij) + sum_{k in N(i)} exp(s_ik)))``,
    averaged over the anchors with a positive; ``log(...)`` is ``logsigmoid(s_ij - logsumexp_k s_ik)``.

    Args:
        negative_logits: ``N x C`` similarities, ``-inf`` where the row is not a negative of the anchor.
        positive_logits: ``N x P`` similarities of the candidate positives (finite).
        positive: ``N x P`` bool, which candidates are positives.
        scale: ``tau / tau_base``.
        with_grad: also return the gradients.

    Returns:
        ``(loss, grad_negative, grad_positive)``: the scalar loss, ``dL/ds`` on the negatives (``N x C``, 0
        elsewhere) and ``-dL/ds`` on the positives (``N x P``, 0 elsewhere).
    """
    row_max = negative_logits.amax(dim=1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)  # rows without negatives
    exp_negative = negative_logits.sub_(row_max).exp_()  # exp(s_ik - max_i) on negatives, 0 elsewhere
    sum_negative = exp_negative.sum(dim=1, keepdim=True)  # 0 or >= 1
    log_negative = row_max + sum_negative.log()
    margin = positive_logits.sub_(log_negative)
    positive = positive.to(margin.dtype)  # one conversion, used twice
    num_positive = positive.sum(dim=1)
    has_positive = num_positive > 0
    weight = scale / num_positive.clamp(min=1) / has_positive.sum().clamp(min=1) * has_positive  # N
    loss = -(F.logsigmoid(margin).mul_(positive).sum(dim=1) * weight).sum()
    if not with_grad:
        return loss, None, None
    pull = margin.neg_().sigmoid_().mul_(positive)  # 1 - p_ij on positives
    push = (weight * pull.sum(dim=1))[:, None] / sum_negative.clamp(min=1)
    return loss, exp_negative.mul_(push), pull.mul_(weight[:, None])


class _RowContrast(torch.autograd.Function):
    """:func:`contrast_terms` on ``features @ contrast.T``; ``contrast=None`` is the symmetric (self) case."""

    @staticmethod
    def forward(ctx, features, contrast, positive, negative, temperature, scale):
        other = features if contrast is None else contrast
        logits = rows_product(features * (1.0 / temperature), other.T)  # N x C, the temperature on the small side
        loss, grad_negative, grad_positive = contrast_terms(
            torch.where(negative, logits, float("-inf")), logits, positive, scale
        )
        assert grad_negative is not None and grad_positive is not None  # with_grad=True returns them
        grad = grad_negative.sub_(grad_positive)  # dL/ds, disjoint supports
        ctx.temperature = temperature
        ctx.symmetric = contrast is None
        if ctx.symmetric:
            ctx.save_for_backward(features, grad)
        else:
            # The contrast rows may be a live memory queue that is overwritten in place before backward runs,
            # so keep the (small) products instead of the rows themselves.
            grad_features = rows_product(grad, other).to(features.dtype) if ctx.needs_input_grad[0] else None
            grad_other = grad.T @ features if ctx.needs_input_grad[1] else None
            ctx.save_for_backward(grad_features, grad_other)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        factor = grad_output / ctx.temperature
        if ctx.symmetric:
            features, grad = ctx.saved_tensors
            with torch.autocast(device_type=grad.device.type, enabled=False):
                grad = grad * factor
                return (grad + grad.T) @ features, None, None, None, None, None
        grad_features, grad_other = ctx.saved_tensors
        grads = tuple(None if grad is None else grad * factor for grad in (grad_features, grad_other))
        return (*grads, None, None, None, None)


def contrast_rows(
    features: Tensor,
    labels: Tensor,
    temperature: float,
    base_temperature: float,
    contrast: Tensor | None = None,
    contrast_labels: Tensor | None = None,
    self_index: Tensor | None = None,
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
        assert contrast_labels is not None  # the callers pass contrast_labels with contrast
        same = labels[:, None] == contrast_labels[None, :]
        if symmetric:  # class ids are never negative: every row is used, the diagonal is the anchor itself
            negative, positive = ~same, same.fill_diagonal_(False)
        else:
            used = contrast_labels[None, :] >= 0
            if mask is not None:
                used = used & mask
            positive = same & used
            if self_index is not None:
                positive.scatter_(1, self_index[:, None], False)
            negative = ~same & used
        dtype = torch.promote_types(features.dtype, torch.float32)  # float32, or float64 if given
        other = None if contrast is None else as_contrast_rows(contrast, dtype)
        return _RowContrast.apply(
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
        return contrast_rows(features, labels, temperature, base_temperature)
    assert memory_labels is not None  # checked above: given together with memory
    if memory.dim() != 2 or memory.shape[1] != dim:
        raise ValueError(f"memory must be M x D with D = {dim} (the anchors' dim), got {tuple(memory.shape)}")
    if memory_labels.shape != (memory.shape[0],):
        raise ValueError(f"memory_labels must have shape ({memory.shape[0]},), got {tuple(memory_labels.shape)}")
    if memory_mask is not None and memory_mask.shape != (features.shape[0], memory.shape[0]):
        raise ValueError(
            f"memory_mask must be (A * V) x M = {(features.shape[0], memory.shape[0])}, got {tuple(memory_mask.shape)}"
        )
    return contrast_rows(
        features, labels, temperature, base_temperature, memory, memory_labels.long(), mask=memory_mask
    )
