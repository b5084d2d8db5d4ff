"""The BiMamba block as it was before issue 15's block speed-up, kept as the bench baseline.

``use_before(encoder)`` switches every block of a built ``bimamba`` encoder to this code (same
parameters, same names): the branches transpose to (B, D, T) for a Conv1d and the (B, D, L) scan,
and the backward direction flips each utterance with :func:`flip_valid` and back.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from speechbudget.models.bimamba import BiMambaBlock, MambaBranch


def flip_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    idx = torch.arange(x.size(1), device=x.device).unsqueeze(0)
    lengths = lengths.unsqueeze(1)
    src = torch.where(idx < lengths, lengths - 1 - idx, idx)
    return torch.gather(x, 1, src.unsqueeze(-1).expand_as(x))


class BranchBefore(MambaBranch):
    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor, A_log: Optional[torch.Tensor] = None):
        length = x.size(1)
        u = F.silu(self.conv(x.transpose(1, 2))[..., :length])
        dt, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt)).transpose(1, 2)
        delta = delta.masked_fill(pad_mask.unsqueeze(1), 0.0)
        A = -torch.exp((self.A_log if A_log is None else A_log).float())
        y = self.scan(u, delta, A, B.transpose(1, 2), C.transpose(1, 2), D=self.D)
        return y.transpose(1, 2)


class BlockBefore(BiMambaBlock):
    def forward(self, h: torch.Tensor, lengths: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(self.norm(h)).chunk(2, dim=-1)
        x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        y_fwd = self.forward_branch(x, pad_mask)
        y_bwd = flip_valid(self.backward_branch(flip_valid(x, lengths), pad_mask), lengths)
        y = 0.5 * (y_fwd + y_bwd) * F.silu(z)
        return h + self.dropout(self.out_proj(y))


def use_before(encoder: torch.nn.Module) -> torch.nn.Module:
    """Switch ``encoder``'s BiMamba blocks (in place) to the code before the speed-up."""
    for block in encoder.blocks:
        block.__class__ = BlockBefore
        block.forward_branch.__class__ = BranchBefore
        block.backward_branch.__class__ = BranchBefore
    return encoder
