"""Audio Mamba (AuM, Erol et al., arXiv 2406.03344): bidirectional Mamba over spectrogram patches.

16 x 16 patches of a 128-bin fbank (stride 16, learned positions) -> a CLS token inserted in the
*middle* of each clip's patch sequence (both scan directions reach it after half the clip) ->
``layers`` residual Mamba blocks -> RMSNorm. Every size has 24 layers; d_state 16, expand 2.

``aum_type`` picks the published block variants:

* ``"Bi-Bi"`` (Vision Mamba "v2"): the backward direction has its own conv, x_proj, dt_proj, A and
  D; the two directions are summed and halved. This is :class:`~.bimamba.BiMambaBlock`.
* ``"Fo-Bi"`` (Vision Mamba "v1", AuM's default): one conv, x_proj, dt_proj and D serve both
  directions; only the backward A is separate; the directions are summed.
* ``"Fo-Fo"``: forward only (the unidirectional baseline).

The output keeps the sequence order: the CLS state sits at :meth:`AudioMamba.cls_index` (the
middle of each clip), and ``lengths`` count it.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpeechBudgetError
from .base import Encoder, EncoderOutput, make_pad_mask
from .bimamba import BiMambaBlock, MambaBranch
from .patches import PatchEmbed

AUM_TYPES = ("Fo-Fo", "Fo-Bi", "Bi-Bi")


class SharedBranchBlock(nn.Module):
    """Pre-norm residual Mamba block with one branch's weights; ``bidirectional`` adds a backward A (Fo-Bi)."""

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: Optional[int] = None,
        chunk_size: Optional[int] = None,
        dropout: float = 0.0,
        bidirectional: bool = True,
    ):
        super().__init__()
        d_inner = expand * dim
        self.norm = nn.RMSNorm(dim, eps=1e-5)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.branch = MambaBranch(
            d_inner, d_state, dt_rank or math.ceil(dim / 16), d_conv, chunk_size=chunk_size
        )
        self.A_b_log = nn.Parameter(self.branch.A_log.detach().clone()) if bidirectional else None
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, lengths: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(self.norm(h)).chunk(2, dim=-1)
        x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        y = self.branch(x, pad_mask)
        if self.A_b_log is not None:
            y = y + self.branch(x, pad_mask, A_log=self.A_b_log, reverse=True)
        return h + self.dropout(self.out_proj(y * F.silu(z)))


def insert_middle(x: torch.Tensor, lengths: torch.Tensor, token: torch.Tensor):
    """Insert ``token`` (D,) at position ``lengths // 2`` of each sequence: (B, T+1, D), lengths + 1."""
    mid = (lengths // 2).unsqueeze(1)
    idx = torch.arange(x.size(1) + 1, device=x.device).unsqueeze(0)
    src = (idx - (idx > mid).long()).clamp(max=x.size(1) - 1)
    out = torch.gather(x, 1, src.unsqueeze(-1).expand(-1, -1, x.size(2)))
    return torch.where((idx == mid).unsqueeze(-1), token.to(out.dtype), out), lengths + 1


class AudioMamba(Encoder):
    """(B, T, 128) fbank -> (B, patches + 1, dim) with the CLS state in the middle of each clip."""

    def __init__(
        self,
        dim: int = 384,
        layers: int = 24,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: Optional[int] = None,
        aum_type: str = "Fo-Bi",
        num_mel_bins: int = 128,
        patch: int = 16,
        stride: int = 16,
        position: str = "learned",
        max_frames: int = 1024,
        feature_mean: Optional[float] = None,
        feature_std: Optional[float] = None,
        cls_token: bool = True,
        dropout: float = 0.0,
        chunk_size: Optional[int] = None,
    ):
        super().__init__()
        if aum_type not in AUM_TYPES:
            raise SpeechBudgetError(f"unknown aum_type {aum_type!r}; choose one of {', '.join(AUM_TYPES)}")
        if min(dim, layers, d_state, expand, d_conv) < 1:
            raise SpeechBudgetError("aum dim, layers, d_state, expand and d_conv must be positive")
        self.aum_type = aum_type
        self.input_dim, self.input_rate_hz, self.output_dim = num_mel_bins, 100.0, dim
        self.patches = PatchEmbed(
            dim, num_mel_bins, patch, stride, None, position, max_frames, feature_mean, feature_std
        )
        self.frame_rate_hz = self.input_rate_hz / stride * self.patches.freq_patches  # patches per second
        self.cls = nn.Parameter(torch.randn(dim) * 0.02) if cls_token else None
        block_args = (dim, d_state, expand, d_conv, dt_rank, chunk_size, dropout)
        if aum_type == "Bi-Bi":
            blocks = [BiMambaBlock(*block_args) for _ in range(layers)]
        else:
            blocks = [
                SharedBranchBlock(*block_args, bidirectional=aum_type == "Fo-Bi") for _ in range(layers)
            ]
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.RMSNorm(dim, eps=1e-5)
        with torch.no_grad():  # keep the residual stream's variance flat across depth
            for block in self.blocks:
                block.out_proj.weight.div_(math.sqrt(layers))

    def cls_index(self, lengths: torch.Tensor) -> Optional[torch.Tensor]:
        """(B,) position of the CLS state in the output, given the output ``lengths``; None without one."""
        return None if self.cls is None else (lengths - 1) // 2

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, return_layers: bool = False
    ) -> EncoderOutput:
        x, lengths = self.patches(features, lengths)
        if self.cls is not None:
            x, lengths = insert_middle(x, lengths, self.cls)
        pad_mask = make_pad_mask(lengths, x.size(1))
        layers: List[torch.Tensor] = []
        for block in self.blocks:
            x = block(x, lengths, pad_mask).masked_fill(pad_mask.unsqueeze(-1), 0.0)
            layers.append(x)
        x = self.norm(x).masked_fill(pad_mask.unsqueeze(-1), 0.0)
        return EncoderOutput(hidden=x, lengths=lengths, layers=layers if return_layers else None)


#: AuM sizes (24 layers each): tiny 192, small 384 (~25M), base 768 (~92M); d_state 16, expand 2.
PRESETS: Dict[str, Dict[str, Any]] = {
    "aum-tiny": {"dim": 192, "layers": 24},
    "aum-small": {"dim": 384, "layers": 24},
    "aum-base": {"dim": 768, "layers": 24},
}


def build(**config: Any) -> AudioMamba:
    return AudioMamba(**config)
