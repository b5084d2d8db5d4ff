"""Speaker mean normalisation of log-mel features (``ctc.speaker_cmn``): each speaker's mean
log-mel, per bin, is replaced by the training set's.

A speaker's recording chain (level, microphone response, room) is a constant offset per bin in
log-mel that a model trained on two or three speakers learns as if it were speech. Over a whole
speaker the mean keeps no word (unlike one short utterance's mean, which ``utterance_cmn`` removes
with the word's own spectrum). Moving it onto the training mean, rather than to zero, keeps the
features in the range a pretrained front end has seen. Kaldi's per-speaker CMVN, means only.

Fine-tuning writes the training mean as ``speaker_cmn.json`` beside its checkpoints; ``decode``
finds it there and takes each speaker's mean from the cuts it decodes (unlabelled statistics of
the test speakers, as Kaldi's ``apply-cmvn --utt2spk`` does).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Iterable, Optional

import numpy as np
import torch
from lhotse.cut import Cut

from ..atomic import write_json
from ..errors import SpeechBudgetError
from .features import cut_fbank

log = logging.getLogger(__name__)

FILE = "speaker_cmn.json"
#: cuts without a speaker label share this one (the whole set's mean stands for their speaker)
UNKNOWN = "<unknown speaker>"


def cut_speaker(cut: Cut) -> str:
    sups = cut.supervisions
    return (sups[0].speaker if sups else None) or UNKNOWN


def speaker_means(cuts: Iterable[Cut]) -> Dict[str, np.ndarray]:
    """Mean log-mel per bin of each speaker's frames (80-bin fbank: stored, else computed)."""
    sums: Dict[str, np.ndarray] = {}
    counts: Dict[str, int] = {}
    for cut in cuts:
        feats = cut_fbank(cut)
        spk = cut_speaker(cut)
        sums[spk] = sums.get(spk, 0.0) + feats.sum(axis=0)
        counts[spk] = counts.get(spk, 0) + feats.shape[0]
    if not counts:
        raise SpeechBudgetError("no cuts to compute speaker means from (empty cut set)")
    if UNKNOWN in counts and len(counts) == 1:
        log.warning("speaker_cmn: no cut has a speaker label; the set's own mean stands for its speaker")
    return {spk: sums[spk] / max(counts[spk], 1) for spk in sums}


def pooled_mean(means: Dict[str, np.ndarray]) -> np.ndarray:
    """The target every speaker is moved onto: the mean of the speakers' means (each speaker
    counts once, however much they recorded)."""
    return np.mean(np.stack(list(means.values())), axis=0)


class SpeakerCmn:
    """Batch transform: ``features[i] += target - mean[speaker of cut i]`` over the real frames."""

    def __init__(self, target: np.ndarray, means: Dict[str, np.ndarray]):
        self.target = target
        self.shift = {spk: torch.from_numpy(target - m).float() for spk, m in means.items()}

    def __call__(self, batch: Dict) -> Dict:
        feats, lengths = batch["features"], batch["lengths"]
        for i, spk in enumerate(batch["speakers"]):
            shift = self.shift.get(spk)
            if shift is None:
                raise SpeechBudgetError(f"speaker_cmn: no mean for speaker {spk!r} (not in the cut set)")
            feats[i, : int(lengths[i])] += shift.to(feats.dtype)
        return batch


def for_cuts(target: np.ndarray, cuts: Iterable[Cut]) -> SpeakerCmn:
    """The transform that moves every speaker of ``cuts`` onto ``target``."""
    return SpeakerCmn(target, speaker_means(cuts))


def keep_target(exp_dir: Path, target: Optional[np.ndarray]) -> None:
    """Write the run's training mean for decoding; a run without speaker_cmn removes a stale one (a
    decode must never normalise what the model was trained on raw)."""
    out = Path(exp_dir) / FILE
    if target is None:
        out.unlink(missing_ok=True)
    else:
        write_json(out, {"num_mel_bins": int(target.shape[0]), "target_mean": [float(v) for v in target]})


def read_target(exp_dir: Path) -> Optional[np.ndarray]:
    """The training mean a run was fine-tuned with; None when it did not use speaker_cmn."""
    src = Path(exp_dir) / FILE
    if not src.is_file():
        return None
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
        target = np.asarray(data["target_mean"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as e:
        raise SpeechBudgetError(f"{src} is not a speaker_cmn file ({e}); re-run fine-tuning") from None
    return target
