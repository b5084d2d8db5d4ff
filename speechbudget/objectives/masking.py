"""Span masking as in HuBERT/wav2vec 2.0: choose start frames with probability
``mask_prob / mask_length`` and mask ``mask_length`` frames from each (spans may overlap), so
that about ``mask_prob`` of the frames would be covered without overlap."""

from __future__ import annotations

import torch


def span_mask(
    lengths: torch.Tensor,
    max_len: int,
    mask_prob: float,
    mask_length: int,
    generator: torch.Generator | None = None,
    min_masks: int = 1,
) -> torch.Tensor:
    """Boolean ``(B, max_len)``: ``True`` = masked; never masks padding; at least ``min_masks`` spans."""
    b = lengths.numel()
    mask = torch.zeros(b, max_len, dtype=torch.bool)
    for i in range(b):
        n = int(lengths[i])
        if n <= 0:
            continue
        span = min(mask_length, n)
        num_spans = max(min_masks, int(mask_prob * n / span + torch.rand((), generator=generator)))
        starts_range = n - span + 1
        num_spans = min(num_spans, starts_range)
        starts = torch.randperm(starts_range, generator=generator)[:num_spans]
        offsets = torch.arange(span)
        idx = (starts[:, None] + offsets[None, :]).reshape(-1)
        mask[i, idx] = True
    return mask
