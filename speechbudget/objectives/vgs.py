"""Visually grounded speech (FaST-VGS+ coarse retrieval, as in Khorrami et al. 2023) for any encoder.

A caption's encoder frames are pooled (attention pooling or the mean over valid frames) and
projected; the image goes through an image encoder; both are L2-normalised and compared by
``scale x cosine``. The loss is a margin InfoNCE in both directions (speech->image and
image->speech): the positive logit is lowered by ``margin`` (1.0, as FaST-VGS+), and the batch's
other captions of the *same* image are masked out of the negatives, since they are not wrong answers.

``forward(batch) -> (loss, stats)`` has HubertModel's contract; the batch carries ``features``,
``lengths``, ``image_ids`` and ``images`` (B, 3, H, W) (or only ``image_ids`` with precomputed
image features).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpeechBudgetError
from ..models.base import Encoder, layer_widths, make_pad_mask
from ..models.image_encoder import PrecomputedImageFeatures

MARGIN = 1.0
NEG_INF = -1e9


def same_image_mask(image_ids: Optional[Sequence[str]], n: int, device=None) -> torch.Tensor:
    """(n, n) True where captions i and j describe the same image (the diagonal included)."""
    if image_ids is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    codes = {k: i for i, k in enumerate(dict.fromkeys(image_ids))}
    idx = torch.tensor([codes[k] for k in image_ids], device=device)
    return idx.unsqueeze(0) == idx.unsqueeze(1)


def margin_info_nce(
    speech: torch.Tensor,
    images: torch.Tensor,
    image_ids: Optional[Sequence[str]] = None,
    margin: float = MARGIN,
    scale: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pair losses ``(speech->image (B,), image->speech (B,))`` of row-aligned embeddings.

    ``S = scale * speech @ images.T`` (normalise first for cosine); pair i's positive logit is
    ``S_ii - margin``. Speech->image for caption i: cross-entropy over images j, with images j != i
    of the same image id left out. Image->speech for image i: over captions j, the same rule.
    """
    s = scale * speech @ images.t()
    n = s.size(0)
    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    duplicate = same_image_mask(image_ids, n, s.device) & ~eye
    logits = (s - margin * eye.to(s.dtype)).masked_fill(duplicate, NEG_INF)
    target = torch.arange(n, device=s.device)
    s2i = F.cross_entropy(logits, target, reduction="none")
    i2s = F.cross_entropy(logits.t(), target, reduction="none")
    return s2i, i2s


class AttentionPool(nn.Module):
    """Softmax over valid frames of a learned score, weighted sum: the pooled vector can attend to
    the frames that name things, unlike a mean."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        w = self.score(hidden).squeeze(-1).masked_fill(~valid, NEG_INF).softmax(-1)
        return (w.unsqueeze(-1) * hidden).sum(1)


def mean_pool(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    v = valid.unsqueeze(-1).to(hidden.dtype)
    return (hidden * v).sum(1) / v.sum(1).clamp(min=1.0)


def layer_dim(encoder: Encoder, layer: int) -> int:
    """Width of encoder layer ``layer`` (1-based; Zipformer stacks differ)."""
    widths = layer_widths(encoder)
    if not 1 <= layer <= len(widths):
        raise SpeechBudgetError(
            f"vgs layer must be between 1 and {len(widths)} for this encoder, got {layer}"
        )
    return widths[layer - 1]


class VGSModel(nn.Module):
    """Dual encoder: speech encoder + pooling + projection, image encoder + projection."""

    def __init__(
        self,
        encoder: Encoder,
        image_encoder: nn.Module,
        dim: int = 256,
        pooling: str = "attention",
        margin: float = MARGIN,
        temperature: float = 0.1,
        image_size: int = 64,
        layer: Optional[int] = None,
    ):
        """``layer`` (1-based): pool that encoder layer instead of the output, as the paper's VGS reads
        wav2vec2 layer 7 while the SSL loss reads the top."""
        super().__init__()
        if pooling not in ("attention", "mean"):
            raise ValueError(f"pooling must be attention or mean, got {pooling!r}")
        self.encoder, self.image_encoder, self.layer = encoder, image_encoder, layer
        speech_dim = encoder.output_dim if layer is None else layer_dim(encoder, layer)
        self.pool = AttentionPool(speech_dim) if pooling == "attention" else None
        self.speech_proj = nn.Linear(speech_dim, dim)
        self.image_proj = nn.Linear(image_encoder.output_dim, dim)
        self.margin, self.scale, self.image_size = margin, 1.0 / temperature, image_size

    def embed_speech(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, dim) unit vectors, one per caption."""
        out = self.encoder(features, lengths, return_layers=self.layer is not None)
        hidden = out.hidden if self.layer is None else out.layers[self.layer - 1]
        valid = ~make_pad_mask(out.lengths, hidden.size(1))
        pooled = self.pool(hidden, valid) if self.pool is not None else mean_pool(hidden, valid)
        return F.normalize(self.speech_proj(pooled), dim=-1)

    def embed_images(self, batch: Dict) -> torch.Tensor:
        """(B, dim) unit vectors from ``batch["images"]``, or ``batch["image_ids"]`` for precomputed features."""
        precomputed = isinstance(self.image_encoder, PrecomputedImageFeatures)
        x = batch["image_ids"] if precomputed else batch["images"]
        return F.normalize(self.image_proj(self.image_encoder(x)), dim=-1)

    def forward(self, batch: Dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        speech = self.embed_speech(batch["features"], batch["lengths"])
        images = self.embed_images(batch)
        ids = batch.get("image_ids")
        s2i, i2s = margin_info_nce(speech.float(), images.float(), ids, self.margin, self.scale)
        loss = 0.5 * (s2i.mean() + i2s.mean())
        with torch.no_grad():
            sim = speech @ images.t()
            same = same_image_mask(ids, sim.size(0), sim.device)
            s2i_hit = same[torch.arange(sim.size(0)), sim.argmax(1)].float().mean().item()
            # the loss of equal logits: each row sees its positive and the candidates left unmasked
            candidates = (~same).sum(1).float() + 1
            chance = (self.margin + torch.log(math.exp(-self.margin) + candidates - 1)).mean().item()
        n = sim.size(0)
        stats = {
            "loss": float(loss.detach()),
            "s2i_loss": float(s2i.mean().detach()),
            "i2s_loss": float(i2s.mean().detach()),
            "s2i_batch_r1": s2i_hit,
            "pairs": n,
            "chance_loss": chance,
        }
        return loss, stats

    def head_macs_per_frame(self) -> int:
        """Per speech output frame: the attention-pooling score (and weighted sum); 1 per dim for a mean."""
        d = self.speech_proj.in_features
        return 2 * d if self.pool is not None else d

    def macs_per_pair(self, batch_size: int) -> int:
        """Per caption-image pair, besides the speech encoder and the per-frame head: both projections,
        the image encoder and the pair's row of the similarity matrix."""
        d, e = self.speech_proj.in_features, self.speech_proj.out_features
        image = self.image_encoder.macs_per_image(self.image_size)
        return d * e + image + self.image_proj.in_features * e + batch_size * e

    def batch_training_flops(self, batch_size: int) -> float:
        """Training FLOPs of one batch that the trainer's per-second charge (encoder + per-frame head)
        leaves out: ``macs_per_pair`` for each pair, x2 FLOPs per MAC, x3 forward + backward."""
        return 6.0 * batch_size * self.macs_per_pair(batch_size)
