"""The memory variant of pixel contrast (Wang et al., 2021): per-class pixel and segment queues and their loss.

The bank owns its contrast: :meth:`PixelMemoryBank.contrast` scores anchors against the filled rows, with the
class-layout kernel (:func:`class_memory_contrastive_loss`) or, with hard mining, the generic kernel on the
rows each anchor mines. A memory stored class by class (``K x R x D``) gives an anchor's positives as one block
of ``R`` rows and its negatives as all other filled rows, so the class-layout kernel builds no ``N x M`` label
masks and runs the positive terms on the ``N x R`` own blocks only (about ``K`` times less elementwise work).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixcontrast.distributed import all_gather_padded
from pixcontrast.losses.contrast import as_contrast_rows, contrast_terms, rows_product, supervised_contrastive_loss
from pixcontrast.losses.sampling import downsample_labels, gather_pixels, sample_per_class

__all__ = ["PixelMemoryBank", "class_memory_contrastive_loss"]

MEMORY_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class PixelMemoryBank(nn.Module):
    """Ring-buffer memory of pixel and segment embeddings, one pair of queues per class.

    For every image and every class present in it, :meth:`enqueue` writes ``pixels_per_image`` random
    pixels of that class (drawn among the class's own pixels; all of them if fewer) to the class's pixel
    queue, and the L2-normalised mean embedding of the class in the image (over at most ``segment_pixels``
    random pixels of it) to its segment queue. Each queue
    holds ``memory_size`` rows; its pointer advances by the number of rows written and wraps around, and
    when a step writes more rows than fit only the newest survive. Rows are L2-normalised.

    The queues, pointers and fill counts are persistent buffers: they move with ``.to()`` and are saved in
    and restored from checkpoints (``state_dict``). Only filled rows take part in the loss.

    Distributed: with ``gather_distributed=True`` (default) the new rows of all ranks are all-gathered (in
    rank order) before enqueueing, so every rank writes the same rows and holds identical queues. This costs
    one size exchange (a host sync) and an all-gather of ``B x num_classes x (pixels_per_image + 1) x dim``
    floats per step. With ``False`` each rank keeps its own queues (no communication, but ranks drift apart
    and a checkpoint only saves rank 0's).

    Memory: ``2 x num_classes x memory_size x dim`` values (float32: about 194 MB for 19 classes, 5000 rows,
    256 dims; half that in bfloat16), and the loss compares each anchor with all of them.

    Args:
        num_classes: number of classes (labels outside ``[0, num_classes)`` are not enqueued).
        dim: embedding size.
        memory_size: rows per class and queue (5000 in the paper).
        pixels_per_image: pixel rows per class and image (10 in the paper).
        gather_distributed: all-gather new rows across DDP ranks before enqueueing.
        ignore_index: label of unlabelled pixels.
        hard_mining: semi-hard mining (the paper's variant): each anchor uses, among the filled rows,
            ``num_hard_negatives`` random rows from its ``mining_fraction`` nearest negatives and
            ``num_hard_positives`` random rows from its ``mining_fraction`` farthest positives. Off by default
            (every anchor uses every filled row).
        mining_fraction: fraction of nearest negatives / farthest positives to sample from.
        num_hard_positives: positives kept per anchor when mining.
        num_hard_negatives: negatives kept per anchor when mining.
        segment_pixels: the segment row is the mean over at most this many random pixels of the segment (all
            of them when the segment is smaller). Bounds the pixels a step embeds for the bank.
        memory_dtype: storage of the rows. ``"float32"`` (default) is exact. ``"bfloat16"`` halves the bank's
            memory and runs its two products with the anchors on the bfloat16 units
            (:func:`~pixcontrast.losses.contrast.rows_product`): rows, anchors and similarities are rounded to 8
            significant bits there, the rest of the loss stays float32.
    """

    queue: Tensor
    pointer: Tensor
    filled: Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int,
        memory_size: int = 5000,
        pixels_per_image: int = 10,
        gather_distributed: bool = True,
        ignore_index: int = 255,
        hard_mining: bool = False,
        mining_fraction: float = 0.1,
        num_hard_positives: int = 1024,
        num_hard_negatives: int = 2048,
        segment_pixels: int = 64,
        memory_dtype: Literal["float32", "bfloat16"] = "float32",
    ) -> None:
        super().__init__()
        for name, value in [
            ("num_classes", num_classes),
            ("dim", dim),
            ("memory_size", memory_size),
            ("pixels_per_image", pixels_per_image),
            ("num_hard_positives", num_hard_positives),
            ("num_hard_negatives", num_hard_negatives),
            ("segment_pixels", segment_pixels),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 < mining_fraction <= 1:
            raise ValueError(f"mining_fraction must be in (0, 1], got {mining_fraction}")
        if memory_dtype not in MEMORY_DTYPES:
            raise ValueError(f"memory_dtype must be one of {sorted(MEMORY_DTYPES)}, got {memory_dtype!r}")
        self.num_classes = num_classes
        self.dim = dim
        self.memory_size = memory_size
        self.pixels_per_image = pixels_per_image
        self.gather_distributed = gather_distributed
        self.ignore_index = ignore_index
        self.hard_mining = hard_mining
        self.mining_fraction = mining_fraction
        self.num_hard_positives = num_hard_positives
        self.num_hard_negatives = num_hard_negatives
        self.segment_pixels = segment_pixels
        # queue[k, 0] is class k's pixel queue, queue[k, 1] its segment queue.
        self.register_buffer("queue", torch.zeros(num_classes, 2, memory_size, dim, dtype=MEMORY_DTYPES[memory_dtype]))
        self.register_buffer("pointer", torch.zeros(num_classes, 2, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(num_classes, 2, dtype=torch.long))

    @property
    def pixel_queue(self) -> Tensor:
        """``num_classes x memory_size x dim`` view of the pixel queues."""
        return self.queue[:, 0]

    @property
    def segment_queue(self) -> Tensor:
        """``num_classes x memory_size x dim`` view of the segment queues."""
        return self.queue[:, 1]

    def reset(self) -> None:
        """Empty every queue."""
        self.queue.zero_()
        self.pointer.zero_()
        self.filled.zero_()

    def memory(self) -> tuple[Tensor, Tensor]:
        """All rows and their labels: ``(M x dim, M)`` with ``M = 2 * num_classes * memory_size``.

        The label of a row is its class, or -1 for a row not yet filled (ignored by the loss). No copy.
        """
        memory, filled = self.class_rows()
        classes = torch.arange(self.num_classes, device=filled.device)[:, None]
        return memory.view(-1, self.dim), torch.where(filled, classes, -1).flatten()

    def class_rows(self) -> tuple[Tensor, Tensor]:
        """The rows grouped by class: ``(num_classes x 2 * memory_size x dim, num_classes x 2 * memory_size)``.

        Each class's pixel queue then its segment queue, and whether each row is filled. No copy of the rows.
        """
        rows = torch.arange(self.memory_size, device=self.queue.device)
        filled = rows < self.filled[..., None]  # K x 2 x S
        return self.queue.view(self.num_classes, 2 * self.memory_size, self.dim), filled.flatten(1)

    def contrast_set(
        self, anchors: Tensor, anchor_labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Memory rows, their labels and (with hard mining) the ``N x M`` mask of rows each anchor uses.

        Args:
            anchors: ``N x dim`` anchor embeddings (only used for mining; not differentiated).
            anchor_labels: ``N`` class ids.
            generator: optional ``torch.Generator`` on the queue's device (mining only).
        """
        memory, labels = self.memory()
        if not self.hard_mining:
            return memory, labels, None
        with torch.no_grad(), torch.autocast(device_type=memory.device.type, enabled=False):
            similarity = rows_product(anchors.detach().float(), memory.T)
            same = anchor_labels[:, None] == labels[None, :]
            used = (labels >= 0)[None, :]
            negatives = self._semi_hard(similarity, ~same & used, self.num_hard_negatives, generator)
            positives = self._semi_hard(-similarity, same & used, self.num_hard_positives, generator)
        return memory, labels, negatives | positives

    def _semi_hard(self, score: Tensor, candidate: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
        """Per row, ``count`` random entries among the top ``mining_fraction`` scores of the candidates."""
        top_k = torch.ceil(self.mining_fraction * candidate.sum(1)).long()
        ordered = score.masked_fill(~candidate, float("-inf")).sort(dim=1, descending=True).values
        threshold = ordered.gather(1, (top_k - 1).clamp(min=0)[:, None])
        top = candidate & (score >= threshold)
        keys = torch.rand(score.shape, generator=generator, device=score.device).masked_fill(~top, 2.0)
        picked = keys.topk(min(count, score.shape[1]), dim=1, largest=False).indices
        return torch.zeros_like(top).scatter_(1, picked, True) & top

    def contrast(
        self,
        anchors: Tensor,
        anchor_labels: Tensor,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The paper's loss of anchors against the bank as it is now (call before enqueueing the batch).

        Without hard mining every anchor contrasts with every filled row (:func:`class_memory_contrastive_loss`);
        with it, with the rows it mines (:meth:`contrast_set`, then :func:`supervised_contrastive_loss`).

        Args:
            anchors: ``A x V x dim`` sampled embeddings.
            anchor_labels: ``A`` class ids.
            temperature, base_temperature: ``tau`` and ``tau_base``.
            generator: optional ``torch.Generator`` on the queue's device (mining only).

        Returns:
            scalar float32 loss; the gradient flows to the anchors only.
        """
        if not self.hard_mining:
            memory, filled = self.class_rows()
            return class_memory_contrastive_loss(anchors, anchor_labels, memory, filled, temperature, base_temperature)
        features = anchors.reshape(-1, anchors.shape[-1])
        memory, memory_labels, mask = self.contrast_set(
            features, anchor_labels.repeat_interleave(anchors.shape[1]), generator
        )
        return supervised_contrastive_loss(
            anchors, anchor_labels, temperature, base_temperature, memory, memory_labels, memory_mask=mask
        )

    def sample_pixels(self, labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The pixels a batch writes: per image and class up to ``max(pixels_per_image, segment_pixels)``.

        Distinct random pixels of the class (:func:`~pixcontrast.losses.sampling.sample_per_class`). Returns
        ``(pixel, valid)``, both ``B x num_classes x S``: flat pixel indices ``y * w + x`` into the ``h x w`` map
        of ``labels`` and whether each slot holds a pixel of the class (valid slots come first). Embed those
        pixels (gather them from an embedding map, or project their features) and pass the result to
        :meth:`enqueue_samples`.

        Args:
            labels: ``B x h x w`` ground truth at the embedding resolution.
            generator: optional ``torch.Generator`` on the labels' device.
        """
        if labels.dim() != 3:
            raise ValueError(f"labels must be B x h x w, got {tuple(labels.shape)}")
        lab = labels.long().flatten(1)
        valid = (lab != self.ignore_index) & (lab >= 0) & (lab < self.num_classes)
        codes = torch.where(valid, lab, self.num_classes)
        return sample_per_class(codes, self.num_classes, max(self.pixels_per_image, self.segment_pixels), generator)

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> None:
        """Write a batch of embedding maps: :meth:`sample_pixels`, gather those pixels, :meth:`enqueue_samples`.

        Args:
            embeddings: ``B x dim x h x w`` pixel embeddings.
            labels: ``B x H x W`` (or ``B x h x w``) ground truth, nearest-downsampled to ``h x w``.
            generator: optional ``torch.Generator`` on the embeddings' device for the pixel picks.
        """
        if embeddings.dim() != 4 or embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings must be B x {self.dim} x h x w, got shape {tuple(embeddings.shape)}")
        if labels.dim() != 3 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"labels must be B x H x W with B = {embeddings.shape[0]}, got {tuple(labels.shape)}")
        pixel, valid = self.sample_pixels(
            downsample_labels(labels, (embeddings.shape[-2], embeddings.shape[-1])), generator
        )
        image = torch.arange(embeddings.shape[0], device=pixel.device)[:, None, None]
        self.enqueue_samples(gather_pixels(embeddings, image, pixel), valid)

    @torch.no_grad()
    def enqueue_samples(self, samples: Tensor, valid: Tensor) -> None:
        """Write embedded pixel samples from :meth:`sample_pixels` into the queues (detached; the one write route).

        ``samples`` is ``B x num_classes x S x dim``, ``valid`` ``B x num_classes x S``. The first
        ``pixels_per_image`` valid samples of each (image, class) go to the pixel queue, and the normalised
        mean of all its valid samples (at most ``segment_pixels`` pixels of the segment) to the segment queue.
        Under DDP with ``gather_distributed`` the rows of all ranks are all-gathered first.
        """
        if samples.dim() != 4 or samples.shape[1] != self.num_classes or samples.shape[-1] != self.dim:
            raise ValueError(
                f"samples must be B x {self.num_classes} x S x {self.dim}, got shape {tuple(samples.shape)}"
            )
        if valid.shape != samples.shape[:3]:
            raise ValueError(f"valid must be B x {self.num_classes} x S = {tuple(samples.shape[:3])}")
        with torch.autocast(device_type=samples.device.type, enabled=False):
            samples = samples.detach().to(torch.promote_types(self.queue.dtype, torch.float32))
            segments = (samples * valid[..., None]).sum(2)  # B x K x D sums
            n = self.pixels_per_image
            self._store(samples[:, :, :n], valid[:, :, :n], segments, valid[..., 0])

    def _store(self, pixels: Tensor, pixel_valid: Tensor, segments: Tensor, segment_valid: Tensor) -> None:
        """Normalise and ring-write new rows: pixels ``B x K x n x D`` and segment sums ``B x K x D``."""
        pixels, segments = F.normalize(pixels, dim=-1), F.normalize(segments, dim=-1)
        if self.gather_distributed:
            (pixels, pixel_valid, segments, segment_valid), _ = all_gather_padded(
                [pixels, pixel_valid, segments, segment_valid], [0.0, 0, 0.0, 0]
            )
        k = self.num_classes  # rows per class in (rank, image, pick) order
        pixels, pixel_valid = pixels.transpose(0, 1).reshape(k, -1, self.dim), pixel_valid.transpose(0, 1)
        self._write(0, pixels, pixel_valid.reshape(k, -1))
        self._write(1, segments.transpose(0, 1), segment_valid.transpose(0, 1))

    def _write(self, which: int, rows: Tensor, valid: Tensor) -> None:
        """Ring-write the valid rows of ``rows`` (``K x R x D``, in order) into queue ``which`` of each class.

        Fixed shapes, no host sync: per class the newest ``min(n, memory_size)`` valid rows go to the slots
        after the pointer; the other written slots keep their value (all target slots are distinct).
        """
        size = self.memory_size
        if rows.shape[1] == 0:
            return
        queue = self.queue[:, which]  # K x S x D view
        pointer, filled = self.pointer[:, which], self.filled[:, which]
        written = valid.long().sum(1)  # K
        kept = written.clamp(max=size)
        step = torch.arange(min(rows.shape[1], size), device=rows.device)
        rank = (written - kept)[:, None] + step  # rank among the class's valid rows, K x T
        ok = step < kept[:, None]
        slot = (pointer[:, None] + rank) % size  # K x T
        source = torch.searchsorted(valid.long().cumsum(1), rank + 1).clamp(max=rows.shape[1] - 1)
        new = rows.gather(1, source[..., None].expand(-1, -1, self.dim))
        # row-wise indexed write (scatter_ over the queue's last dim is 20-1000x slower, worst in bfloat16)
        classes = torch.arange(self.num_classes, device=rows.device)[:, None].expand_as(slot)
        queue[classes, slot] = torch.where(ok[..., None], new.to(queue.dtype), queue[classes, slot])
        pointer.copy_((pointer + written) % size)
        filled.copy_((filled + written).clamp(max=size))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, memory_size={self.memory_size}, "
            f"pixels_per_image={self.pixels_per_image}, gather_distributed={self.gather_distributed}, "
            f"hard_mining={self.hard_mining}, segment_pixels={self.segment_pixels}, "
            f"memory_dtype={str(self.queue.dtype).removeprefix('torch.')}"
        )


class _ClassMemoryContrast(torch.autograd.Function):
    """Loss and analytic gradient w.r.t. the anchors; the memory is a constant (no gradient)."""

    @staticmethod
    def forward(ctx, features, labels, memory, filled, temperature, scale):
        num_anchors = features.shape[0]
        num_classes, rows, dim = memory.shape
        unfilled = torch.zeros(filled.shape, dtype=features.dtype, device=features.device)
        unfilled.masked_fill_(~filled, float("-inf"))
        logits = rows_product(features * (1.0 / temperature), memory.view(-1, dim).T, unfilled.view(1, -1))
        blocks = logits.view(num_anchors, num_classes, rows)
        anchor = torch.arange(num_anchors, device=features.device)
        known = (labels >= 0) & (labels < num_classes)  # anchors of other classes have negatives only
        own = labels.clamp(0, num_classes - 1)
        positive_logits = blocks[anchor, own]  # N x R (a copy)
        positive = filled[own] & known[:, None]
        # the own class's rows are not negatives: mask them out, then log-sum-exp over the rest
        blocks[anchor, own] = torch.where(known[:, None], float("-inf"), positive_logits)
        positive_logits.masked_fill_(~positive, 0.0)  # unfilled rows are -inf: keep the positive terms finite
        loss, grad, pulled = contrast_terms(logits, positive_logits, positive, scale, ctx.needs_input_grad[0])
        if ctx.needs_input_grad[0]:
            assert grad is not None and pulled is not None  # with_grad=True returns them
            own_blocks = torch.where(known[:, None], pulled.neg_(), 0.0)
            grad.view(num_anchors, num_classes, rows)[anchor, own] = own_blocks  # negatives and positives disjoint
            # the memory may change in place before backward: keep the small product
            ctx.save_for_backward(rows_product(grad, memory.view(-1, dim)).to(features.dtype))
        ctx.temperature = temperature
        return loss

    @staticmethod
    def backward(ctx, grad_output):
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
            features.to(dtype),
            labels,
            as_contrast_rows(memory, dtype),
            filled.bool(),
            temperature,
            temperature / base_temperature,
        )
