"""Tempo perturbation on log-mel fbank (``ctc.tempo``): speaking rate without pitch.

Speakers differ in rate far more than speed perturbation's 0.9-1.1 covers (FSDD's fastest speaker says
a digit in 0.35 s on average, its slowest in 0.53 s), and speed perturbation moves pitch and formants
with the rate. Stretching each training utterance's frames in time by its own factor (linear
interpolation between neighbouring frames) changes the rate alone, as sox's ``tempo`` does on audio
(lhotse's ``perturb_tempo`` needs torchaudio, which has no build for the torch this project pins).

It runs in the batch transform, before the trainer counts the batch: the budget pays for the frames
the encoder really sees, and ``seconds`` (the audio hours a run reports) is the stretched length.
Evaluation batches never get it (only fine-tuning's training dataset has the transform).
"""

from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F

from .dataset import repad, replace_frames


def stretch(features: torch.Tensor, lengths: torch.Tensor, factors: torch.Tensor):
    """Each utterance's first ``lengths[i]`` frames resampled to ``round(lengths[i] x factors[i])``
    (at least one); returns the re-padded (B, T', F) features and the new lengths."""
    out = []
    for i, n in enumerate(lengths.tolist()):
        m = max(1, round(n * float(factors[i])))
        u = features[i, :n].t().unsqueeze(0)  # (1, F, n): interpolate along time
        out.append(
            F.interpolate(u, size=m, mode="linear", align_corners=n > 1)[0].t() if m != n else features[i, :n]
        )
    padded, new = repad(out, features)
    return padded, new.to(lengths.dtype)


class TempoPerturb:
    """Batch transform: each utterance stretched by a factor drawn log-uniformly from
    [1 / (1 + width), 1 + width], so slower and faster are equally likely (width 0.3: 0.77-1.3).
    Draws from torch's RNG, which the trainer seeds and checkpoints."""

    def __init__(self, width: float):
        self.log_width = math.log1p(width)

    def __call__(self, batch: Dict) -> Dict:
        x, lengths = batch["features"], batch["lengths"]
        if x.size(0) == 0:
            return batch
        factors = torch.exp((torch.rand(x.size(0)) * 2 - 1) * self.log_width)
        return replace_frames(batch, *stretch(x, lengths, factors))
