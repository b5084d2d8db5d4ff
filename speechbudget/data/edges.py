"""Edge jitter on log-mel fbank (``ctc.edge_jitter``): where a clip starts and ends around its word.

Corpora of isolated words are cut differently: FSDD's nicolas is cut within 2 ms of his words, jackson
keeps ~20 ms before and ~50 ms after, espeak-ng ends with 300 ms of silence. Fine-tuned on two speakers,
a model takes their margins for part of the words: giving george's dev clips 30 ms more of their own
quietest frame moved a fold model from 26.4% to 20.2% WER (BENCHMARKS.md section 4). So each end of each
training utterance moves by its own amount, drawn uniformly from [-S, +S] seconds: inward by cropping
(never below half the utterance), outward with silence as recorded in the same batch: frames at least
``SILENCE_DB`` under the loudest frame of their own utterance. Not the clip's own quietest frames: a
clip cut into its word has none that are silent (nicolas' quietest tenth is 11 dB under his peak,
george's 33), and padding with them lengthens the word.
Keyword spotting's random time shift (the Speech Commands recipes) is the same idea for fixed windows.
On FSDD's folds it was a tie (fold mean 20.4% -> 20.3%, five seeds), so no recipe sets it.

It runs in the batch transform like ``ctc.tempo``: the budget pays for the frames the encoder sees, and
evaluation batches never get it.
"""

from __future__ import annotations

import math
from typing import Dict

import torch

from .dataset import repad, replace_frames
from .features import FRAME_SHIFT

#: a frame this far (dB) under its utterance's loudest is silence: FSDD's margins sit ~30 dB under the word
SILENCE_DB = 25.0


def frame_db(utterance: torch.Tensor) -> torch.Tensor:
    """Each log-mel frame's energy in dB (the log of its summed mel energies, the last axis)."""
    return utterance.logsumexp(dim=-1) * (10 / math.log(10))


def silence_frames(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The batch's frames at least ``SILENCE_DB`` under the loudest frame of their own utterance; (0, F)
    when no utterance has any."""
    db = frame_db(features)  # (B, T), the padding masked out below
    real = torch.arange(features.size(1)) < lengths.unsqueeze(1)
    peak = db.masked_fill(~real, -math.inf).amax(dim=1, keepdim=True)
    return features[real & (db <= peak - SILENCE_DB)]


def move_edges(utterance: torch.Tensor, left: int, right: int, silence: torch.Tensor) -> torch.Tensor:
    """``left`` / ``right`` frames added (> 0, drawn from ``silence``; none when it is empty) or cropped
    (< 0) at each end; cropping keeps at least half of the utterance (and one frame)."""
    n = utterance.size(0)
    keep = max(1, n // 2)
    crop_left = min(max(-left, 0), n - keep)
    crop_right = min(max(-right, 0), n - keep - crop_left)
    core = utterance[crop_left : n - crop_right]
    if silence.size(0) == 0:
        return core
    pad = [silence[torch.randint(silence.size(0), (max(m, 0),))] for m in (left, right)]
    return torch.cat([pad[0], core, pad[1]])


class EdgeJitter:
    """Batch transform: each end of each utterance moved by a whole number of frames drawn uniformly
    from [-S, S] seconds. Draws from torch's RNG, which the trainer seeds and checkpoints."""

    def __init__(self, seconds: float):
        self.frames = round(seconds / FRAME_SHIFT)

    def __call__(self, batch: Dict) -> Dict:
        x, lengths = batch["features"], batch["lengths"]
        if x.size(0) == 0 or self.frames == 0:
            return batch
        moves = torch.randint(-self.frames, self.frames + 1, (x.size(0), 2))
        silence = silence_frames(x, lengths)
        out = [
            move_edges(x[i, :n], int(moves[i, 0]), int(moves[i, 1]), silence)
            for i, n in enumerate(lengths.tolist())
        ]
        return replace_frames(batch, *repad(out, x))
