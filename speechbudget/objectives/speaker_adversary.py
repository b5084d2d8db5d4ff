"""A speaker classifier the encoder learns to confuse: fine-tuning that unlearns who is speaking.

Fine-tuned on two real speakers, the CTC model hears a third speaker's words as other words (FSDD's
folds): it keys on what tells its training voices apart. Here a small classifier learns, from every
encoder frame (detached), which training speaker it is, while the encoder is trained, x ``weight``, to
leave that classifier at chance: its posterior pulled towards uniform (domain confusion, Tzeng et al.
2015; speaker-invariant training, Meng et al. 2018). Reversing the classifier's gradient instead
(Ganin & Lempitsky 2015) rewards confident mistakes without bound: on FSDD its loss grew to 256 and the
gradient norm to 1.3e4 within 1,130 steps. Training only; decoding never runs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpeechBudgetError
from ..models.base import make_pad_mask

__all__ = ["ADVERSARY_PREFIX", "SpeakerAdversary"]

#: where its parameters sit in a CTC model's state; decoding leaves them out
ADVERSARY_PREFIX = "adversary."
HIDDEN = 256


class SpeakerAdversary(nn.Module):
    def __init__(self, dim: int, speakers: Sequence[str], weight: float):
        super().__init__()
        names = sorted(set(speakers) - {""})  # a cut without a speaker label is no class
        if len(names) < 2:
            raise SpeechBudgetError(
                f"ctc.speaker_adversary needs at least two training speakers, the cuts have {len(names)}: "
                "label the cuts' speakers or turn it off"
            )
        self.index = {s: i for i, s in enumerate(names)}
        self.weight = weight
        self.net = nn.Sequential(nn.Linear(dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, len(names)))

    def macs_per_frame(self) -> int:
        """Two passes per frame: one that trains the classifier, one that trains the encoder."""
        return 2 * sum(m.in_features * m.out_features for m in self.net if isinstance(m, nn.Linear))

    def forward(
        self, hidden: torch.Tensor, lengths: torch.Tensor, speakers: Sequence[str]
    ) -> Tuple[torch.Tensor, torch.Tensor, float]:
        """Over the real frames of utterances by a training speaker: (the classifier's cross-entropy,
        which only the classifier learns from; KL(uniform || its posterior), which only the encoder
        learns from; the share of frames it names right)."""
        label = torch.tensor([self.index.get(s, -100) for s in speakers], device=hidden.device)
        labels = (
            label.unsqueeze(1)
            .expand(-1, hidden.size(1))
            .masked_fill(make_pad_mask(lengths.to(hidden.device), hidden.size(1)), -100)
        )
        known = labels >= 0
        if not bool(known.any()):
            zero = hidden.sum() * 0.0
            return zero, zero, 0.0
        frames, target = hidden[known], labels[known]
        logits = self.net(frames.detach()).float()
        ce = F.cross_entropy(logits, target)
        fixed = {name: p.detach() for name, p in self.net.named_parameters()}
        fooled = torch.func.functional_call(self.net, fixed, (frames,)).float().log_softmax(-1)
        confusion = -fooled.mean(-1).mean() - math.log(fooled.size(-1))
        accuracy = float((logits.argmax(-1) == target).float().mean())
        return ce, confusion, accuracy
