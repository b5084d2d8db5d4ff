"""Vocal tract length perturbation (VTLP; Jaitly and Hinton, 2013) on log-mel fbank.

Speakers' vocal tracts differ in length, which scales their formant frequencies by up to ~20%; two or
three training speakers show the model only a few of those scales, and a new speaker's "three" can
then sit where a training speaker's "eight" was. VTLP draws a warp factor per training utterance and
reads every mel bin from the frequency the warp maps it to: Kaldi's piecewise-linear VTLN warp
(``factor x f`` through the band, straight lines to the band's ends so nothing falls off it), with
linear interpolation between the two neighbouring bins of the log-mel. Unlike speed perturbation it
leaves duration and pitch alone.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import numpy as np
import torch
from lhotse.features.kaldi.layers import lin2mel, mel2lin

from .features import fbank_extractor

#: Kaldi's default VTLN cut-offs: the warp is linear between these (Hz; the upper one below Nyquist)
VTLN_LOW_HZ = 100.0
VTLN_HIGH_BELOW_NYQUIST_HZ = 500.0


class MelLayout(NamedTuple):
    """Where our fbank front end's mel bins sit (lhotse's Kaldi layout: evenly spaced in mel)."""

    centres: torch.Tensor  # (K,) bin centres, Hz
    first_mel: float  # the first centre, mel
    delta: float  # spacing of the centres, mel
    low: float  # band edges, Hz
    high: float
    cut_high: float  # VTLN's upper cut-off for factor 1, Hz


@cache
def _mel_layout(num_bins: int) -> MelLayout:
    cfg = fbank_extractor(num_bins).config
    nyquist = cfg.sampling_rate / 2
    high = cfg.high_freq + nyquist if cfg.high_freq <= 0 else cfg.high_freq
    mel_low, mel_high = float(lin2mel(cfg.low_freq)), float(lin2mel(high))
    delta = (mel_high - mel_low) / (num_bins + 1)
    centres = torch.from_numpy(mel2lin(mel_low + delta * np.arange(1, num_bins + 1, dtype=np.float64)))
    return MelLayout(
        centres, mel_low + delta, delta, float(cfg.low_freq), high, nyquist - VTLN_HIGH_BELOW_NYQUIST_HZ
    )


def source_freqs(layout: MelLayout, factor: torch.Tensor) -> torch.Tensor:
    """For each warp factor (B,) and bin centre (K,): the frequency the bin is read from, (B, K).

    ``factor x centre`` between the cut-offs, pinned to the band's ends outside them."""
    f, low, high = layout.centres.unsqueeze(0), layout.low, layout.high
    a = factor.double().unsqueeze(1)
    inv = 1.0 / a  # Kaldi's warp factor maps frequency by 1 / factor; ours reads at factor x f
    cut_low = VTLN_LOW_HZ * torch.clamp(inv, min=1.0)
    cut_high = layout.cut_high * torch.clamp(inv, max=1.0)
    mid = a * f
    left = low + (a * cut_low - low) / (cut_low - low) * (f - low)
    right = high + (high - a * cut_high) / (high - cut_high) * (f - high)
    return torch.where(f < cut_low, left, torch.where(f > cut_high, right, mid))


def warp(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """A (B, T, bins) log-mel batch with utterance b's frequency axis read at ``factor[b]`` x f."""
    k = x.size(2)
    layout = _mel_layout(k)
    src = source_freqs(layout, factor)
    pos = ((torch.from_numpy(lin2mel(src.numpy())) - layout.first_mel) / layout.delta).clamp(0, k - 1)
    i0 = pos.floor().long().clamp(max=k - 2)
    w = (pos - i0).to(x.dtype).to(x.device).unsqueeze(1)  # (B, 1, K)
    i0 = i0.to(x.device).unsqueeze(1).expand(-1, x.size(1), -1)
    return x.gather(2, i0) * (1 - w) + x.gather(2, i0 + 1) * w


def vtlp(x: torch.Tensor, max_warp: float) -> torch.Tensor:
    """Each utterance of a (B, T, bins) log-mel batch warped by a factor in [1 - max_warp, 1 + max_warp]."""
    if max_warp <= 0:
        return x
    return warp(x, 1.0 + (torch.rand(x.size(0)) * 2 - 1) * max_warp)
