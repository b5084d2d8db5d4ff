"""Audio augmentation for fine-tuning, all done by lhotse on the cuts: noise mixed at a chosen SNR,
speed perturbation, reverberation.

These change the audio, so the batches compute fbank on the fly with the same extractor as
``prepare``. Random choices come from torch's RNG, which the trainer seeds and checkpoints, so a
resumed run sees the same augmentation.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import soundfile as sf
import torch
from lhotse import CutSet, Recording, RecordingSet

from ..errors import SpeechBudgetError


def noise_cuts(noise_dir: Path, window: float = 10.0) -> CutSet:
    """Every wav/flac under ``noise_dir``, at 16 kHz, cut into ``window``-second pieces."""
    noise_dir = Path(noise_dir)
    if not noise_dir.is_dir():
        raise SpeechBudgetError(f"noise folder {noise_dir} does not exist (the recipe's noise_dir)")
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


def speed_perturbed(cuts: CutSet, factors: Sequence[float]) -> CutSet:
    """The training set as speed perturbation makes it: one copy per factor (lhotse
    ``perturb_speed``: resampled audio, durations / factor, ids suffixed ``_sp<factor>``; 1.0 is the
    set as recorded). Stored features do not match a perturbed copy, so every copy drops them and the
    batches compute fbank on the fly; the budget counts the copies' own durations."""
    base = cuts.drop_features()
    parts = [base if f == 1.0 else base.perturb_speed(f) for f in factors]
    return CutSet.from_cuts(c for part in parts for c in part).to_eager()


def simulated_rirs(count: int = 64, seed: int = 0, sampling_rate: int = 16000) -> List[Recording]:
    """Room impulse responses of the textbook exponential-decay model: a direct path, then Gaussian
    noise decaying by 60 dB over T60 (0.2-0.8 s), at a direct-to-reverberant ratio of -5 to 10 dB.

    lhotse's own simulator (``reverb_rir()`` without a recording) needs torchaudio, which has no build
    for the torch this project pins; the reverberation itself (convolution, level, length) is lhotse's.
    """
    rng = np.random.default_rng(seed)
    rirs = []
    for i in range(count):
        t60 = rng.uniform(0.2, 0.8)
        n = int(t60 * sampling_rate)
        tail = rng.standard_normal(n) * np.exp(-np.log(1000.0) * np.arange(n) / n)
        tail[0] = 0.0
        drr_db = rng.uniform(-5.0, 10.0)
        tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))  # tail energy relative to the direct path
        rir = tail.astype(np.float32)
        rir[0] = 1.0
        buf = io.BytesIO()
        sf.write(buf, rir, sampling_rate, format="WAV", subtype="FLOAT")
        rirs.append(Recording.from_bytes(buf.getvalue(), f"simulated-rir-{seed}-{i}"))
    return rirs


def rir_recordings(rir_dir: Path) -> List[Recording]:
    """Every .wav under ``rir_dir`` (measured room impulse responses), at 16 kHz."""
    rir_dir = Path(rir_dir)
    if not rir_dir.is_dir():
        raise SpeechBudgetError(f"RIR folder {rir_dir} does not exist (ctc.rir_dir)")
    recs = RecordingSet.from_dir(rir_dir, pattern="*.wav")
    if len(recs) == 0:
        raise SpeechBudgetError(f"no .wav impulse responses in {rir_dir} (ctc.rir_dir)")
    return [r.resample(16000) for r in recs]


class Reverb:
    """Callable on a batch CutSet: with probability ``prob`` a cut is reverberated (lhotse
    ``reverb_rir``: same length, same energy) with one RIR of the pool, chosen with torch's RNG,
    which the trainer seeds and checkpoints."""

    def __init__(self, prob: float, rir_dir: Optional[Path] = None, seed: int = 0):
        if not 0 < prob <= 1:
            raise SpeechBudgetError(f"ctc.reverb_prob must be in (0, 1] to reverberate (got {prob})")
        self.prob = prob
        self.rirs = rir_recordings(rir_dir) if rir_dir else simulated_rirs(seed=seed)

    def __call__(self, cuts: CutSet) -> CutSet:
        out = []
        for c in cuts:
            if float(torch.rand(())) < self.prob:
                rir = self.rirs[int(torch.randint(0, len(self.rirs), ()))]
                c = c.drop_features().reverb_rir(rir_recording=rir, affix_id=False)
            out.append(c)
        return CutSet.from_cuts(out)


class Chain:
    """Transforms one after the other, None ones skipped: cut transforms (reverberation before
    additive noise, as in a room) or batch transforms (speaker normalisation before tokenising)."""

    def __init__(self, *transforms: Optional[Callable[[Any], Any]]):
        self.transforms = [t for t in transforms if t is not None]

    def __call__(self, data: Any) -> Any:
        for t in self.transforms:
            data = t(data)
        return data
