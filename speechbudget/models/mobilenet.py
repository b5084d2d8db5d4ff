"""MobileNetV3-style CNN over a log-mel spectrogram: the usual CMKD teacher (FastAST, EfficientAT).

Written from the MobileNetV3 paper (Howard et al. 2019, "Searching for MobileNetV3", the Large
block table), which EfficientAT (Schmid et al. 2023) scales with a width multiplier for audio:

* stem: 3x3 conv, stride 2, 16 channels, hard-swish;
* 15 inverted residual blocks: 1x1 expansion -> depthwise kxk (stride 1 or 2) -> optional
  squeeze-excitation (pool, reduce to a quarter, ReLU, expand, hard-sigmoid gate) -> 1x1 linear
  projection; a residual when shape allows; ReLU early, hard-swish late;
* head: 1x1 conv to 6x the last width, hard-swish.

The spectrogram is an image (1, mel, time); overall stride 32 on both axes. As an encoder the output
is the frequency-averaged map, one frame per 32 input frames (3.125 Hz), so ClassifierModel's mean
pooling is the global average pooling of the paper. Padded time steps are zeroed before every
convolution that looks across time, and squeeze-excitation averages real steps only, so padding never
changes what a real frame sees (in eval mode: training-mode batch norm pools over the padded batch).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpeechBudgetError
from .base import Encoder, EncoderOutput, make_pad_mask

#: MobileNetV3-Large: (kernel, expansion channels, output channels, squeeze-excite, hard-swish, stride)
LARGE = [
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
]


def divisible(channels: float, by: int = 8) -> int:
    """Round to a multiple of ``by`` without losing more than 10% (the MobileNet convention)."""
    out = max(by, int(channels + by / 2) // by * by)
    return out + by if out < 0.9 * channels else out


def conv_lengths(lengths: torch.Tensor, stride: int) -> torch.Tensor:
    """Time steps after a 'same'-padded odd-kernel conv: ceil(n / stride)."""
    return (lengths + stride - 1) // stride


def mask_time(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero time steps past each clip's end; x (B, C, F, T)."""
    return x.masked_fill(make_pad_mask(lengths, x.size(-1))[:, None, None, :], 0.0)


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout))


class SqueezeExcite(nn.Module):
    """Channel gates from the mean over real (frequency, time) positions."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = divisible(channels / 4)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        count = (lengths.clamp(min=1) * x.size(2)).to(x.dtype)[:, None, None, None]
        pooled = mask_time(x, lengths).sum((2, 3), keepdim=True) / count
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(pooled))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, kernel: int, exp: int, cout: int, se: bool, hswish: bool, stride: int):
        super().__init__()
        self.stride = stride
        self.act = nn.Hardswish() if hswish else nn.ReLU()
        self.expand = conv_bn(cin, exp) if exp != cin else None
        self.depthwise = conv_bn(exp, exp, kernel, stride, groups=exp)
        self.se = SqueezeExcite(exp) if se else None
        self.project = conv_bn(exp, cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        h = self.act(self.expand(x)) if self.expand is not None else x
        out_lengths = conv_lengths(lengths, self.stride)
        h = self.act(self.depthwise(mask_time(h, lengths)))
        if self.se is not None:
            h = self.se(h, out_lengths)
        h = self.project(h)
        return (x + h if self.residual else h), out_lengths


class MobileNetEncoder(Encoder):
    """(B, T, mel) fbank -> (B, ceil(T / 32), channels) frames of a MobileNetV3-style CNN."""

    input_rate_hz = 100.0

    def __init__(
        self,
        width: float = 1.0,
        num_mel_bins: int = 128,
        head_channels: Optional[int] = None,
        feature_mean: float = 0.0,
        feature_std: float = 1.0,
    ):
        super().__init__()
        if not width > 0 or num_mel_bins < 1:
            raise SpeechBudgetError(
                f"mobilenet width and num_mel_bins must be positive ({width}, {num_mel_bins})"
            )
        self.input_dim = num_mel_bins
        self.register_buffer("feature_stats", torch.tensor([feature_mean, feature_std]))
        cin = divisible(16 * width)
        self.stem = conv_bn(1, cin, 3, 2)
        blocks = []
        for kernel, exp, cout, se, hswish, stride in LARGE:
            cout = divisible(cout * width)
            blocks.append(InvertedResidual(cin, kernel, divisible(exp * width), cout, se, hswish, stride))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.output_dim = head_channels or 6 * cin
        self.head = conv_bn(cin, self.output_dim)
        self.stride = 2 * 2 ** sum(s == 2 for *_, s in LARGE)
        self.frame_rate_hz = self.input_rate_hz / self.stride

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, return_layers: bool = False
    ) -> EncoderOutput:
        mean, std = self.feature_stats
        x = ((features - mean) / std).transpose(1, 2).unsqueeze(1)  # (B, 1, mel, T)
        x = F.hardswish(self.stem(mask_time(x, lengths)))
        lengths = conv_lengths(lengths, 2)
        layers = []
        for block in self.blocks:
            x, lengths = block(x, lengths)
            if return_layers:
                layers.append(mask_time(x, lengths).mean(2).transpose(1, 2))
        x = F.hardswish(self.head(x))
        hidden = mask_time(x, lengths).mean(2).transpose(1, 2)  # average over frequency
        return EncoderOutput(hidden=hidden, lengths=lengths, layers=layers if return_layers else None)


#: width multipliers as EfficientAT's mn06 / mn10 / mn13 (encoder only, no classifier)
PRESETS: Dict[str, Dict[str, Any]] = {
    "mn-tiny": {"width": 0.6},
    "mn-small": {"width": 1.0},
    "mn-base": {"width": 1.3},
}


def build(**config: Any) -> MobileNetEncoder:
    return MobileNetEncoder(**config)
