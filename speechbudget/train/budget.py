"""Budget accounting: what a training run has spent, and whether it must stop.

FLOPs come from the real batches: the encoder's forward multiply-adds per second of input
(fvcore, counted once per model) times the padded seconds in the batch, plus the objective
head per output frame, x2 for FLOPs per multiply-add and x3 for forward + backward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional

from ..config import BudgetConfig
from ..errors import SpeechBudgetError


@dataclass
class Counters:
    step: int = 0  # optimizer steps
    batches: int = 0  # micro-batches
    epoch: int = 0
    flops: float = 0.0
    audio_seconds: float = 0.0  # real (unpadded) audio processed
    wall_seconds: float = 0.0
    bad_steps: int = 0  # non-finite losses skipped, in total
    bad_in_a_row: int = 0

    def to_dict(self) -> Dict:
        return asdict(self)


def flops_limit(b: BudgetConfig) -> Optional[float]:
    """The FLOP limit implied by ``flops`` or ``gpu_hours`` (whichever is tighter)."""
    limits = []
    if b.flops is not None:
        limits.append(float(b.flops))
    if b.gpu_hours is not None:
        from ..cost.devices import gpu_hours_to_flops

        limits.append(gpu_hours_to_flops(b.gpu_hours, b.device, b.dtype, b.utilisation))
    return min(limits) if limits else None


def validate(b: BudgetConfig) -> None:
    given = {
        k: v
        for k, v in asdict(b).items()
        if k in ("flops", "gpu_hours", "wall_hours", "audio_hours", "steps") and v is not None
    }
    if not given:
        raise SpeechBudgetError(
            "the recipe sets no budget: give budget.flops, budget.gpu_hours, budget.wall_hours, "
            "budget.audio_hours or budget.steps"
        )
    for k, v in given.items():
        if v <= 0:
            raise SpeechBudgetError(f"budget.{k} must be positive (got {v})")


class Budget:
    def __init__(self, cfg: BudgetConfig):
        validate(cfg)
        self.cfg = cfg
        self.flops = flops_limit(cfg)

    def fractions(self, c: Counters) -> Dict[str, float]:
        """Share of each limit spent so far (1.0 = exhausted)."""
        out = {}
        if self.flops is not None:
            out["flops"] = c.flops / self.flops
        if self.cfg.wall_hours is not None:
            out["wall_hours"] = c.wall_seconds / 3600 / self.cfg.wall_hours
        if self.cfg.audio_hours is not None:
            out["audio_hours"] = c.audio_seconds / 3600 / self.cfg.audio_hours
        if self.cfg.steps is not None:
            out["steps"] = c.step / self.cfg.steps
        return out

    def used(self, c: Counters) -> float:
        return max(self.fractions(c).values())

    def exhausted(self, c: Counters) -> bool:
        return self.used(c) >= 1.0

    def binding(self, c: Counters) -> str:
        f = self.fractions(c)
        return max(f, key=f.get)

    def estimated_steps(self, c: Counters) -> Optional[int]:
        """Total optimizer steps this budget will allow, extrapolated from progress so far."""
        if c.step == 0:
            return self.cfg.steps
        used = self.used(c)
        return max(c.step, int(round(c.step / used))) if used > 0 else None
