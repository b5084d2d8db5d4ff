"""Bidirectional Mamba encoder (Audio Mamba, arXiv 2406.03344; "bimamba v2" of Vision Mamba).

Each block: RMSNorm -> in_proj to (x, z) -> a forward and a backward selective-SSM branch over x,
each with its own causal depthwise conv, x_proj, dt_proj, A and D -> mean of the two -> gate with
SiLU(z) -> out_proj -> residual. Cost is linear in length, unlike attention.

Padding never reaches real frames: the backward branch runs each utterance from its last real
frame to its first (its conv looks ahead, its scan runs in reverse over the (B, T, D) data, so
nothing is flipped or copied; padding stays at the end), both branches are causal in their own
direction, and delta is 0 on padded frames so the state passes through them unchanged. No
position embedding: the conv and the recurrence already know order, and any length works.

With ``cls_token=True`` (classification) a learned token is inserted in the middle of each
utterance, as in AuM; the output then carries the CLS state at frame 0, followed by the frames in
order, and ``lengths`` count it.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpeechBudgetError
from .base import Encoder, EncoderOutput, make_pad_mask
from .frontends import build_frontend
from .selective_scan import SelectiveScan
from .transformer import check_features, check_frontend


def flip_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x`` (B, T, C) within its first ``lengths[b]`` frames; padding stays put.

    Its own inverse, so the same call flips the backward branch's output back.
    """
    idx = torch.arange(x.size(1), device=x.device).unsqueeze(0)
    lengths = lengths.unsqueeze(1)
    src = torch.where(idx < lengths, lengths - 1 - idx, idx)
    return torch.gather(x, 1, src.unsqueeze(-1).expand_as(x))


class MambaBranch(nn.Module):
    """One direction's causal conv + selective SSM; input and output (B, T, d_inner)."""

    def __init__(
        self,
        d_inner: int,
        d_state: int = 16,
        dt_rank: int = 8,
        d_conv: int = 4,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        chunk_size: Optional[int] = None,
    ):
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        # S4D-real init: A = -(1..N) per channel, a spread of time scales
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)
        )
        self.D = nn.Parameter(torch.ones(d_inner))
        self.scan = SelectiveScan(chunk_size)
        self._init_dt(dt_min, dt_max)

    @torch.no_grad()
    def _init_dt(self, dt_min: float, dt_max: float) -> None:
        """Start step sizes log-uniform in [dt_min, dt_max] so channels cover short and long memory."""
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(torch.empty_like(self.dt_proj.bias).uniform_(math.log(dt_min), math.log(dt_max)))
        dt = dt.clamp(min=1e-4)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) == dt

    def forward(
        self,
        x: torch.Tensor,
        pad_mask: torch.Tensor,
        A_log: Optional[torch.Tensor] = None,
        reverse: bool = False,
    ) -> torch.Tensor:
        """``x`` (B, T, d_inner), zero on padded frames; ``pad_mask`` (B, T) true on them (at the
        end of each utterance, as :func:`~.base.make_pad_mask` makes it). ``reverse``: the backward direction, run on
        ``x`` as it is (no flipped copy): the conv looks ahead (frame t sees t..t+3, the causal conv
        of the flipped utterance) and the scan runs from the last frame to the first; the state is 0
        until the first real frame because delta is 0 on the trailing padding. ``A_log`` replaces
        this branch's own decays: AuM's Fo-Bi runs the backward direction through the same conv and
        projections with a separate A."""
        u = F.silu(self._depthwise(x, reverse))
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        A = -torch.exp((self.A_log if A_log is None else A_log).float())
        lengths = (~pad_mask).sum(1)  # padded frames (at the end): delta 0, the state passes unchanged
        return self.scan(u, delta, A, B, C, D=self.D, time_major=True, reverse=reverse, lengths=lengths)

    def _depthwise(self, x: torch.Tensor, reverse: bool) -> torch.Tensor:
        """The depthwise conv over time on (B, T, D), causal or (``reverse``) looking ahead."""
        conv = self.conv
        if torch.jit.is_tracing():  # FLOP counting sees the plain Conv1d
            weight = conv.weight.flip(-1) if reverse else conv.weight
            y = F.conv1d(x.transpose(1, 2), weight, conv.bias, padding=conv.padding, groups=conv.groups)
            y = y[..., conv.padding[0] :] if reverse else y[..., : x.size(1)]
            return y.transpose(1, 2)
        return DepthwiseConvTime.apply(x, conv.weight, conv.bias, reverse)


