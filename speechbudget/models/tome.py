"""Token merging (ToMe, Bolya et al. 2023; FastAST, Behera et al. 2024) for Transformer encoders.

In each block, after attention and before the MLP, the tokens are split alternately into sets A
(even positions) and B (odd positions); each A token finds its most similar B token (cosine of the
attention keys averaged over heads) and the ``r`` best pairs are merged by a size-weighted average.
Sizes are tracked so that proportional attention can add ``log(size)`` to the attention logits (a
merged token then counts as the tokens it stands for).

What we do differently from the published code, on purpose:

* Protected tokens (CLS, distillation) neither merge away nor absorb others: FastAST's code
  loses the distillation token here.
* Merging is per utterance: padding never merges with real tokens, ``r`` is clamped per utterance
  to ``(real tokens - protected) / 2``, and the surviving tokens keep their original order, packed in
  front with padding behind. A padded batch gives each utterance what it gets alone.
* ``unmerge``: each input frame remembers which token it went into, so the output can be copied
  back to the input frames for frame-level losses (CTC, HuBERT).

The matching cost (the A x B similarity matmul) shows up in the FLOP trace like any matmul, and
every later linear layer is traced at the merged token count, so FLOP counts are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, List, Mapping, Optional

import torch
from torch import nn

from ..errors import SpeechBudgetError
from .base import EncoderOutput, make_pad_mask

SCHEDULES = ("constant", "decreasing")


@dataclass(frozen=True)
class ToMeConfig:
    r: int = 8  # tokens merged per block (constant) or on average per block (decreasing)
    schedule: str = "constant"
    proportional_attention: bool = True
    unmerge: bool = False

    def per_layer(self, layers: int) -> List[int]:
        """r of each block. ``decreasing``: linear from 2r down to 0, the same total as constant."""
        if self.schedule == "constant" or layers == 1:
            return [self.r] * layers
        return [round(2 * self.r * (layers - 1 - i) / (layers - 1)) for i in range(layers)]


def parse_tome(spec: Optional[Mapping[str, Any]]) -> Optional[ToMeConfig]:
    """The encoders' ``tome`` kwarg -> a config, or None when merging is off (absent or r = 0)."""
    if spec is None or spec is False:
        return None
    if isinstance(spec, ToMeConfig):
        cfg = spec
    else:
        if not isinstance(spec, Mapping):
            raise SpeechBudgetError(f"tome must be a dict like {{'r': 8}}, got {spec!r}")
        known = set(ToMeConfig.__dataclass_fields__)
        unknown = set(spec) - known
        if unknown:
            raise SpeechBudgetError(f"unknown tome keys {sorted(unknown)}; known: {sorted(known)}")
        cfg = ToMeConfig(**spec)
    if isinstance(cfg.r, bool) or not isinstance(cfg.r, int) or cfg.r < 0:
        raise SpeechBudgetError(f"tome r must be a non-negative integer, got {cfg.r!r}")
    if cfg.schedule not in SCHEDULES:
        raise SpeechBudgetError(f"tome schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    for flag in ("proportional_attention", "unmerge"):
        if not isinstance(getattr(cfg, flag), bool):
            raise SpeechBudgetError(f"tome {flag} must be true or false, got {getattr(cfg, flag)!r}")
    return cfg if cfg.r > 0 else None


def flat_rows(idx: torch.Tensor, width: int) -> torch.Tensor:
    """(B, K) row indices into (B, width, D) -> (B * K,) indices into its (B * width, D) view."""
    return (idx + width * torch.arange(idx.size(0), device=idx.device)[:, None]).reshape(-1)


def take_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b]]`` (B, K, D): whole-row copies (index_select), much faster than ``gather`` on CPU."""
    b, t, d = x.shape
    return x.reshape(b * t, d).index_select(0, flat_rows(idx, t)).view(b, idx.size(1), d)


class TokenMerger:
    """Merge state of one forward pass: token sizes, lengths and which token each input frame is in.

    Call it as ``x = merger(x, keys, r)`` inside a block; read :meth:`attention_mask` before the
    next block's attention and :meth:`unmerge` at the end.
    """

    def __init__(self, lengths: torch.Tensor, width: int, protected: int, proportional: bool):
        self.protected, self.proportional = protected, proportional
        self.lengths = lengths
        self.input_lengths = lengths
        self.size = torch.ones(lengths.size(0), width, device=lengths.device)  # float32 counts
        self.source = torch.arange(width, device=lengths.device).expand(lengths.size(0), -1)

    def pad_mask(self, width: int) -> torch.Tensor:
        return make_pad_mask(self.lengths, width)

    def attention_mask(self, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, 1, 1, T): boolean key mask, or ``log(size)`` / -inf floats with proportional attention.
        Token 0 always counts (an empty utterance gives finite, ignored outputs)."""
        valid = ~self.pad_mask(width)
        valid[:, :1] = True
        if not self.proportional:
            return valid[:, None, None, :]
        bias = self.size[:, :width].log().masked_fill(~valid, float("-inf"))
        return bias.to(dtype)[:, None, None, :]

    @torch.no_grad()
    def match(self, keys: torch.Tensor, r_max: int):
        """Bipartite soft matching (no gradient: it only decides) -> (B, r_max) source positions,
        best first, and the position each merges into."""
        b, _, t, _ = keys.shape
        metric = sum(keys.unbind(1))  # the mean over heads, up to a scale the cosine ignores
        metric = metric / metric.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        scores = metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)  # (B, |A|, |B|)
        pos = torch.arange(t, device=keys.device)
        frozen = (pos >= self.lengths[:, None]) | (pos < self.protected)  # padding and CLS/dist
        scores.masked_fill_(frozen[:, 0::2, None] | frozen[:, None, 1::2], float("-inf"))
        best, match = scores.max(dim=-1)
        a_idx = best.argsort(dim=-1, descending=True, stable=True)[:, :r_max]
        return 2 * a_idx, 2 * match.gather(1, a_idx) + 1

    def __call__(self, x: torch.Tensor, keys: torch.Tensor, r: int) -> torch.Tensor:
        """Merge up to ``r`` token pairs of each utterance; ``keys`` (B, heads, T, head_dim)."""
        b, t, d = x.shape
        r_b = ((self.lengths - self.protected) // 2).clamp(min=0, max=r)  # (B,) per-utterance r
        r_max = int(r_b.max())
        if r_max == 0:
            return x
        src, dst = self.match(keys, r_max)  # positions merged away, and where they go
        chosen = torch.arange(r_max, device=x.device) < r_b[:, None]  # utterances with a smaller r
        size = self.size[:, :t]
        moved = size.gather(1, src) * chosen
        new_size = size.scatter_add(1, dst, moved)

        # pack the survivors in front, in their original order
        pos = torch.arange(t, device=x.device)
        removed = torch.zeros(b, t, dtype=torch.bool, device=x.device).scatter(1, src, chosen)
        keep = ~removed & (pos < self.lengths[:, None])
        new_lengths = self.lengths - r_b
        width = int(new_lengths.max())
        order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :width]
        new_pos = keep.long().cumsum(1) - 1  # where each kept token lands
        out = take_rows(x, order)

        # size-weighted average, touching only the destination rows (several sources may share one):
        # x_dst + sum_i s_i (x_i - x_dst) / S_dst = (s_dst x_dst + sum_i s_i x_i) / S_dst
        share = (moved / new_size.gather(1, dst)).to(x.dtype).unsqueeze(-1)
        dst_new = new_pos.gather(1, dst)
        delta = share * (take_rows(x, src) - take_rows(x, dst))
        out = out.reshape(b * width, d).index_add_(0, flat_rows(dst_new, width), delta.reshape(-1, d))

        new_pos = new_pos.scatter(1, src, torch.where(chosen, dst_new, new_pos.gather(1, src)))
        self.source = new_pos.clamp(0, width - 1).gather(1, self.source)
        self.lengths = new_lengths
        self.size = new_size.gather(1, order).masked_fill(make_pad_mask(new_lengths, width), 1.0)
        return out.view(b, width, d)

    def unmerge(self, x: torch.Tensor, source: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, merged T, D) -> (B, input T, D): every input frame gets its token's state.
        ``source``: the frame -> token map saved when ``x`` was made (default: the current one)."""
        source = self.source if source is None else source
        out = x.gather(1, source.unsqueeze(-1).expand(-1, -1, x.size(-1)))
        return out.masked_fill(make_pad_mask(self.input_lengths, out.size(1)).unsqueeze(-1), 0.0)


def run_merged(blocks, tome, x: torch.Tensor, lengths: torch.Tensor, protected: int, layer_drop: float = 0.0):
    """Blocks with token merging -> (x, (merger, [(state, source) per layer])); shared with AST."""
    merger = TokenMerger(lengths, x.size(1), protected, tome.proportional_attention)
    layers: List[torch.Tensor] = []
    for block, r in zip(blocks, tome.per_layer(len(blocks))):
        if not (layer_drop > 0 and torch.rand(()) < layer_drop):
            mask = merger.attention_mask(x.size(1), x.dtype)
            x = block(x, mask, merge=partial(merger, r=r))
        x = x.masked_fill(merger.pad_mask(x.size(1)).unsqueeze(-1), 0.0)
        layers.append((x, merger.source))
    return x, (merger, layers)


def merged_output(tome, norm: Optional[nn.Module], x: torch.Tensor, state, return_layers: bool):
    """Final norm, then back to input frames (``unmerge``) or the merged tokens with their lengths."""
    merger, layers = state
    if norm is not None:
        x = norm(x).masked_fill(merger.pad_mask(x.size(1)).unsqueeze(-1), 0.0)
    if not tome.unmerge:  # layers: each at its own merged width
        return EncoderOutput(x, merger.lengths, [h for h, _ in layers] if return_layers else None)
    layers = [merger.unmerge(h, source) for h, source in layers] if return_layers else None
    return EncoderOutput(merger.unmerge(x), merger.input_lengths, layers)
