"""Noise augmentation for fine-tuning: mix real noise into the audio at a chosen SNR.

Mixing happens on audio (lhotse ``Cut.mix``), so features are computed on the fly for those
batches with the same fbank extractor as ``prepare``. The choice of noise and offset comes from
torch's RNG, which the trainer seeds and checkpoints, so resumed runs see the same noise.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from lhotse import CutSet, RecordingSet

from ..errors import SpeechBudgetError


def noise_cuts(noise_dir: Path, window: float = 10.0) -> CutSet:
    """Every wav/flac under ``noise_dir``, at 16 kHz, cut into ``window``-second pieces."""
    noise_dir = Path(noise_dir)
    if not noise_dir.is_dir():
        raise SpeechBudgetError(f"noise folder {noise_dir} does not exist (ctc.noise_dir)")
    recs = RecordingSet.from_dir(noise_dir, pattern="*.wav")
    if len(recs) == 0:
        raise SpeechBudgetError(f"no .wav noise files in {noise_dir}")
    return CutSet.from_manifests(recordings=recs).resample(16000).cut_into_windows(window).to_eager()


class NoiseMixer:
    """Callable on a batch CutSet: with probability ``prob`` each cut gets noise at ``snr_db``."""

    def __init__(self, noise_dir: Path, snr_db: float, prob: float):
        if not 0 < prob <= 1:
            raise SpeechBudgetError(f"ctc.noise_prob must be in (0, 1] to mix noise (got {prob})")
        self.noise = noise_cuts(noise_dir)
        self.snr_db, self.prob = snr_db, prob

    def __call__(self, cuts: CutSet) -> CutSet:
        rng = random.Random(int(torch.randint(0, 2**31 - 1, ())))
        return cuts.mix(
            self.noise,
            snr=self.snr_db,
            mix_prob=self.prob,
            preserve_id="left",
            seed=rng,
            random_mix_offset=True,
        ).to_eager()