def _conv_time(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], reverse: bool):
    """Depthwise conv of ``x`` (B, T, D) with ``weight`` (D, 1, K): causal, frame t sees t-K+1..t
    (``weight[:, 0, K-1]`` on frame t), or with ``reverse`` the causal conv of the flipped sequence
    (frame t sees t..t+K-1, ``weight[:, 0, K-1]`` on frame t).

    (B, T, D) seen as (B, D, 1, T) is the channels-last layout, where oneDNN's depthwise
    convolution is many times faster than on the (B, D, T) layout Conv1d would get (as in
    Zipformer). Looking ahead = the kernel flipped and the last T outputs of the zero-padded
    convolution instead of the first T. The result is a (B, T, D) view.
    """
    k, length = weight.size(-1), x.size(1)
    y = F.conv2d(
        x.transpose(1, 2).unsqueeze(2),
        (weight.flip(-1) if reverse else weight).unsqueeze(2),
        bias,
        padding=(0, k - 1),
        groups=weight.size(0),
    ).squeeze(2)
    return (y[..., k - 1 :] if reverse else y[..., :length]).transpose(1, 2)


class DepthwiseConvTime(torch.autograd.Function):
    """:func:`_conv_time` with a hand-written backward: oneDNN's depthwise convolution backward on
    this layout is several times slower than its forward, while the input gradient of a causal
    conv is the look-ahead conv of the gradient with the same kernel (and vice versa), and the
    weight gradient is K shifted dot products over (batch, time)."""

    @staticmethod
    def forward(ctx, x, weight, bias, reverse):
        x = x.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.reverse, ctx.has_bias = reverse, bias is not None
        return _conv_time(x, weight, bias, reverse)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        k, length = weight.size(-1), x.size(1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _conv_time(grad, weight, None, not ctx.reverse)
        if ctx.needs_input_grad[1]:
            taps = []
            for j in range(k):  # tap j meets frame t + j - (K-1) (causal) or t + (K-1) - j (reverse)
                s = k - 1 - j
                if s >= length:
                    taps.append(grad.new_zeros(grad.size(-1)))
                elif ctx.reverse:
                    taps.append((grad[:, : length - s] * x[:, s:]).sum((0, 1)))
                else:
                    taps.append((grad[:, s:] * x[:, : length - s]).sum((0, 1)))
            grad_w = torch.stack(taps, -1).unsqueeze(1).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 1))
        return grad_x, grad_w, grad_b, None


class BiMambaBlock(nn.Module):
    """Pre-norm residual block with shared in/out projections and two scan directions."""

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: Optional[int] = None,
        chunk_size: Optional[int] = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        d_inner = expand * dim
        dt_rank = dt_rank or math.ceil(dim / 16)
        self.norm = nn.RMSNorm(dim, eps=1e-5)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.forward_branch = MambaBranch(d_inner, d_state, dt_rank, d_conv, chunk_size=chunk_size)
        self.backward_branch = MambaBranch(d_inner, d_state, dt_rank, d_conv, chunk_size=chunk_size)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, lengths: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(self.norm(h)).chunk(2, dim=-1)
        x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        y_fwd = self.forward_branch(x, pad_mask)
        y_bwd = self.backward_branch(x, pad_mask, reverse=True)
        y = 0.5 * (y_fwd + y_bwd) * F.silu(z)  # mean keeps the scale of a one-direction block
        return h + self.dropout(self.out_proj(y))


