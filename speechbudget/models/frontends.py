"""Front ends that turn input features into the encoder's frame rate.

* :class:`Conv2dSubsampling` — fbank (100 Hz) through two small 2-D convolutions to 50 Hz
  (time stride 2). The cheap default.
* :class:`WaveformCNN` — raw 16 kHz waveform through a wav2vec2-style 1-D CNN (512 channels,
  kernels/strides (10,5),(3,2)x4,(2,2)x2) to 50 Hz, as in k2SSL and HuBERT. We normalise each
  frame over channels (LayerNorm) rather than over time (GroupNorm), so padding cannot leak
  into real frames.

Both zero padded input before every convolution, so real frames never see how much padding
follows them.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from .base import make_pad_mask


def conv_out_lengths(lengths: torch.Tensor, kernel: int, stride: int, padding: int = 0) -> torch.Tensor:
    """Output length of a 1-D convolution (no dilation) for each input length."""
    return torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1


class Conv2dSubsampling(nn.Module):
    """(B, T, F) fbank -> (B, T', D) with T' = ((T - 2) - 3) // 2 + 1 (about T / 2).

    ``utterance_cmn``: subtract each utterance's mean log-mel (over its real frames, per bin) first,
    so a level or microphone response that is constant over the utterance never reaches the model.
    """

    def __init__(
        self,
        in_dim: int = 80,
        out_dim: int = 256,
        channels: Tuple[int, int] = (8, 32),
        utterance_cmn: bool = False,
    ):
        super().__init__()
        self.utterance_cmn = utterance_cmn
        c1, c2 = channels
        # time: kernel 3 stride 1, then kernel 3 stride 2; frequency: stride 2 twice
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, stride=(1, 2), padding=(0, 1))
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, stride=(2, 2), padding=(0, 1))
        self.act = nn.SiLU()
        f = in_dim
        for _ in range(2):
            f = (f + 2 - 3) // 2 + 1
        self.out = nn.Linear(c2 * f, out_dim)
        self.out_dim = out_dim

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        lengths = conv_out_lengths(lengths, 3, 1)
        return conv_out_lengths(lengths, 3, 2).clamp(min=0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        pad = make_pad_mask(lengths, x.size(1)).unsqueeze(-1)
        x = x.masked_fill(pad, 0.0)
        if self.utterance_cmn:
            mean = x.sum(dim=1, keepdim=True) / lengths.clamp(min=1)[:, None, None].to(x.dtype)
            x = (x - mean).masked_fill(pad, 0.0)
        x = self.act(self.conv1(x.unsqueeze(1)))  # (B, C, T, F)
        l1 = conv_out_lengths(lengths, 3, 1)
        x = x.masked_fill(make_pad_mask(l1, x.size(2))[:, None, :, None], 0.0)
        x = self.act(self.conv2(x))
        b, c, t, f = x.shape
        x = self.out(x.permute(0, 2, 1, 3).reshape(b, t, c * f))
        return x, self.output_lengths(lengths)


class WaveformCNN(nn.Module):
    """(B, S, 1) 16 kHz samples -> (B, T', D) at 50 Hz, wav2vec2/HuBERT feature extractor shape."""

    def __init__(
        self,
        out_dim: int = 768,
        channels: int = 512,
        layers: Sequence[Tuple[int, int]] = ((10, 5),) + ((3, 2),) * 4 + ((2, 2),) * 2,
    ):
        super().__init__()
        self.layers = list(layers)
        convs, norms = [], []
        in_ch = 1
        for k, s in self.layers:
            convs.append(nn.Conv1d(in_ch, channels, k, stride=s, bias=False))
            norms.append(nn.LayerNorm(channels))
            in_ch = channels
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.act = nn.GELU()
        self.proj = nn.Linear(channels, out_dim)
        self.out_dim = out_dim

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for k, s in self.layers:
            lengths = conv_out_lengths(lengths, k, s)
        return lengths.clamp(min=0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if x.dim() == 3:
            x = x.squeeze(-1)
        x = x.unsqueeze(1)  # (B, 1, S)
        for (k, s), conv, norm in zip(self.layers, self.convs, self.norms):
            x = x.masked_fill(make_pad_mask(lengths, x.size(-1)).unsqueeze(1), 0.0)
            x = conv(x)
            lengths = conv_out_lengths(lengths, k, s)
            x = self.act(norm(x.transpose(1, 2)).transpose(1, 2))
        x = self.proj(x.transpose(1, 2))
        return x, lengths.clamp(min=0)


def build_frontend(kind: str, in_dim: int, out_dim: int, utterance_cmn: bool = False) -> nn.Module:
    """``fbank`` -> :class:`Conv2dSubsampling`; ``waveform`` -> :class:`WaveformCNN`."""
    if kind == "fbank":
        return Conv2dSubsampling(in_dim=in_dim, out_dim=out_dim, utterance_cmn=utterance_cmn)
    if utterance_cmn:
        raise ValueError("utterance_cmn is for the fbank frontend (log-mel features)")
    if kind == "waveform":
        return WaveformCNN(out_dim=out_dim)
    raise ValueError(f"unknown frontend {kind!r}; choose 'fbank' or 'waveform'")
