"""Building blocks of the Zipformer encoder (Yao et al., arXiv 2310.11230).

Tensors are batch-first: ``(B, T, D)``. ``pad`` is a ``(B, T)`` bool mask, ``True`` at padded
frames. Every block is written so that padded frames can hold any finite junk without changing
what real frames compute: attention never looks at padded keys, the depthwise convolution sees
zeros there (exactly what "same" zero padding would give a shorter batch), and downsampling
repeats each utterance's own last frame.

The training aids of the reference implementation (balancers, whitening, dropout schedules,
layer skipping) have no parameters and are left out; parameter shapes follow the reference so
that model sizes match it. A plain dropout on every residual branch is there for fine-tuning on
little data (``dropout``, off by default).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import zipformer_cpu

# Score given to padded keys. Finite (not -inf) so an all-padding row cannot produce NaN, and
# far enough below any real score that exp() underflows to exactly 0 (also in fp16/bf16).
MASKED_SCORE = -1000.0


def scaled_linear(d_in: int, d_out: int, scale: float, bias: bool = True) -> nn.Linear:
    """A Linear whose initial weights are shrunk by ``scale``.

    Zipformer starts residual branches small (and splits the usual 1/sqrt(d) attention factor
    between query and key) through initial scales rather than constant multipliers in forward.
    """
    lin = nn.Linear(d_in, d_out, bias=bias)
    with torch.no_grad():
        lin.weight.mul_(scale)
        if bias:
            lin.bias.uniform_(-0.1 * scale, 0.1 * scale)
    return lin


class _Swoosh(torch.autograd.Function):
    """softplus(x - shift) - 0.08 x - offset, saving only ``x`` and computing the derivative
    sigmoid(x - shift) - 0.08 in backward (fewer passes over memory than autograd's chain of
    elementwise ops, same values)."""

    @staticmethod
    def forward(ctx, x, shift: float, offset: float):
        ctx.shift = shift
        ctx.compiled = x.is_contiguous() and zipformer_cpu.supports(x)
        ctx.save_for_backward(x)
        if ctx.compiled:  # one pass (zipformer_cpu)
            return zipformer_cpu.swoosh(x, shift, offset)
        return torch.add(F.softplus(x - shift), x, alpha=-0.08).sub_(offset)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if ctx.compiled:
            return zipformer_cpu.swoosh_backward(x, grad, ctx.shift), None, None
        return torch.sigmoid(x - ctx.shift).sub_(0.08).mul_(grad), None, None


def _swoosh(x: torch.Tensor, shift: float, offset: float) -> torch.Tensor:
    if torch.jit.is_tracing():
        return F.softplus(x - shift) - 0.08 * x - offset
    return _Swoosh.apply(x, shift, offset)


def swoosh_l(x: torch.Tensor) -> torch.Tensor:
    """SwooshL(x) = log(1 + e^(x-4)) - 0.08x - 0.035 (feed-forward activation).

    Unlike Swish it has a non-zero slope for negative inputs, so units are never "dead"; the
    offsets make it near zero-mean.
    """
    return _swoosh(x, 4.0, 0.035)


def swoosh_r(x: torch.Tensor) -> torch.Tensor:
    """SwooshR(x) = log(1 + e^(x-1)) - 0.08x - 0.313261687 (convolution-module activation).

    The constant makes SwooshR(0) = 0.
    """
    return _swoosh(x, 1.0, 0.313261687)


class BiasNorm(nn.Module):
    """x / RMS(x - b) * exp(g): LayerNorm without mean removal and with a learned bias.

    The bias is used only inside the RMS, so a channel cannot become a large constant that
    "defeats" the normalisation; the output keeps the input's direction and length information.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.tensor(1.0))
        self.eps = eps  # guards an all-zero frame (e.g. zeroed padding); negligible otherwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ms = (x - self.bias).pow(2).mean(dim=-1, keepdim=True)
        return x * (ms + self.eps).rsqrt() * self.log_scale.exp()


