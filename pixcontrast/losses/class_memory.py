"""The pixel-contrast loss against a memory whose rows are grouped by class, without ``N x M`` label masks.

A memory bank stores its rows class by class (``K x R x D``), so an anchor's positives are one block of ``R``
rows and its negatives are all the other filled rows. :func:`class_memory_contrastive_loss` uses that layout:
the log-sum-exp over negatives is one pass over the ``N x M`` similarities with the anchor's own block masked
out, and the positive terms (log-sigmoid and its gradient) run on the ``N x R`` own blocks only. The result
equals :func:`supervised_contrastive_loss` with ``memory_labels`` set to each row's class (``-1`` where
unfilled); with ``K`` classes it does about ``K`` times less elementwise work on the positives and builds no
``N x M`` boolean masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["class_memory_contrastive_loss"]


class _ClassMemoryContrast(torch.autograd.Function):
    """Loss and analytic gradient w.r.t. the anchors; the memory is a constant (no gradient)."""

    @staticmethod
    def forward(ctx, features, labels, memory, filled, temperature, scale):  # noqa: D102
        num_anchors = features.shape[0]
        num_classes, rows, dim = memory.shape
        unfilled = torch.zeros(filled.shape, dtype=features.dtype, device=features.device)
        unfilled.masked_fill_(~filled, float("-inf"))
        logits = torch.addmm(unfilled.view(1, -1), features, memory.view(-1, dim).T, alpha=1.0 / temperature)
        blocks = logits.view(num_anchors, num_classes, rows)
        anchor = torch.arange(num_anchors, device=features.device)
        known = (labels >= 0) & (labels < num_classes)  # anchors of other classes have negatives only
        own = labels.clamp(0, num_classes - 1)
        positive_logits = blocks[anchor, own]  # N x R (a copy)
        positive = filled[own] & known[:, None]
        # the own class's rows are not negatives: mask them out, then log-sum-exp over the rest
        blocks[anchor, own] = torch.where(known[:, None], float("-inf"), positive_logits)
        row_max = logits.amax(dim=1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
        exp_negative = logits.sub_(row_max).exp_()  # 0 on masked and unfilled rows
        sum_negative = exp_negative.sum(dim=1, keepdim=True)
        log_negative = row_max + sum_negative.log()
        margin = (positive_logits - log_negative).masked_fill_(~positive, 0.0)
        num_positive = positive.sum(dim=1).to(features.dtype)
        has_positive = num_positive > 0
        weight = scale / num_positive.clamp(min=1) / has_positive.sum().clamp(min=1) * has_positive  # N
        loss = -((F.logsigmoid(margin) * positive).sum(dim=1) * weight).sum()
        if ctx.needs_input_grad[0]:
            pull = torch.sigmoid(-margin).mul_(positive)  # 1 - p_ij on positives
            push = (weight * pull.sum(dim=1))[:, None] / sum_negative.clamp(min=1)  # 0 or >= 1
            grad = exp_negative.mul_(push)
            pulled = pull.mul_(-weight[:, None])
            grad.view(num_anchors, num_classes, rows)[anchor, own] = torch.where(known[:, None], pulled, 0.0)
            ctx.save_for_backward(grad @ memory.view(-1, dim))  # the memory may change in place before backward
        ctx.temperature = temperature
        return loss

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        (grad_features,) = ctx.saved_tensors
        return grad_features * (grad_output / ctx.temperature), None, None, None, None, None


def class_memory_contrastive_loss(
    anchors: Tensor,
    anchor_labels: Tensor,
    memory: Tensor,
    filled: Tensor,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
) -> Tensor:
    """The paper's loss of anchors against a class-grouped memory (its memory variant).

    With ``z`` the ``A * V`` anchors and ``s_ir = z_i . m_r / tau``: positives of anchor ``i`` are the filled
    rows of its class, negatives the filled rows of every other class, and
    ``L_i = -(tau / tau_base) / |P(i)| * sum_{j in P(i)} [s_ij - log(exp(s_ij) + sum_{k in N(i)} exp(s_ik))]``,
    averaged over anchors with at least one positive (a zero connected to the graph when none has). Anchors of a
    class outside ``[0, K)`` have negatives only. Float32 at least, also under autocast; the gradient flows to
    the anchors, not to the memory, which may be updated in place before ``backward``.

    Args:
        anchors: ``A x V x D`` sampled embeddings.
        anchor_labels: ``A`` class ids.
        memory: ``K x R x D`` rows, ``R`` per class.
        filled: ``K x R`` bool, which rows hold an embedding.
        temperature: ``tau``.
        base_temperature: ``tau_base``.

    Returns:
        scalar loss.
    """
    if anchors.dim() != 3 or anchor_labels.shape != anchors.shape[:1]:
        raise ValueError(
            f"anchors must be A x V x D with anchor_labels of shape (A,), got {tuple(anchors.shape)} and "
            f"{tuple(anchor_labels.shape)}"
        )
    if memory.dim() != 3 or memory.shape[-1] != anchors.shape[-1] or filled.shape != memory.shape[:2]:
        raise ValueError(
            f"memory must be K x R x D with D = {anchors.shape[-1]} and filled K x R, got {tuple(memory.shape)} "
            f"and {tuple(filled.shape)}"
        )
    num_groups, n_view, dim = anchors.shape
    features = anchors.reshape(num_groups * n_view, dim)
    if features.shape[0] == 0 or memory.numel() == 0:
        return features.float().sum() * 0.0  # nothing to contrast: a zero that keeps the graph
    labels = anchor_labels.long().repeat_interleave(n_view)
    with torch.autocast(device_type=features.device.type, enabled=False):
        dtype = torch.promote_types(features.dtype, torch.float32)
        return _ClassMemoryContrast.apply(
            features.to(dtype), labels, memory.to(dtype), filled.bool(), temperature, temperature / base_temperature
        )