class BiMambaEncoder(Encoder):
    """Front end (50 Hz) -> ``layers`` BiMamba blocks -> RMSNorm."""

    frame_rate_hz = 50.0

    def __init__(
        self,
        dim: int = 384,
        layers: int = 24,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: Optional[int] = None,
        frontend: str = "fbank",
        input_dim: Optional[int] = None,
        cls_token: bool = False,
        dropout: float = 0.0,
        chunk_size: Optional[int] = None,
    ):
        super().__init__()
        self.input_rate_hz, self.input_dim = check_frontend(frontend, input_dim)
        if min(dim, layers, d_state, expand, d_conv) < 1:
            raise SpeechBudgetError("bimamba dim, layers, d_state, expand and d_conv must be positive")
        self.frontend_kind = frontend
        self.output_dim = dim
        self.d_state = d_state
        self.frontend = build_frontend(frontend, self.input_dim, dim)
        self.cls = nn.Parameter(torch.randn(dim) * 0.02) if cls_token else None
        self.blocks = nn.ModuleList(
            BiMambaBlock(dim, d_state, expand, d_conv, dt_rank, chunk_size, dropout) for _ in range(layers)
        )
        self.norm = nn.RMSNorm(dim, eps=1e-5)
        with torch.no_grad():  # keep the residual stream's variance flat across depth
            for block in self.blocks:
                block.out_proj.weight.div_(math.sqrt(layers))

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, return_layers: bool = False
    ) -> EncoderOutput:
        check_features(features, self.input_dim, self.frontend_kind)
        x, lengths = self.frontend(features, lengths)
        if self.cls is not None:
            x, lengths = self._insert_cls(x, lengths)
        pad_mask = make_pad_mask(lengths, x.size(1))
        x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        layers: List[torch.Tensor] = []
        for block in self.blocks:
            x = block(x, lengths, pad_mask).masked_fill(pad_mask.unsqueeze(-1), 0.0)
            layers.append(x)
        x = self.norm(x).masked_fill(pad_mask.unsqueeze(-1), 0.0)
        if self.cls is not None:
            x = self._cls_first(x, lengths)
            layers = [self._cls_first(layer, lengths) for layer in layers]
        return EncoderOutput(hidden=x, lengths=lengths, layers=layers if return_layers else None)

    def _insert_cls(self, x: torch.Tensor, lengths: torch.Tensor):
        """Insert the CLS token at frame ``lengths // 2`` of each utterance: (B, T+1, D)."""
        mid = (lengths // 2).unsqueeze(1)
        idx = torch.arange(x.size(1) + 1, device=x.device).unsqueeze(0)
        src = (idx - (idx > mid).long()).clamp(max=x.size(1) - 1)
        out = torch.gather(x, 1, src.unsqueeze(-1).expand(-1, -1, x.size(2)))
        out = torch.where((idx == mid).unsqueeze(-1), self.cls.to(out.dtype), out)
        return out, lengths + 1

    @staticmethod
    def _cls_first(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Move the CLS state from the middle to frame 0; the frames keep their order."""
        mid = ((lengths - 1) // 2).unsqueeze(1)  # lengths already count the CLS token
        idx = torch.arange(x.size(1), device=x.device).unsqueeze(0)
        src = torch.where(idx == 0, mid, idx - 1 + (idx - 1 >= mid).long())
        return torch.gather(x, 1, src.unsqueeze(-1).expand_as(x))


#: AuM sizes: tiny 24 x 192, small 24 x 384 (~25M), base 24 x 768; xs is for CPU tests/planning.
PRESETS: Dict[str, Dict[str, Any]] = {
    "bimamba-tiny": {"dim": 192, "layers": 24},
    "bimamba-small": {"dim": 384, "layers": 24},
    "bimamba-base": {"dim": 768, "layers": 24},
    "bimamba-xs": {"dim": 128, "layers": 4},
}


def build(**config: Any) -> BiMambaEncoder:
    return BiMambaEncoder(**config)
