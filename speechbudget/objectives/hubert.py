"""HuBERT masked prediction (Hsu et al. 2021) as k2SSL trains it, for any speechbudget encoder.

Spans are chosen in encoder output frames (label rate) and masked in the encoder's *input*
with a learned mask vector, so every encoder family keeps the one interface (input masking is
also what BEST-RQ and MAE-AST do). The loss is cross-entropy over k-means cluster ids on masked
frames, with logits = cosine(projection(h), cluster embedding) / temperature.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data.vtlp import vtlp
from ..models.base import Encoder, make_pad_mask
from .masking import span_mask


def head_macs(encoder_dim: int, final_dim: int, num_clusters: int) -> int:
    """Multiply-adds of HuBERT's head per output frame: projection + cosine logits against every
    cluster embedding. The planner charges it before any model exists; the trainer after."""
    return encoder_dim * final_dim + final_dim * num_clusters


class HubertModel(nn.Module):
    def __init__(
        self,
        encoder: Encoder,
        num_clusters: int,
        mask_prob: float = 0.65,
        mask_length: int = 10,
        temperature: float = 0.1,
        final_dim: int = 256,
        unmasked_weight: float = 0.0,
        vtlp_warp: float = 0.0,
    ):
        super().__init__()
        self.encoder = encoder
        self.num_clusters = num_clusters
        self.mask_prob, self.mask_length = mask_prob, mask_length
        self.temperature, self.unmasked_weight = temperature, unmasked_weight
        self.vtlp_warp = vtlp_warp if encoder.input_dim > 1 else 0.0  # a log-mel warp: not for waveforms
        self.mask_embedding = nn.Parameter(torch.zeros(encoder.input_dim).uniform_(-0.1, 0.1))
        self.proj = nn.Linear(encoder.output_dim, final_dim)
        self.cluster_embeddings = nn.Parameter(torch.randn(num_clusters, final_dim) * 0.1)
        self.input_per_output = encoder.input_rate_hz / encoder.frame_rate_hz

    def head_macs_per_frame(self) -> int:
        """Multiply-adds of projection + cosine logits per output frame (for budget accounting)."""
        return head_macs(self.proj.in_features, self.proj.out_features, self.num_clusters)

    def mask_inputs(self, features: torch.Tensor, out_mask: torch.Tensor) -> torch.Tensor:
        """Replace input frames under masked output frames with the learned mask vector."""
        r = self.input_per_output
        t_in = features.size(1)
        # input frame j belongs to output frame floor(j / r)
        owner = (
            (torch.arange(t_in, device=features.device) / r).floor().long().clamp(max=out_mask.size(1) - 1)
        )
        in_mask = out_mask.to(features.device)[:, owner]
        return torch.where(in_mask.unsqueeze(-1), self.mask_embedding.to(features.dtype), features)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.proj(hidden), dim=-1)
        e = F.normalize(self.cluster_embeddings, dim=-1)
        return z @ e.t() / self.temperature

    def forward(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        features, lengths, labels = batch["features"], batch["lengths"], batch["kmeans"]
        t_out = labels.size(1)
        out_len_est = (
            torch.div(lengths.float(), self.input_per_output, rounding_mode="floor").long().clamp(max=t_out)
        )
        mask = span_mask(out_len_est.cpu(), t_out, self.mask_prob, self.mask_length)
        if self.training and self.vtlp_warp > 0:
            # the targets stay the unwarped audio's: another vocal tract length, the same units
            features = vtlp(features, self.vtlp_warp)
        out = self.encoder(self.mask_inputs(features, mask), lengths)
        t = min(out.hidden.size(1), t_out)
        hidden, labels, mask = out.hidden[:, :t], labels[:, :t], mask[:, :t].to(labels.device)
        valid = ~make_pad_mask(out.lengths, t) & (labels >= 0)
        logits = self.logits(hidden).float()
        ce = F.cross_entropy(
            logits.reshape(-1, self.num_clusters), labels.clamp(min=0).reshape(-1), reduction="none"
        ).view_as(labels)
        m, u = valid & mask, valid & ~mask
        n_m, n_u = int(m.sum()), int(u.sum())
        loss_m = (ce * m).sum() / max(n_m, 1)
        loss = loss_m
        if self.unmasked_weight > 0:
            loss = loss + self.unmasked_weight * (ce * u).sum() / max(n_u, 1)
        with torch.no_grad():
            pred = logits.argmax(-1)
            acc_m = ((pred == labels) & m).sum().item() / max(n_m, 1)
            acc_u = ((pred == labels) & u).sum().item() / max(n_u, 1)
        stats = {
            "loss": float(loss.detach()),
            "masked_loss": float(loss_m.detach()),
            "masked_acc": acc_m,
            "unmasked_acc": acc_u,
            "masked_frames": n_m,
            "chance_acc": 1.0 / self.num_clusters,
            "frames": int(valid.sum()),
        }
        return loss, stats

    @staticmethod
    def chance_loss(num_clusters: int) -> float:
        return math.log(num_clusters)
