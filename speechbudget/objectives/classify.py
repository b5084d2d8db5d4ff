"""Clip classification: any encoder + pooling + a linear head, trained with cross-entropy or BCE.

Pooling turns the encoder's frames into one vector per clip:

* ``"cls"``: the encoder's CLS state (AuM: the middle of the sequence; AST: position 0, averaged
  with the distillation token when there is one, as AST's head does; BiMamba with
  ``cls_token=True``: frame 0). ``"auto"`` picks it whenever the encoder has one.
* ``"mean"``: the average over valid frames (the fallback of ``"auto"``), so Zipformer,
  Transformer or BiMamba encoders pretrained with HuBERT can be fine-tuned for classification.
* ``"attention"``: a learned softmax weighting of valid frames.

Single-label tasks use cross-entropy with label smoothing (or BCE on one-hot targets, as AuM/AST
train Speech Commands); multi-label tasks (AudioSet) use BCE on multi-hot targets. Training-time augmentation, as in AuM/AST: random time roll, SpecAugment masks,
mixup (features and targets mixed with the same weight). All of it is off in eval mode.

Batches are the trainer's dicts: ``features``, ``lengths`` and ``labels`` ((B,) class indices
for single-label, (B, C) multi-hot floats for multi-label; see ``data/labels.py``). ``forward``
returns ``(loss, stats)`` like :class:`~.ctc.CtcModel`.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpeechBudgetError
from ..models.base import Encoder, make_pad_mask
from .ctc import random_gain
from .param_groups import encoder_head_groups

POOLINGS = ("auto", "cls", "mean", "attention")


def encoder_cls_index(encoder: Encoder, lengths: torch.Tensor) -> Optional[torch.Tensor]:
    """(B,) position of the encoder's CLS state in its output, or None when it has none."""
    if callable(getattr(encoder, "cls_index", None)):
        return encoder.cls_index(lengths)
    if isinstance(getattr(encoder, "cls", None), nn.Parameter):  # BiMambaEncoder moves CLS to frame 0
        return torch.zeros_like(lengths)
    return None