class Bypass(nn.Module):
    """out = x_orig + c * (x - x_orig) with a learned per-channel ``c`` (initially 0.5).

    Lets each block (or downsampled stack) choose, channel by channel, how much of its own
    update to keep: the paper's replacement for a plain residual around a whole block.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x_orig: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x_orig + (x - x_orig) * self.scale


class FeedForward(nn.Module):
    """Linear -> SwooshL -> Linear. The output projection starts small (scale 0.1)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.in_proj = nn.Linear(dim, hidden)
        self.out_proj = scaled_linear(hidden, dim, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(swoosh_l(self.in_proj(x)))


class _Depthwise(torch.autograd.Function):
    """The depthwise convolution on (B, T, D) as one compiled loop each way (zipformer_cpu)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        taps = weight.reshape(weight.size(0), -1).t().contiguous()  # (D, 1, K) -> (K, D)
        ctx.save_for_backward(x, taps)
        ctx.weight_shape = weight.shape
        return zipformer_cpu.depthwise(x, taps, bias)

    @staticmethod
    def backward(ctx, grad):
        x, taps = ctx.saved_tensors
        grad_x, grad_taps, grad_bias = zipformer_cpu.depthwise_backward(x, taps, grad)
        return grad_x, grad_taps.t().reshape(ctx.weight_shape), grad_bias


class ConvModule(nn.Module):
    """Gated pointwise conv -> depthwise conv over time -> SwooshR -> pointwise conv.

    Padded frames are zeroed right before the depthwise convolution, so real frames near the end
    of an utterance see the same zeros the convolution's own padding would give them.
    """

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"convolution kernel must be odd, got {kernel_size}")
        self.in_proj = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.out_proj = scaled_linear(dim, dim, 0.05)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x, gate = self.in_proj(x).chunk(2, dim=-1)
        x = x * torch.sigmoid(gate)
        x = x.masked_fill(pad.unsqueeze(-1), 0.0)
        return self.out_proj(swoosh_r(self._depthwise_over_time(x)))

    def _depthwise_over_time(self, x: torch.Tensor) -> torch.Tensor:
        """``self.depthwise`` on (B, T, D), without transposing the data.

        (B, T, D) seen as (B, D, 1, T) is the channels-last layout, where oneDNN's depthwise
        convolution is many times faster than on the (B, D, T) layout Conv1d would get.
        """
        conv = self.depthwise
        if torch.jit.is_tracing():  # FLOP counting sees the plain Conv1d
            return conv(x.transpose(1, 2)).transpose(1, 2)
        if x.is_contiguous() and zipformer_cpu.supports(x, conv.weight, conv.bias):
            return _Depthwise.apply(x, conv.weight, conv.bias)
        y = F.conv2d(
            x.transpose(1, 2).unsqueeze(2),
            conv.weight.unsqueeze(2),
            conv.bias,
            padding=(0, conv.padding[0]),
            groups=conv.groups,
        )
        return y.squeeze(2).transpose(1, 2)


def compact_rel_positions(seq_len: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Embeddings of relative offsets -(T-1) .. T-1: ``(2T-1, dim)``.

    Offsets are squashed (log, then atan) into a finite interval before the Fourier features, so
    a few dimensions separate nearby offsets sharply while far ones (1000 vs 1001) look alike;
    relative attention needs the former, not the latter. The last dimension is a constant 1 that
    acts as a bias. Each offset's embedding does not depend on T, so padding cannot change it.
    """
    offsets = torch.arange(-(seq_len - 1), seq_len, device=device, dtype=torch.float32).unsqueeze(1)
    c = math.sqrt(dim)  # compression length
    compressed = c * offsets.sign() * (torch.log(offsets.abs() + c) - math.log(c))
    angle = torch.atan(compressed / (dim / (2 * math.pi)))
    freqs = torch.arange(1, dim // 2 + 1, device=device, dtype=torch.float32)
    pe = torch.stack([torch.cos(angle * freqs), torch.sin(angle * freqs)], dim=-1).reshape(-1, dim)
    pe = torch.cat([pe[:, :-1], torch.ones_like(pe[:, :1])], dim=1)
    return pe.to(dtype)


def rel_to_abs(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, T, 2T-1) scores indexed by offset k = j - i + T - 1  ->  (B, H, T, T) indexed by j.

    A strided view (no copy): row i starts one element earlier than row i-1 along the offset axis.
    """
    scores = scores.contiguous()  # a no-op for matmul outputs; the strides below assume it
    b, h, t, _ = scores.shape
    s0, s1, s2, s3 = scores.stride()
    return scores.as_strided(
        (b, h, t, t), (s0, s1, s2 - s3, s3), storage_offset=scores.storage_offset() + (t - 1) * s3
    )


class _RelPosAttentionWeights(torch.autograd.Function):
    """softmax(q k^T + rel_to_abs(p pos) masked) with a hand-written backward.

    The math is that of the plain PyTorch expression; the gain is in memory traffic on the
    ``(B, H, T, T)`` tensors, which dominate small models: the score matmul accumulates onto the
    positional scores (no separate add), masking and softmax work in place, only the weights are
    saved, and the positional gradient is written straight into a band of a ``(B, H, T, 2T-1)``
    buffer instead of going through autograd's generic ``as_strided`` backward.

    Returns the weights and a copy of the first head's, for the non-linear attention: its
    gradient is added to the first head's inside this backward, where slicing the weights would
    have autograd zero-fill and add a whole ``(B, H, T, T)`` gradient for it.
    """

    @staticmethod
    def forward(ctx, q, k, p, pos, keep):
        # q (B, H, T, dq), k (B, H, dq, T), p (B, H, T, dp), pos (1, H, dp, 2T-1),
        # keep (B, 1, 1, T): 1.0 at real keys, 0.0 at padded ones
        b, h, t, dq = q.shape
        dp = p.size(-1)
        ctx.compiled = zipformer_cpu.supports(q, k, p, pos, keep)
        if ctx.compiled:  # one visit per query row (zipformer_cpu); same math
            scores = torch.bmm(q.reshape(b * h, t, dq), k.reshape(b * h, dq, t))
            p = p.reshape(b * h, t, dp).contiguous()
            pos = pos.reshape(h, dp, 2 * t - 1).contiguous()
            keep = keep.reshape(b, t).contiguous()
            weights = zipformer_cpu.relpos_softmax_(scores, p, pos, keep, MASKED_SCORE).view(b, h, t, t)
            ctx.save_for_backward(weights, q, k, p, pos, keep)
            return weights, weights[:, 0].clone()
        pos = pos.expand(b, h, dp, 2 * t - 1).reshape(b * h, dp, 2 * t - 1)  # a view
        pos_scores = rel_to_abs(torch.bmm(p.reshape(b * h, t, dp), pos).view(b, h, t, 2 * t - 1))
        k = k.reshape(b * h, dq, t)
        scores = torch.baddbmm(pos_scores.reshape(b * h, t, t), q.reshape(b * h, t, dq), k)
        scores = scores.view(b, h, t, t)
        # masked_fill(pad, MASKED_SCORE), for finite scores; two cheap passes instead of a slow one
        scores.mul_(keep).add_((1.0 - keep) * MASKED_SCORE)
        weights = torch.softmax(scores, dim=-1)
        ctx.save_for_backward(weights, q, k, p, pos, keep)
        return weights, weights[:, 0].clone()

    @staticmethod
    def backward(ctx, grad_weights, grad_head0):
        weights, q, k, p, pos, keep = ctx.saved_tensors
        b, h, t, dq = q.shape
        dp = p.size(-1)
        if ctx.compiled:
            gs, grad_p, grad_pos = zipformer_cpu.relpos_softmax_backward(
                grad_weights.reshape(b * h, t, t), grad_head0, weights.view(b * h, t, t), keep, p, pos
            )
            k = k.reshape(b * h, dq, t)
            grad_q = torch.bmm(gs, k.transpose(1, 2)).view(b, h, t, dq)
            grad_k = torch.bmm(q.reshape(b * h, t, dq).transpose(1, 2), gs).view(b, h, dq, t)
            return grad_q, grad_k, grad_p.view(b, h, t, dp), grad_pos.view(1, h, dp, 2 * t - 1), None
        grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype)
        # the softmax gradient is linear in the incoming one: head 0's copy adds its own on that head
        grad_scores[:, 0] += torch._softmax_backward_data(grad_head0, weights[:, 0], -1, weights.dtype)
        grad_scores.mul_(keep)  # masked scores are constants
        gs = grad_scores.view(b * h, t, t)
        grad_q = torch.bmm(gs, k.transpose(1, 2)).view(b, h, t, dq)
        grad_k = torch.bmm(q.reshape(b * h, t, dq).transpose(1, 2), gs).view(b, h, dq, t)
        grad_pos_scores = grad_scores.new_zeros(b, h, t, 2 * t - 1)
        rel_to_abs(grad_pos_scores).copy_(grad_scores)
        grad_pos_scores = grad_pos_scores.view(b * h, t, 2 * t - 1)
        grad_p = torch.bmm(grad_pos_scores, pos.transpose(1, 2)).view(b, h, t, dp)
        grad_pos = torch.bmm(p.reshape(b * h, t, dp).transpose(1, 2), grad_pos_scores)
        grad_pos = grad_pos.view(b, h, dp, 2 * t - 1).sum(dim=0, keepdim=True)
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_p.to(p.dtype), grad_pos.to(pos.dtype), None


class AttentionWeights(nn.Module):
    """Multi-head attention weights with relative positions, computed once per block.

    score(i, j) = q_i . k_j + p_i . W pe(j - i) per head, where p is a small per-head "position
    query" (``pos_head_dim``) and pe the compact relative embedding. The weights are shared by the
    non-linear attention and both self-attention modules of a block: attention is computed once
    and reused three times. The query/key projection starts at scale query_head_dim^-0.25, which
    plays the role of the usual 1/sqrt(d) factor.
    """

    def __init__(self, dim: int, num_heads: int, query_head_dim: int, pos_head_dim: int, pos_dim: int):
        super().__init__()
        self.num_heads, self.query_head_dim, self.pos_head_dim = num_heads, query_head_dim, pos_head_dim
        in_dim = (2 * query_head_dim + pos_head_dim) * num_heads
        self.in_proj = scaled_linear(dim, in_dim, query_head_dim**-0.25)
        self.pos_proj = scaled_linear(pos_dim, num_heads * pos_head_dim, 0.05, bias=False)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, pad: torch.Tensor):
        """x (B, T, D), pos_emb (2T-1, pos_dim), pad (B, T) -> weights (B, H, T, T) and the first
        head's (B, T, T)."""
        b, t, _ = x.shape
        h, dq, dp = self.num_heads, self.query_head_dim, self.pos_head_dim
        q, k, p = self.in_proj(x).split([h * dq, h * dq, h * dp], dim=-1)
        q = q.reshape(b, t, h, dq).transpose(1, 2)  # (B, H, T, dq)
        k = k.reshape(b, t, h, dq).permute(0, 2, 3, 1)  # (B, H, dq, T)
        p = p.reshape(b, t, h, dp).transpose(1, 2)  # (B, H, T, dp)
        pos = self.pos_proj(pos_emb).reshape(-1, h, dp).permute(1, 2, 0).unsqueeze(0)  # (1, H, dp, 2T-1)
        mask = pad[:, None, None, :]
        if torch.jit.is_tracing():  # FLOP counting traces the plain expression
            scores = torch.matmul(q, k) + rel_to_abs(torch.matmul(p, pos))
            weights = scores.masked_fill(mask, MASKED_SCORE).softmax(dim=-1)
            return weights, weights[:, 0]
        keep = (~mask).to(q.dtype)
        return _RelPosAttentionWeights.apply(q, k, p, pos, keep)


class SelfAttention(nn.Module):
    """Values and output projection for precomputed attention weights."""

    def __init__(self, dim: int, num_heads: int, value_head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj = nn.Linear(dim, num_heads * value_head_dim)
        self.out_proj = scaled_linear(num_heads * value_head_dim, dim, 0.05)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        v = self.in_proj(x).reshape(b, t, self.num_heads, -1).transpose(1, 2)  # (B, H, T, dv)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, t, -1)
        return self.out_proj(out)


class NonlinAttention(nn.Module):
    """Attention as the "convolution" of a gated unit: (tanh(s) * x) mixed over time by the first
    head's attention weights, then gated by y.

    It reuses the block's attention weights, so it adds context mixing with no new score
    computation. Hidden width is 3/4 of the model dim.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.in_proj = nn.Linear(dim, 3 * hidden)
        self.out_proj = scaled_linear(hidden, dim, 0.05)

    def forward(self, x: torch.Tensor, head0: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), head0: the first head's attention weights (B, T, T)."""
        s, x, y = self.in_proj(x).chunk(3, dim=-1)
        x = x * torch.tanh(s)
        x = torch.matmul(head0, x)  # (B, T, T) @ (B, T, hidden)
        return self.out_proj(x * y)


class ZipformerBlock(nn.Module):
    """One Zipformer layer: roughly two Conformer blocks sharing one attention computation.

    FF(3/4) -> NonlinAttention -> SelfAttention -> Conv -> FF(1) -> mid bypass ->
    SelfAttention -> Conv -> FF(5/4) -> BiasNorm -> bypass, all residual. The feed-forward
    hidden sizes are 3/4, 1 and 5/4 of ``feedforward_dim``.
    """

    def __init__(
        self,
        dim: int,
        feedforward_dim: int,
        num_heads: int,
        query_head_dim: int,
        value_head_dim: int,
        pos_head_dim: int,
        pos_dim: int,
        kernel_size: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.dropout = dropout
        self.attn_weights = AttentionWeights(dim, num_heads, query_head_dim, pos_head_dim, pos_dim)
        self.ff1 = FeedForward(dim, feedforward_dim * 3 // 4)
        self.nonlin_attn = NonlinAttention(dim, 3 * dim // 4)
        self.self_attn1 = SelfAttention(dim, num_heads, value_head_dim)
        self.conv1 = ConvModule(dim, kernel_size)
        self.ff2 = FeedForward(dim, feedforward_dim)
        self.bypass_mid = Bypass(dim)
        self.self_attn2 = SelfAttention(dim, num_heads, value_head_dim)
        self.conv2 = ConvModule(dim, kernel_size)
        self.ff3 = FeedForward(dim, feedforward_dim * 5 // 4)
        self.norm = BiasNorm(dim)
        self.bypass = Bypass(dim)

    def _drop(self, branch: torch.Tensor) -> torch.Tensor:
        """Dropout on a residual branch before it is added (training only; a no-op at 0)."""
        if self.dropout == 0.0 or not self.training:
            return branch
        return F.dropout(branch, self.dropout, training=True)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x_orig = x
        w, w0 = self.attn_weights(x, pos_emb, pad)
        x = x + self._drop(self.ff1(x))
        x = x + self._drop(self.nonlin_attn(x, w0))
        x = x + self._drop(self.self_attn1(x, w))
        x = x + self._drop(self.conv1(x, pad))
        x = x + self._drop(self.ff2(x))
        x = self.bypass_mid(x_orig, x)
        x = x + self._drop(self.self_attn2(x, w))
        x = x + self._drop(self.conv2(x, pad))
        x = x + self._drop(self.ff3(x))
        x = self.bypass(x_orig, self.norm(x))
        # keep padded frames finite and quiet; real frames never read them anyway
        return x.masked_fill(pad.unsqueeze(-1), 0.0)


class Downsample(nn.Module):
    """Frame rate / ``factor`` by a learned weighted average of each group of frames.

    The weights are softmax(b) over the ``factor`` positions in a group. The group holding an
    utterance's last real frame is completed by repeating that frame (per utterance, not the
    batch's last frame), so the result does not depend on how much padding follows.
    """

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor
        self.bias = nn.Parameter(torch.zeros(factor))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths + self.factor - 1, self.factor, rounding_mode="floor")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        t_out = (t + self.factor - 1) // self.factor
        # frame index to read for every slot: min(slot, own last frame)
        idx = torch.arange(t_out * self.factor, device=x.device).unsqueeze(0)
        idx = torch.minimum(idx, (lengths - 1).clamp(min=0).unsqueeze(1))
        x = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, d))
        w = self.bias.softmax(dim=0).to(x.dtype)
        return (x.reshape(b, t_out, self.factor, d) * w[:, None]).sum(dim=2)


def upsample(x: torch.Tensor, factor: int, seq_len: int) -> torch.Tensor:
    """Repeat each frame ``factor`` times and cut to ``seq_len``: the inverse of Downsample's rate."""
    return x.repeat_interleave(factor, dim=1)[:, :seq_len]


def fit_channels(x: torch.Tensor, from_dim: int, to_dim: int) -> torch.Tensor:
    """Change the channel count between stacks: drop the last channels or append zeros.

    Widths come from the config (not ``x.shape``) so tracing sees no shape-dependent branch.
    """
    if to_dim <= from_dim:
        return x[..., :to_dim]
    return F.pad(x, (0, to_dim - from_dim))
