"""Speaker mean normalisation of log-mel features (``ctc.speaker_cmn``): each speaker's mean
log-mel, per bin, is replaced by the training set's.

A speaker's recording chain (level, microphone response, room) is a constant offset per bin in
log-mel that a model trained on two or three speakers learns as if it were speech. Over a whole
speaker the mean keeps no word (unlike one short utterance's mean, which ``utterance_cmn`` removes
with the word's own spectrum). Moving it onto the training mean, rather than to zero, keeps the
features in the range a pretrained front end has seen. Kaldi's per-speaker CMVN: means only, or
with ``ctc.speaker_cvn`` each speaker's per-bin spread scaled onto the training speakers' too (a
recording chain that compresses a band, e.g. a noise floor that keeps it from ever going quiet).

Fine-tuning writes the training mean as ``speaker_cmn.json`` beside its checkpoints; ``decode``
finds it there and takes each speaker's mean from the cuts it decodes (unlabelled statistics of
the test speakers, as Kaldi's ``apply-cmvn --utt2spk`` does).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional

import numpy as np
import torch
from lhotse.cut import Cut

from ..atomic import write_json
from ..errors import SpeechBudgetError
from .features import NUM_MEL_BINS, cut_fbank

log = logging.getLogger(__name__)

FILE = "speaker_cmn.json"
#: cuts without a speaker label share this one (the whole set's mean stands for their speaker)
UNKNOWN = "<unknown speaker>"
#: the smallest per-bin std a speaker is divided by (nats): a bin that never moves is not blown up
STD_FLOOR = 0.1


def cut_speaker(cut: Cut) -> str:
    sups = cut.supervisions
    return (sups[0].speaker if sups else None) or UNKNOWN


@dataclass
class Moments:
    """Per-bin mean and standard deviation of log-mel frames: one speaker's, or the target every
    speaker is moved onto (whose ``std`` is None when only means are normalised)."""

    mean: np.ndarray
    std: Optional[np.ndarray] = None


def speaker_moments(cuts: Iterable[Cut], num_mel_bins: int = NUM_MEL_BINS) -> Dict[str, Moments]:
    """Per-bin mean and std of each speaker's frames, in the encoder's bin count (the stored 80-bin
    fbank when it has that many, else computed from the audio)."""
    sums: Dict[str, np.ndarray] = {}
    squares: Dict[str, np.ndarray] = {}
    counts: Dict[str, int] = {}
    for cut in cuts:
        feats = cut_fbank(cut, num_mel_bins)
        spk = cut_speaker(cut)
        sums[spk] = sums.get(spk, 0.0) + feats.sum(axis=0)
        squares[spk] = squares.get(spk, 0.0) + np.square(feats).sum(axis=0)
        counts[spk] = counts.get(spk, 0) + feats.shape[0]
    if not counts:
        raise SpeechBudgetError("no cuts to compute speaker means from (empty cut set)")
    if UNKNOWN in counts and len(counts) == 1:
        log.warning("speaker_cmn: no cut has a speaker label; the set's own mean stands for its speaker")
    out = {}
    for spk, n in counts.items():
        mean = sums[spk] / max(n, 1)
        out[spk] = Moments(mean, np.sqrt(np.maximum(squares[spk] / max(n, 1) - mean * mean, 0.0)))
    return out


def pooled(moments: Dict[str, Moments], norm_vars: bool = False) -> Moments:
    """The target every speaker is moved onto: the mean of the speakers' means (and stds, with
    ``norm_vars``); each speaker counts once, however much they recorded."""
    mean = np.mean(np.stack([m.mean for m in moments.values()]), axis=0)
    std = np.mean(np.stack([m.std for m in moments.values()]), axis=0) if norm_vars else None
    return Moments(mean, std)


class SpeakerCmn:
    """Batch transform over the real frames of cut i of speaker s: ``x + target.mean - mean[s]``, or
    with variances ``(x - mean[s]) * target.std / std[s] + target.mean``."""

    def __init__(self, target: Moments, moments: Dict[str, Moments]):
        self.target = target
        self.scale: Dict[str, Optional[torch.Tensor]] = {}
        self.shift: Dict[str, torch.Tensor] = {}
        for spk, m in moments.items():
            scale = None if target.std is None else target.std / np.maximum(m.std, STD_FLOOR)
            self.scale[spk] = None if scale is None else torch.from_numpy(scale).float()
            self.shift[spk] = torch.from_numpy(
                target.mean - m.mean * (1.0 if scale is None else scale)
            ).float()

    def __call__(self, batch: Dict) -> Dict:
        feats, lengths = batch["features"], batch["lengths"]
        for i, spk in enumerate(batch["speakers"]):
            shift = self.shift.get(spk)
            if shift is None:
                raise SpeechBudgetError(f"speaker_cmn: no mean for speaker {spk!r} (not in the cut set)")
            frames = feats[i, : int(lengths[i])]
            if self.scale[spk] is not None:
                frames *= self.scale[spk].to(feats.dtype)
            frames += shift.to(feats.dtype)
        return batch


def for_cuts(target: Moments, cuts: Iterable[Cut]) -> SpeakerCmn:
    """The transform that moves every speaker of ``cuts`` onto ``target``, in the target's bin count."""
    return SpeakerCmn(target, speaker_moments(cuts, int(target.mean.shape[0])))


def keep_target(exp_dir: Path, target: Optional[Moments]) -> None:
    """Write the run's training target for decoding; a run without speaker_cmn removes a stale one (a
    decode must never normalise what the model was trained on raw)."""
    out = Path(exp_dir) / FILE
    if target is None:
        out.unlink(missing_ok=True)
        return
    data = {"num_mel_bins": int(target.mean.shape[0]), "target_mean": [float(v) for v in target.mean]}
    if target.std is not None:
        data["target_std"] = [float(v) for v in target.std]
    write_json(out, data)


def read_target(exp_dir: Path) -> Optional[Moments]:
    """The target a run was fine-tuned with; None when it did not use speaker_cmn."""
    src = Path(exp_dir) / FILE
    if not src.is_file():
        return None
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
        mean = np.asarray(data["target_mean"], dtype=np.float64)
        std = np.asarray(data["target_std"], dtype=np.float64) if "target_std" in data else None
    except (ValueError, KeyError, TypeError) as e:
        raise SpeechBudgetError(f"{src} is not a speaker_cmn file ({e}); re-run fine-tuning") from None
    return Moments(mean, std)