def roll_valid(x: torch.Tensor, lengths: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Circularly shift each clip of ``x`` (B, T, F) by ``shifts[b]`` frames within its own length."""
    idx = torch.arange(x.size(1), device=x.device).unsqueeze(0)
    n = lengths.clamp(min=1).unsqueeze(1)
    src = torch.where(idx < n, (idx - shifts.unsqueeze(1)) % n, idx)
    return torch.gather(x, 1, src.unsqueeze(-1).expand_as(x))


def spec_augment(
    x: torch.Tensor, lengths: torch.Tensor, time_masks: int, time_width: int, freq_masks: int, freq_width: int
) -> torch.Tensor:
    """Zero random time spans and frequency bands (Park et al. 2019), per utterance."""
    x = x.clone()
    b, t, f = x.shape
    for i in range(b):
        n = int(lengths[i])
        for _ in range(freq_masks):
            w = int(torch.randint(0, freq_width + 1, ()))
            s = int(torch.randint(0, max(1, f - w), ()))
            x[i, :, s : s + w] = 0.0
        for _ in range(time_masks):
            w = min(int(torch.randint(0, time_width + 1, ())), n // 5)
            s = int(torch.randint(0, max(1, n - w), ()))
            x[i, s : s + w, :] = 0.0
    return x


class AttentionPool(nn.Module):
    """Softmax over valid frames of a learned score; the weighted mean of the frames."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, hidden: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(hidden).squeeze(-1).float().masked_fill(pad_mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # an empty clip pools to zeros
        return torch.einsum("bt,btd->bd", weights.to(hidden.dtype), hidden)


class ClassifierModel(nn.Module):
    """Encoder + pooling + linear head; ``forward(batch) -> (loss, stats)`` for the trainer,
    :meth:`logits`/:meth:`probabilities` for evaluation and prediction."""

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        multi_label: bool = False,
        pooling: str = "auto",
        label_smoothing: float = 0.0,
        spec_augment: bool = True,
        time_masks: int = 1,
        time_mask_width: int = 48,
        freq_masks: int = 1,
        freq_mask_width: int = 48,
        mixup: float = 0.0,
        mixup_alpha: float = 10.0,
        time_roll: bool = True,
        encoder_lr_scale: float = 1.0,
        dropout: float = 0.0,
        loss: Optional[str] = None,
        gain_db: float = 0.0,
    ):
        """``mixup``: probability that a batch is mixed; ``mixup_alpha``: Beta(a, a) of the weight
        (AuM/AST use 0.6 and 10 on Speech Commands). Mask widths are AuM's for 128 frames.
        ``loss``: ``"ce"`` (single-label default) or ``"bce"`` (multi-label; AuM/AST also train
        Speech Commands with BCE on one-hot targets)."""
        super().__init__()
        if num_classes < 2 and not multi_label:
            raise SpeechBudgetError(
                f"single-label classification needs at least 2 classes, got {num_classes}"
            )
        loss = loss or ("bce" if multi_label else "ce")
        if loss not in ("ce", "bce") or (multi_label and loss == "ce"):
            raise SpeechBudgetError(
                f"loss must be 'bce' for multi-label, 'ce' or 'bce' for single-label; got {loss!r}"
            )
        self.loss = loss
        if pooling not in POOLINGS:
            raise SpeechBudgetError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        has_cls = encoder_cls_index(encoder, torch.ones(1, dtype=torch.long)) is not None
        if pooling == "cls" and not has_cls:
            raise SpeechBudgetError(
                f"{type(encoder).__name__} has no CLS token; use pooling mean or attention"
            )
        self.pooling = ("cls" if has_cls else "mean") if pooling == "auto" else pooling
        self.encoder = encoder
        self.num_classes, self.multi_label, self.label_smoothing = num_classes, multi_label, label_smoothing
        self.attention = AttentionPool(encoder.output_dim) if self.pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.output_dim, num_classes)
        self.augment = spec_augment and encoder.input_dim > 1
        self.aug = dict(
            time_masks=time_masks,
            time_width=time_mask_width,
            freq_masks=freq_masks,
            freq_width=freq_mask_width,
        )
        self.mixup, self.mixup_alpha, self.time_roll = mixup, mixup_alpha, time_roll
        self.encoder_lr_scale = encoder_lr_scale
        self.gain_db = gain_db  # random gain per clip (an offset on log-mel), as CtcModel's
        self.freeze_encoder = False

    def optimizer_groups(self, lr: float):
        """The head at ``lr``, the encoder at ``lr * encoder_lr_scale`` (one plain group when equal)."""
        return encoder_head_groups(self, self.encoder, lr, self.encoder_lr_scale)

    def head_macs_per_frame(self) -> int:
        """Pooling work per encoder output frame (the trainer's convention); the linear head runs
        once per clip, see :meth:`head_macs_per_clip`."""
        dim = self.encoder.output_dim
        return {"cls": 0, "mean": dim, "attention": 2 * dim}[self.pooling]

    def head_macs_per_clip(self) -> int:
        return self.head.in_features * self.head.out_features

    def pool(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, D) frames -> (B, D) one vector per clip."""
        if self.pooling == "cls":
            rows = torch.arange(hidden.size(0), device=hidden.device)
            pooled = hidden[rows, encoder_cls_index(self.encoder, lengths)]
            dist = getattr(self.encoder, "dist_index", lambda _: None)(lengths)
            return pooled if dist is None else 0.5 * (pooled + hidden[rows, dist])
        pad_mask = make_pad_mask(lengths, hidden.size(1))
        if self.pooling == "attention":
            return self.attention(hidden, pad_mask)
        summed = hidden.masked_fill(pad_mask.unsqueeze(-1), 0.0).sum(1)
        return summed / lengths.clamp(min=1).unsqueeze(-1).to(hidden.dtype)

    @property
    def max_input_frames(self) -> Optional[int]:
        """The longest input the encoder takes (a patch encoder's learned positions); None: any."""
        return self.encoder.max_input_frames

    def logits(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, C) class scores before softmax/sigmoid (evaluation and prediction). A clip longer than
        :attr:`max_input_frames` is scored in windows of that length, their scores averaged."""
        return self._windowed(self._clip_logits, features, lengths)

    @torch.no_grad()
    def probabilities(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, C) softmax (single-label) or sigmoid (multi-label) scores, for evaluation and prediction;
        long clips: the mean of their windows' probabilities."""
        return self._windowed(self._clip_probabilities, features, lengths)

    def _clip_logits(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = self.encoder(features, lengths)
        return self.head(self.dropout(self.pool(out.hidden, out.lengths))).float()

    def _clip_probabilities(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        logits = self._clip_logits(features, lengths)
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def _windowed(self, score, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        limit = self.max_input_frames
        if limit is None or features.size(1) <= limit:
            return score(features, lengths)
        rows = []
        for x, n in zip(features, lengths.tolist()):
            windows = x[: max(n, 1)].split(limit)
            n_w = torch.tensor([w.size(0) for w in windows], device=lengths.device)
            batch = torch.nn.utils.rnn.pad_sequence(list(windows), batch_first=True)
            rows.append(score(batch, n_w).mean(0))
        return torch.stack(rows)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, C) float targets: one-hot (smoothed at loss time) or the multi-hot labels as given."""
        if self.multi_label:
            if labels.dim() != 2 or labels.size(1) != self.num_classes:
                raise SpeechBudgetError(f"multi-label batches need labels (B, {self.num_classes}) multi-hot")
            return labels.float()
        return F.one_hot(labels.long(), self.num_classes).float()

    def feature_fill(self) -> torch.Tensor:
        """The raw feature value that is "nothing": a patch encoder's dataset mean (it normalises
        inside), else 0. Masks and mixup work relative to it, as AuM/AST do on normalised features;
        a zero mask on raw log-mel would be a loud band, and mixing with zero padding would rescale."""
        mean = getattr(getattr(self.encoder, "patches", None), "feature_mean", None)
        return mean if torch.is_tensor(mean) else torch.zeros(())

    def augment_batch(self, x: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor):
        """Time roll, SpecAugment and mixup (training only)."""
        fill = self.feature_fill().to(x.device, x.dtype)
        x, lengths, target = self._augment(x - fill, lengths, target)
        return x + fill, lengths, target

    def _augment(self, x: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor):
        if self.time_roll:
            shifts = (torch.rand(x.size(0), device=x.device) * lengths.clamp(min=1)).long()
            x = roll_valid(x, lengths, shifts)
        if self.augment and self.gain_db > 0:
            x = random_gain(x, lengths, self.gain_db)
        if self.augment:
            x = spec_augment(x, lengths, **self.aug)
        if self.mixup > 0 and x.size(0) > 1 and float(torch.rand(())) < self.mixup:
            lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
            perm = torch.randperm(x.size(0), device=x.device)
            x = lam * x + (1 - lam) * x[perm]  # padding is zeros, so the longer clip's frames remain
            lengths = torch.maximum(lengths, lengths[perm])
            target = lam * target + (1 - lam) * target[perm]
        return x, lengths, target

    def loss_from_logits(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def forward(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        x, lengths = batch["features"], batch["lengths"]
        labels = batch["labels"].to(x.device)
        target = self.targets(labels)
        if self.training:
            x, lengths, target = self.augment_batch(x, lengths, target)
        if self.freeze_encoder:
            with torch.no_grad():
                out = self.encoder(x, lengths)
            hidden, out_lengths = out.hidden.detach(), out.lengths
        else:
            out = self.encoder(x, lengths)
            hidden, out_lengths = out.hidden, out.lengths
        logits = self.head(self.dropout(self.pool(hidden, out_lengths))).float()
        loss = self.loss_from_logits(logits, target)
        stats = {"loss": float(loss.detach()), "utterances": float(x.size(0))}
        if not self.multi_label:  # accuracy against the unmixed labels
            stats["accuracy"] = float((logits.argmax(-1) == labels).float().mean())
        return loss, stats


@torch.no_grad()
def collect_predictions(model: ClassifierModel, batches: Iterable[Dict], device="cpu") -> Dict:
    """Run ``model`` in eval mode over ``batches`` -> ``{"ids", "scores" (N, C), "labels"}`` as numpy
    (``labels`` only when the batches carry them), ready for ``evaluation.classification``."""
    was_training = model.training
    model.eval()
    ids: List[str] = []
    scores, labels = [], []
    try:
        for batch in batches:
            probs = model.probabilities(batch["features"].to(device), batch["lengths"].to(device))
            scores.append(probs.cpu())
            ids.extend(batch["ids"])
            if "labels" in batch:
                labels.append(batch["labels"].cpu())
    finally:
        model.train(was_training)
    out = {"ids": ids, "scores": torch.cat(scores).numpy() if scores else None}
    if labels:
        out["labels"] = torch.cat(labels).numpy()
    return out
