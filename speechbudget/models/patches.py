"""Spectrogram patches: the front end of Audio Mamba (AuM) and the Audio Spectrogram Transformer (AST).

Input is a 128-bin log-mel fbank ``(B, T, F)``. It is normalised as both papers do,
``(x - mean) / (2 std)`` with one mean and std over a whole training set (see
``data/feature_stats.py``), then cut into 16 x 16 patches: stride 16 on both axes for AuM, an
overlapping stride 10 for AST. Each patch is projected to ``dim`` by one strided Conv2d.

Patches are ordered time-major (every frequency patch of time step 0, then time step 1, ...),
unlike the published code's frequency-major order, so that a short clip's patches are a prefix of
the sequence: padding stays at the end, which the masks, the bidirectional scan and pooling rely on.
A clip of ``n`` frames gets the fewest time patches that cover all its frames (at least one); the
frames past its end that the last patch overlaps are zeros (the normalised mean), whether they are
batch padding or not, so padding never changes what a real patch sees.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from ..errors import SpeechBudgetError
from .base import make_pad_mask


def time_patches(lengths, patch: int, stride: int):
    """Time patches needed to cover ``lengths`` frames (tensor or int): ``ceil((n - patch) / stride) + 1``,
    at least 1."""
    over = (lengths - patch).clamp(min=0) if torch.is_tensor(lengths) else max(lengths - patch, 0)
    return (over + stride - 1) // stride + 1


def sinusoidal_table(positions: int, dim: int) -> torch.Tensor:
    """The Transformer's sin/cos table ``(positions, dim)``."""
    pos = torch.arange(positions, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(positions, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class PatchEmbed(nn.Module):
    """(B, T, F) fbank -> (B, time_patches * freq_patches, dim) patch embeddings + position, and lengths.

    ``position`` is ``"learned"`` (a table over (time patch, frequency patch) up to ``max_frames``
    input frames, as AST/AuM) or ``"sinusoidal"`` (2-D sin/cos: half the channels for time, half for
    frequency; any length). ``feature_mean``/``feature_std`` are buffers, so a checkpoint carries
    the statistics it was trained with; leave them unset for features that are already normalised.
    """

    def __init__(
        self,
        dim: int,
        num_mel_bins: int = 128,
        patch: int = 16,
        stride: int = 16,
        freq_stride: Optional[int] = None,
        position: str = "learned",
        max_frames: int = 1024,
        feature_mean: Optional[float] = None,
        feature_std: Optional[float] = None,
    ):
        super().__init__()
        freq_stride = freq_stride or stride
        if num_mel_bins < patch:
            raise SpeechBudgetError(
                f"patches of {patch} bins need at least {patch} mel bins, got {num_mel_bins}"
            )
        if min(patch, stride, freq_stride) < 1 or stride > patch or freq_stride > patch:
            raise SpeechBudgetError(
                f"patch strides must be in 1..patch ({patch}); got {stride}, {freq_stride}"
            )
        if position not in ("learned", "sinusoidal"):
            raise SpeechBudgetError(f"unknown patch position {position!r}; choose 'learned' or 'sinusoidal'")
        if position == "sinusoidal" and dim % 4:
            raise SpeechBudgetError(f"sinusoidal 2-D positions need dim divisible by 4, got {dim}")
        self.dim, self.num_mel_bins, self.patch = dim, num_mel_bins, patch
        self.stride, self.freq_stride, self.position = stride, freq_stride, position
        self.freq_patches = (num_mel_bins - patch) // freq_stride + 1
        self.max_time_patches = time_patches(int(max_frames), patch, stride)
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=(stride, freq_stride))
        self.register_buffer("feature_mean", torch.tensor(0.0))
        self.register_buffer("feature_scale", torch.tensor(1.0))  # 1 / (2 std)
        if feature_mean is not None or feature_std is not None:
            self.set_feature_stats(feature_mean or 0.0, feature_std if feature_std is not None else 0.5)
        if position == "learned":
            self.pos = nn.Parameter(torch.randn(self.max_time_patches, self.freq_patches, dim) * 0.02)
        else:
            self.pos = None

    @torch.no_grad()
    def set_feature_stats(self, mean: float, std: float) -> None:
        if not std > 0:
            raise SpeechBudgetError(f"feature std must be positive, got {std}")
        self.feature_mean.fill_(float(mean))
        self.feature_scale.fill_(1.0 / (2.0 * float(std)))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return time_patches(lengths, self.patch, self.stride) * self.freq_patches

    @property
    def max_input_frames(self) -> Optional[int]:
        """The longest input learned positions reach (None: sinusoidal ones reach any length)."""
        if self.pos is None:
            return None
        return (self.max_time_patches - 1) * self.stride + self.patch

    def positions(self, n_time: int, device, dtype) -> torch.Tensor:
        """(n_time * freq_patches, dim) position embeddings in the time-major patch order."""
        if self.pos is not None:
            if n_time > self.max_time_patches:
                raise SpeechBudgetError(
                    f"input needs {n_time} time patches but learned positions stop at {self.max_time_patches}; "
                    "raise max_frames or use position: sinusoidal"
                )
            return self.pos[:n_time].reshape(-1, self.dim).to(dtype)
        half = self.dim // 2
        t = sinusoidal_table(n_time, half).to(device)
        f = sinusoidal_table(self.freq_patches, half).to(device)
        grid = torch.cat(
            [t[:, None, :].expand(-1, self.freq_patches, -1), f[None, :, :].expand(n_time, -1, -1)], dim=-1
        )
        return grid.reshape(-1, self.dim).to(dtype)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if features.dim() != 3 or features.size(-1) != self.num_mel_bins:
            raise SpeechBudgetError(
                f"patch front end expects fbank (B, T, {self.num_mel_bins}); got {tuple(features.shape)} "
                f"- prepare features with {self.num_mel_bins} mel bins"
            )
        n_time = time_patches(lengths, self.patch, self.stride)
        t_max = int(n_time.max()) if n_time.numel() else 1
        frames = (t_max - 1) * self.stride + self.patch
        x = (features - self.feature_mean) * self.feature_scale
        x = x[:, :frames].masked_fill(make_pad_mask(lengths, min(frames, x.size(1))).unsqueeze(-1), 0.0)
        x = nn.functional.pad(x, (0, 0, 0, frames - x.size(1)))
        x = self.proj(x.unsqueeze(1))  # (B, dim, time patches, freq patches)
        x = x.flatten(2).transpose(1, 2)  # time-major: index = t * freq_patches + f
        x = x + self.positions(t_max, x.device, x.dtype)
        out_lengths = n_time * self.freq_patches
        return x.masked_fill(make_pad_mask(out_lengths, x.size(1)).unsqueeze(-1), 0.0), out_lengths
