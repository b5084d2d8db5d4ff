"""Mixup for CTC on log-mel fbank (``ctc.mixup``, MixSpeech: Meng et al., ICASSP 2021).

A share of the training utterances is replaced by a weighted sum of itself and another utterance of the
same batch, ``w * x_i + (1 - w) * x_j`` with ``w ~ Beta(ALPHA, ALPHA)``, and the CTC loss becomes the same
weighting of the loss against each transcript (``objectives/ctc.py``). For low-resource ASR it regularises
where SpecAugment leaves a model overconfident; here the hope is that two training speakers' words, heard
blended with other speakers' (and espeak voices'), stop being matched by voice. The two are aligned at
their first frame; past the shorter one's end the longer one's frames are kept as they are, so no frame is
pulled towards the padding value. On FSDD's folds MixSpeech's 15% was a tie (fold mean 21.6% -> 21.1%, three
seeds; nicolas better, george worse), so no recipe sets it.

It runs in the batch transform like ``ctc.tempo``: the budget pays for the frames the encoder sees, and
evaluation batches never get it. The pairing is written into the batch (``mix_partner``, ``mix_weight``)
for the loss.
"""

from __future__ import annotations

from typing import Dict

import torch

from .dataset import replace_frames

#: MixSpeech's Beta(0.5, 0.5): most mixes lean clearly to one side, a few are near even
ALPHA = 0.5


def mix_pairs(
    features: torch.Tensor, lengths: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each utterance ``i`` as ``weight[i] * x_i + (1 - weight[i]) * x_partner[i]`` over their common
    frames and the longer one's own frames after; lengths the longer of the two."""
    other, other_len = features[partner], lengths[partner]
    t = torch.arange(features.size(1))
    mine = t < lengths.unsqueeze(1)  # (B, T)
    theirs = t < other_len.unsqueeze(1)
    w = torch.where(mine & theirs, weight.unsqueeze(1), mine.to(weight.dtype)).unsqueeze(-1)
    mixed = torch.where((mine | theirs).unsqueeze(-1), w * features + (1 - w) * other, features)
    return mixed, torch.maximum(lengths, other_len)  # the padding keeps its value


class MixUp:
    """Batch transform: each utterance, with probability ``prob``, mixed with another utterance of the
    batch drawn uniformly. Draws from torch's RNG, which the trainer seeds and checkpoints."""

    def __init__(self, prob: float):
        self.prob, self.beta = prob, torch.distributions.Beta(ALPHA, ALPHA)

    def __call__(self, batch: Dict) -> Dict:
        x, lengths = batch["features"], batch["lengths"]
        b = x.size(0)
        partner, weight = torch.arange(b), torch.ones(b)
        if b >= 2 and self.prob > 0:
            chosen = torch.rand(b) < self.prob
            # a partner other than itself: shift by 1..b-1 places
            others = (torch.arange(b) + torch.randint(1, b, (b,))) % b
            drawn = self.beta.sample((b,))
            partner, weight = torch.where(chosen, others, partner), torch.where(chosen, drawn, weight)
            if bool(chosen.any()):
                batch = replace_frames(batch, *mix_pairs(x, lengths, partner, weight))
        batch["mix_partner"], batch["mix_weight"] = partner, weight
        return batch
