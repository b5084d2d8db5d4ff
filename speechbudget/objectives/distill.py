"""Cross-model knowledge distillation (CMKD, as FastAST trains its merged AST from a CNN teacher).

Per clip: ``lambda * hard + (1 - lambda) * soft`` where ``hard`` is the usual loss against the labels
and ``soft`` the same loss against the teacher's soft targets: ``sigmoid(teacher / T)`` for BCE
(multi-label, or one-hot as AST trains Speech Commands), ``softmax(teacher / T)`` for CE. The
student's logits are divided by ``T`` too (the usual KD form; with FastAST's T = 1 it changes
nothing). A clip without teacher logits (``has_teacher`` False) gets its hard loss alone, with weight
1, so a partial teacher table never pulls those clips towards zero targets; the stats count them.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..errors import SpeechBudgetError


def per_clip_loss(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """(B,) loss of each clip against (B, C) float targets: mean BCE over classes, or soft-target CE."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
    if loss == "ce":
        return -(target * F.log_softmax(logits, dim=-1)).sum(-1)
    raise SpeechBudgetError(f"distillation loss must be 'bce' or 'ce', got {loss!r}")


def soft_targets(teacher_logits: torch.Tensor, loss: str, temperature: float = 1.0) -> torch.Tensor:
    scaled = teacher_logits.float() / temperature
    return torch.sigmoid(scaled) if loss == "bce" else torch.softmax(scaled, dim=-1)


def distillation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    teacher_logits: torch.Tensor,
    has_teacher: Optional[torch.Tensor] = None,
    loss: str = "bce",
    lam: float = 0.1,
    temperature: float = 1.0,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """CMKD loss of a batch -> (scalar loss, stats).

    ``logits`` (B, C) student scores; ``target`` (B, C) float label targets (one-hot, smoothed or
    multi-hot, as :meth:`ClassifierModel.targets` makes them); ``teacher_logits`` (B, C), any value
    where ``has_teacher`` (B,) is False.
    """
    if not 0.0 <= lam <= 1.0:
        raise SpeechBudgetError(f"distillation lambda must be in [0, 1], got {lam}")
    if not temperature > 0:
        raise SpeechBudgetError(f"distillation temperature must be positive, got {temperature}")
    if teacher_logits.shape != logits.shape:
        raise SpeechBudgetError(
            f"teacher logits {tuple(teacher_logits.shape)} do not match the student's {tuple(logits.shape)}:"
            " were they made for the same class list?"
        )
    logits = logits.float()
    if has_teacher is None:
        has_teacher = torch.ones(logits.size(0), dtype=torch.bool, device=logits.device)
    has_teacher = has_teacher.to(device=logits.device, dtype=torch.bool)
    hard = per_clip_loss(logits, target.float(), loss)
    teacher = torch.where(has_teacher[:, None], teacher_logits.float(), torch.zeros_like(logits))
    soft = per_clip_loss(logits / temperature, soft_targets(teacher, loss, temperature), loss)
    per_clip = torch.where(has_teacher, lam * hard + (1 - lam) * soft, hard)
    n_teacher = int(has_teacher.sum())
    stats = {
        "hard_loss": float(hard.detach().mean()),
        "soft_loss": float(soft.detach()[has_teacher].mean()) if n_teacher else 0.0,
        "teacher_clips": float(n_teacher),
        "no_teacher_clips": float(logits.size(0) - n_teacher),
    }
    return per_clip.mean(), stats
