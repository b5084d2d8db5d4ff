"""Cross-model knowledge distillation (CMKD, as FastAST trains its merged AST from a CNN teacher).

Per clip: ``lambda * hard + (1 - lambda) * soft`` where ``hard`` is the usual loss against the labels
and ``soft`` the same loss against the teacher's soft targets: ``sigmoid(teacher / T)`` for BCE
(multi-label, or one-hot as AST trains Speech Commands), ``softmax(teacher / T)`` for CE. The
student's logits are divided by ``T`` too (the usual KD form; with FastAST's T = 1 it changes
nothing). A clip without teacher logits (``has_teacher`` False) gets its hard loss alone, with weight
1, so a partial teacher table never pulls those clips towards zero targets; the stats count them.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpeechBudgetError
from .classify import ClassifierModel
from .teacher_logits import TeacherLogits


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


def check_settings(lam: float, temperature: float) -> None:
    if not 0.0 <= lam <= 1.0:
        raise SpeechBudgetError(f"distillation lambda must be in [0, 1], got {lam}")
    if not temperature > 0:
        raise SpeechBudgetError(f"distillation temperature must be positive, got {temperature}")


def weighted_distillation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    soft: torch.Tensor,
    weight: torch.Tensor,
    loss: str = "bce",
    lam: float = 0.1,
    temperature: float = 1.0,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The loss from soft targets already made: ``weight`` (B,) in [0, 1] is how much of each clip has
    a teacher (1 or 0; fractions after mixup mixes a clip with and one without)."""
    logits = logits.float()
    hard = per_clip_loss(logits, target.float(), loss)
    soft_loss = per_clip_loss(logits / temperature, soft.float(), loss)
    weight = weight.to(logits.dtype)
    per_clip = weight * (lam * hard + (1 - lam) * soft_loss) + (1 - weight) * hard
    n_teacher = float(weight.sum())
    stats = {
        "hard_loss": float(hard.detach().mean()),
        "soft_loss": float((soft_loss.detach() * weight).sum()) / n_teacher if n_teacher else 0.0,
        "teacher_clips": n_teacher,
        "no_teacher_clips": float(logits.size(0)) - n_teacher,
    }
    return per_clip.mean(), stats


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
    check_settings(lam, temperature)
    if teacher_logits.shape != logits.shape:
        raise SpeechBudgetError(
            f"teacher logits {tuple(teacher_logits.shape)} do not match the student's {tuple(logits.shape)}:"
            " were they made for the same class list?"
        )
    if has_teacher is None:
        has_teacher = torch.ones(logits.size(0), dtype=torch.bool, device=logits.device)
    has_teacher = has_teacher.to(device=logits.device, dtype=torch.bool)
    soft = torch.where(has_teacher[:, None], soft_targets(teacher_logits, loss, temperature), target.float())
    return weighted_distillation_loss(logits, target, soft, has_teacher.float(), loss, lam, temperature)


class DistillationModel(nn.Module):
    """A :class:`ClassifierModel` student trained with CMKD from a precomputed teacher table.

    ``forward(batch) -> (loss, stats)`` like the student's (batches need ``ids``); evaluation uses the
    student itself. Mixup mixes the teacher's soft targets and the teacher mask with the same pairs
    and weight as the labels, by mixing them as extra target columns.
    """

    def __init__(
        self, student: ClassifierModel, teacher: TeacherLogits, lam: float = 0.1, temperature: float = 1.0
    ):
        super().__init__()
        check_settings(lam, temperature)
        if len(teacher.classes) != student.num_classes:
            raise SpeechBudgetError(
                f"the teacher has {len(teacher.classes)} classes, the student {student.num_classes}: load the "
                "table with the student's class list"
            )
        self.student, self.teacher, self.lam, self.temperature = student, teacher, lam, temperature

    # the student is what is trained, saved and evaluated: its checkpoints are plain classifier ones
    @property
    def encoder(self) -> nn.Module:
        return self.student.encoder

    @property
    def freeze_encoder(self) -> bool:
        return self.student.freeze_encoder

    @freeze_encoder.setter
    def freeze_encoder(self, value: bool) -> None:
        self.student.freeze_encoder = value

    def state_dict(self, *args, **kwargs):
        return self.student.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.student.load_state_dict(state_dict, strict=strict, assign=assign)

    def optimizer_groups(self, lr: float):
        return self.student.optimizer_groups(lr)

    def head_macs_per_frame(self) -> int:
        return self.student.head_macs_per_frame()

    def forward(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, Dict[str, float]]:
        student = self.student
        x, lengths = batch["features"], batch["lengths"]
        labels = batch["labels"].to(x.device)
        target = student.targets(labels)
        if student.loss == "ce" and student.label_smoothing > 0:  # as the student's own cross-entropy
            target = target * (1 - student.label_smoothing) + student.label_smoothing / student.num_classes
        teacher_logits, has = self.teacher.lookup(batch["ids"])
        teacher_logits, has = teacher_logits.to(x.device), has.to(x.device)
        soft = torch.where(has[:, None], soft_targets(teacher_logits, student.loss, self.temperature), target)
        packed = torch.cat([target, soft, has[:, None].float()], dim=1)
        if self.training:
            x, lengths, packed = student.augment_batch(x, lengths, packed)
        c = student.num_classes
        target, soft, weight = packed[:, :c], packed[:, c : 2 * c], packed[:, 2 * c]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not student.freeze_encoder):
            out = student.encoder(x, lengths)
        logits = student.head(student.dropout(student.pool(out.hidden, out.lengths))).float()
        loss, stats = weighted_distillation_loss(
            logits, target, soft, weight, student.loss, self.lam, self.temperature
        )
        stats.update(loss=float(loss.detach()), utterances=float(x.size(0)))
        if not student.multi_label:
            stats["accuracy"] = float((logits.argmax(-1) == labels).float().mean())
        return loss, stats
