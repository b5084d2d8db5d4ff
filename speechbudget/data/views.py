"""Two views of every training utterance, for consistency-regularised CTC (``ctc.consistency``; CR-CTC:
Yao et al., ICLR 2025).

The batch is repeated once along the utterance axis: rows ``B..2B-1`` are copies of rows ``0..B-1``. The
model's own augmentation (gain, VTLP, SpecAugment; ``objectives/ctc.py``) then draws for each row
separately, so the two views of an utterance keep their frames' times (tempo, edge jitter and mixup run
before this, once per utterance) and differ in what was masked, warped or made louder; the loss asks the
two views' frame posteriors to agree. Here, in the batch transform, the budget pays for both views and
evaluation batches never get a second one.
"""

from __future__ import annotations

from typing import Dict

import torch

#: the batch key that tells the model its second half repeats its first
VIEWS = "views"


class TwoViews:
    """Batch transform: every per-utterance entry of the batch twice, the second copy after the first
    (a mixup partner index moved with its copy). ``seconds`` stays the audio read: an epoch (Eden's
    schedule counts them) is still one pass over the training set, while the FLOPs, counted on the
    batch the encoder runs, pay for both views."""

    def __call__(self, batch: Dict) -> Dict:
        b = batch["features"].size(0)
        out: Dict = {}
        for key, value in batch.items():
            if key == "mix_partner":
                out[key] = torch.cat([value, value + b])
            elif torch.is_tensor(value) and value.dim() > 0 and value.size(0) == b:
                out[key] = torch.cat([value, value])
            elif isinstance(value, list) and len(value) == b:
                out[key] = value + value
            else:
                out[key] = value
        out[VIEWS] = 2
        return out
