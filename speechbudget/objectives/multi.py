"""Several objectives over one shared speech encoder: the weighted sum of their losses on one batch.

Every head exists in every phase (so a checkpoint of any phase loads into any other, and a carried
optimizer state matches the parameters); in training only the objectives with a positive weight
run. In eval mode all of them run, so validation after a VGS-only phase still measures the SSL loss
(the forgetting measure of Khorrami et al.).
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from ..models.base import Encoder


class MultiObjectiveModel(nn.Module):
    def __init__(self, encoder: Encoder, heads: Dict[str, nn.Module]):
        """``heads``: name -> task module whose ``encoder`` is ``encoder`` (``forward(batch) -> (loss, stats)``)."""
        super().__init__()
        self.encoder = encoder  # also under each head: ``encoder.*`` keys make it a pretraining checkpoint
        self.heads = nn.ModuleDict(heads)
        self.weights: Dict[str, float] = {k: 1.0 for k in heads}

    def set_weights(self, weights: Dict[str, float]) -> None:
        self.weights = {k: float(weights.get(k, 0.0)) for k in self.heads}

    def active(self) -> Dict[str, float]:
        return {k: w for k, w in self.weights.items() if w > 0}

    def forward(self, batch: Dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        total = None
        stats: Dict[str, float] = {}
        for name, head in self.heads.items():
            w = self.weights[name]
            if w <= 0 and self.training:
                continue
            loss, s = head(batch)
            stats.update({f"{name}_{k}": v for k, v in s.items()})
            if w > 0:
                total = w * loss if total is None else total + w * loss
        stats["loss"] = float(total.detach())
        return total, stats

    def head_macs_per_frame(self) -> float:
        """Per output frame, summed over the active heads."""
        return float(sum(self.heads[k].head_macs_per_frame() for k in self.active()))

    def encoder_passes(self) -> int:
        """Each active objective runs the encoder once (HuBERT on masked input, VGS on clean input)."""
        return len(self.active())

    def batch_extra_flops(self, batch: Dict) -> float:
        """Per-batch costs beyond the per-second charge: the VGS pairs, image encoder included."""
        if self.weights.get("vgs", 0) <= 0:
            return 0.0
        return float(self.heads["vgs"].batch_training_flops(int(batch["features"].size(0))))
