"""Optimizers and learning-rate schedules of the trainer.

* :class:`ScaledAdam` (Zipformer paper, Yao et al. 2023, section 4): Adam whose update is scaled
  by each parameter's RMS, so ``lr`` is a *relative* change per step, plus an explicit update of
  each parameter's overall scale, and gradient clipping against the median recent gradient norm.
* :class:`Eden`: the schedule that goes with it; decays with both batches and epochs, where an
  "epoch" may be fractional (e.g. hours of audio processed), which is what a budgeted run needs.
* :class:`WarmupCosine`: linear warmup + cosine decay for AdamW baselines.

Both schedules expose ``step_batch(batch_idx)`` and ``step_epoch(epoch)`` so the trainer drives
them the same way. :func:`build_optimizer` and :func:`build_scheduler` map recipe names to them.
"""

from __future__ import annotations

import abc
import math
import statistics
from collections import deque
from typing import Any, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from ..config import OPTIMIZERS, SCHEDULES
from ..errors import SpeechBudgetError
from . import scaled_adam_cpu

__all__ = [
    "ScaledAdam",
    "Eden",
    "WarmupCosine",
    "build_optimizer",
    "build_scheduler",
    "OPTIMIZERS",
    "SCHEDULERS",
]

SCHEDULERS = SCHEDULES


# ------------------------------------------------------------------------------------ ScaledAdam
def _adam_direction(
    exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int, betas, eps: float
) -> torch.Tensor:
    """Bias-corrected ``m / (sqrt(v) + eps)``: a gradient direction of roughly unit size per element."""
    beta1, beta2 = betas
    m_hat = exp_avg / (1.0 - beta1**step)
    v_hat = exp_avg_sq / (1.0 - beta2**step)
    return m_hat / (v_hat.sqrt() + eps)


def _update_moments(state: Dict[str, Any], prefix: str, grad: torch.Tensor, betas) -> None:
    beta1, beta2 = betas
    state[prefix + "exp_avg"].mul_(beta1).add_(grad, alpha=1.0 - beta1)
    state[prefix + "exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)


def _scale_direction(
    group, moments: Dict[str, Any], h: torch.Tensor, rms: torch.Tensor, step: int
) -> torch.Tensor:
    """Adam's direction for the log-scale gradient ``h`` (its moments updated in ``moments``), pushed
    back (negative = grow) wherever ``rms`` is outside the group's bounds, whatever ``h`` says."""
    betas, eps = group["betas"], group["eps"]
    _update_moments(moments, "scale_", h, betas)
    d = _adam_direction(moments["scale_exp_avg"], moments["scale_exp_avg_sq"], step, betas, eps)
    d = torch.where(rms < group["param_min_rms"], -torch.ones_like(d), d)
    return torch.where(rms > group["param_max_rms"], torch.ones_like(d), d)


class ScaledAdam(torch.optim.Optimizer):
    """Adam with updates proportional to each parameter's RMS, and a learned parameter scale.

    For a tensor ``p`` with gradient ``g`` (after clipping) the step is::

        d  = m_hat / (sqrt(v_hat) + eps)                 # Adam direction of g
        s  = n_hat / (sqrt(w_hat) + eps)                 # Adam direction of h = sum(g * p)
        p <- p - lr * (rms(p) * d  +  scalar_lr_scale * s * p)

    The first term makes ``lr`` a relative change: a weight 10x larger moves 10x further, so one
    learning rate suits layers of very different scale. ``h`` is the gradient with respect to the
    log of ``p``'s overall scale, so the second term learns that scale directly (Adam on log-scale
    with rate ``lr * scalar_lr_scale``). The scale is kept in ``[param_min_rms, param_max_rms]``:
    outside it, the second term pushes back instead. ``rms(p)`` is clamped below at
    ``param_min_rms``, so a tensor initialised to zero starts moving by only ``lr * param_min_rms``
    per step: initialise biases small-random rather than zero where they matter.

    Tensors with a single element (learned scalars) get plain Adam with ``lr * scalar_lr_scale``.

    Clipping: the global gradient norm of each step is kept for the last
    ``clipping_update_period`` steps; once that window is full, a step whose norm exceeds
    ``clipping_scale`` x the window's median is scaled down to that threshold (``p.grad`` itself is
    left untouched). ``clipping_scale=None`` disables clipping. A step with a non-finite gradient
    norm is skipped. ``last_grad_norm``, ``num_clipped`` and ``num_skipped`` are for logging.

    ``size_update_period``: ``rms(p)`` changes slowly, so it is recomputed only every that many
    steps of the parameter (and cached in the state, so resuming is exact).

    ``fused`` (default): fp32 CPU tensors are updated by two compiled passes (:mod:`.scaled_adam_cpu`;
    same update, float rounding aside), everything else per tensor in PyTorch.
    """

    def __init__(
        self,
        params,
        lr: float,
        betas=(0.9, 0.98),
        scalar_lr_scale: float = 0.1,
        eps: float = 1e-8,
        param_min_rms: float = 1e-5,
        param_max_rms: float = 3.0,
        clipping_scale: Optional[float] = 2.0,
        clipping_update_period: int = 100,
        size_update_period: int = 4,
        fused: bool = True,
    ):
        _check(lr > 0, f"learning rate must be > 0, got {lr}")
        _check(all(0.0 <= b < 1.0 for b in betas), f"betas must be in [0, 1), got {tuple(betas)}")
        _check(
            0 < param_min_rms < param_max_rms,
            f"need 0 < param_min_rms < param_max_rms, got {param_min_rms}, {param_max_rms}",
        )
        _check(
            clipping_scale is None or clipping_scale > 0,
            f"clipping_scale must be > 0 (or None to disable), got {clipping_scale}",
        )
        _check(clipping_update_period >= 1, "clipping_update_period must be >= 1")
        _check(size_update_period >= 1, "size_update_period must be >= 1")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            scalar_lr_scale=scalar_lr_scale,
            eps=eps,
            param_min_rms=param_min_rms,
            param_max_rms=param_max_rms,
            size_update_period=size_update_period,
        )
        super().__init__(params, defaults)
        self.clipping_scale = clipping_scale
        self.fused = fused  # the compiled CPU passes for fp32 CPU tensors, when they can be built
        self.clipping_update_period = clipping_update_period
        self._norm_history: deque = deque(maxlen=clipping_update_period)
        self.last_grad_norm: float = 0.0
        self.num_clipped: int = 0
        self.num_skipped: int = 0

    # ---------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return loss
        factor = self._clip_factor(params)
        if factor is None:
            return loss
        lib = scaled_adam_cpu.load() if self.fused else None
        for group in self.param_groups:
            by_step: Dict[int, List[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("ScaledAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    self._init_state(p, state)
                state["step"] += 1
                if p.numel() == 1:
                    grad = p.grad if factor == 1.0 else p.grad * factor
                    p.add_(self._scalar_delta(group, state, grad))
                elif lib is None or not scaled_adam_cpu.supports([p]):
                    grad = p.grad if factor == 1.0 else p.grad * factor
                    p.add_(self._tensor_delta(group, p, state, grad))
                else:  # tensors frozen for a while (no grad) lag behind: one pass per step count
                    by_step.setdefault(state["step"], []).append(p)
            for step, tensors in by_step.items():
                self._fused_update(lib, group, step, tensors, factor)
        return loss

    def _clip_factor(self, params: List[torch.Tensor]) -> Optional[float]:
        """The factor to multiply this step's gradients by; None when the step must be skipped."""
        norms = torch.stack([p.grad.detach().float().norm() for p in params])
        norm = float(norms.norm())
        self.last_grad_norm = norm
        if not math.isfinite(norm):
            self.num_skipped += 1
            return None
        factor = 1.0
        full = len(self._norm_history) == self.clipping_update_period
        if self.clipping_scale is not None and full:
            threshold = self.clipping_scale * statistics.median(self._norm_history)
            if norm > threshold:
                factor = threshold / norm
                self.num_clipped += 1
        self._norm_history.append(norm)
        return factor

    @staticmethod
    def _init_state(p: torch.Tensor, state: Dict[str, Any]) -> None:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if p.numel() > 1:
            zero = torch.zeros((), dtype=p.dtype, device=p.device)
            state["param_rms"] = zero.clone()
            state["scale_exp_avg"] = zero.clone()
            state["scale_exp_avg_sq"] = zero.clone()

    @staticmethod
    def _scalar_delta(group, state, grad: torch.Tensor) -> torch.Tensor:
        _update_moments(state, "", grad, group["betas"])
        d = _adam_direction(
            state["exp_avg"], state["exp_avg_sq"], state["step"], group["betas"], group["eps"]
        )
        return -group["lr"] * group["scalar_lr_scale"] * d

    @staticmethod
    def _tensor_delta(group, p: torch.Tensor, state, grad: torch.Tensor) -> torch.Tensor:
        betas, eps, step = group["betas"], group["eps"], state["step"]
        min_rms = group["param_min_rms"]
        if (step - 1) % group["size_update_period"] == 0:
            state["param_rms"].copy_(p.pow(2).mean().sqrt())
        rms = state["param_rms"]

        _update_moments(state, "", grad, betas)
        direction = _adam_direction(state["exp_avg"], state["exp_avg_sq"], step, betas, eps)

        # Gradient with respect to the log of p's overall scale: d/dlog(c) L(c * p) = sum(g * p).
        scale_dir = _scale_direction(group, state, (grad * p).sum(), rms, step)

        lr = group["lr"]
        return -lr * (rms.clamp(min=min_rms) * direction + group["scalar_lr_scale"] * scale_dir * p)

    def _fused_update(self, lib, group, step: int, ps: List[torch.Tensor], factor: float) -> None:
        """:meth:`_tensor_delta` for all of ``ps`` at once (:mod:`.scaled_adam_cpu`): the same
        update, the per-element work in two compiled passes."""
        betas, eps, lr = group["betas"], group["eps"], group["lr"]
        states = [self.state[p] for p in ps]
        run = scaled_adam_cpu.Pass(
            lib,
            ps,
            [st["exp_avg"] for st in states],
            [st["exp_avg_sq"] for st in states],
            torch.get_num_threads(),
        )
        h, sum_sq = run.reduce(factor)
        if (step - 1) % group["size_update_period"] == 0:
            fresh = (sum_sq / run.numel).sqrt().float()
            torch._foreach_copy_([st["param_rms"] for st in states], list(fresh.unbind()))
        rms = torch.stack([st["param_rms"] for st in states])
        scale = {k: torch.stack([st[k] for st in states]) for k in ("scale_exp_avg", "scale_exp_avg_sq")}
        scale_dir = _scale_direction(group, scale, h.float(), rms, step)
        for k, moment in scale.items():
            torch._foreach_copy_([st[k] for st in states], list(moment.unbind()))
        a = -lr * rms.clamp(min=group["param_min_rms"])
        c = -lr * group["scalar_lr_scale"] * scale_dir
        run.update(a, c, factor, betas, 1.0 - betas[0] ** step, 1.0 - betas[1] ** step, eps)

    # ---------------------------------------------------------------------------- state dict
    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        sd["clipping"] = {
            "history": list(self._norm_history),
            "last_grad_norm": self.last_grad_norm,
            "num_clipped": self.num_clipped,
            "num_skipped": self.num_skipped,
        }
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if "clipping" not in state_dict:
            raise SpeechBudgetError(
                "optimizer state was not saved by ScaledAdam; resume with the "
                "optimizer the checkpoint was trained with"
            )
        state_dict = dict(state_dict)
        clipping = state_dict.pop("clipping")
        super().load_state_dict(state_dict)
        self._norm_history = deque(clipping["history"], maxlen=self.clipping_update_period)
        self.last_grad_norm = clipping["last_grad_norm"]
        self.num_clipped = clipping["num_clipped"]
        self.num_skipped = clipping["num_skipped"]


# ------------------------------------------------------------------------------------ schedules
class _Schedule(abc.ABC):
    """Sets each param group's ``lr`` to its initial lr x :meth:`factor` of (batch, epoch).

    Unlike torch's LRScheduler there is no ambiguous ``step()``: the trainer says which batch and
    epoch it is at, so resuming mid-epoch cannot shift the schedule.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.batch = 0
        self.epoch = 0.0
        self._apply()

    @abc.abstractmethod
    def factor(self) -> float:
        """Multiplier on the initial learning rate at the current (batch, epoch)."""

    def step_batch(self, batch_idx: Optional[int] = None) -> None:
        """Set the number of optimizer steps taken so far (or add one when ``batch_idx`` is None)."""
        batch_idx = self.batch + 1 if batch_idx is None else batch_idx
        if batch_idx < 0:
            raise ValueError(f"batch_idx must be >= 0, got {batch_idx}")
        self.batch = int(batch_idx)
        self._apply()

    def step_epoch(self, epoch: Optional[float] = None) -> None:
        """Set the amount of data consumed so far, in (possibly fractional) epochs."""
        epoch = self.epoch + 1 if epoch is None else epoch
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = float(epoch)
        self._apply()

    def get_last_lr(self) -> List[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def _apply(self) -> None:
        f = self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def state_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._apply()


class Eden(_Schedule):
    """Eden: ``lr = base_lr * ((b^2+B^2)/B^2)^-0.25 * ((e^2+E^2)/E^2)^-0.25 * warmup(b)``.

    ``b`` is the optimizer step (``step_batch``), ``e`` the data consumed so far (``step_epoch``);
    the rate is flat until ``b ~ B`` / ``e ~ E`` and then falls like ``b^-0.5`` / ``e^-0.5``.
    ``warmup(b)`` rises linearly from ``warmup_start`` to 1 over ``warmup_batches``.

    ``e`` may be fractional, and need not count epochs: a budgeted run can pass
    ``hours_processed / hours_per_epoch`` (epochs of its own data), or pass hours directly and
    express ``lr_epochs`` in hours, so the decay follows the audio seen rather than how many times
    a small corpus was looped. Call ``step_epoch`` as often as you like (e.g. every batch).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr_batches: float = 7500,
        lr_epochs: float = 10.5,
        warmup_batches: float = 500,
        warmup_start: float = 0.5,
    ):
        _check(lr_batches > 0, f"lr_batches must be > 0, got {lr_batches}")
        _check(lr_epochs > 0, f"lr_epochs must be > 0, got {lr_epochs}")
        _check(warmup_batches >= 0, f"warmup_batches must be >= 0, got {warmup_batches}")
        _check(0 <= warmup_start <= 1, f"warmup_start must be in [0, 1], got {warmup_start}")
        self.lr_batches = float(lr_batches)
        self.lr_epochs = float(lr_epochs)
        self.warmup_batches = float(warmup_batches)
        self.warmup_start = float(warmup_start)
        super().__init__(optimizer)

    def factor(self) -> float:
        b, e = self.batch, self.epoch
        B, E = self.lr_batches, self.lr_epochs
        batch_factor = ((b**2 + B**2) / B**2) ** -0.25
        epoch_factor = ((e**2 + E**2) / E**2) ** -0.25
        warmup = 1.0
        if b < self.warmup_batches:
            warmup = self.warmup_start + (1.0 - self.warmup_start) * b / self.warmup_batches
        return batch_factor * epoch_factor * warmup


class WarmupCosine(_Schedule):
    """Linear warmup to the base lr over ``warmup_steps``, then cosine decay to
    ``min_lr_ratio * base_lr`` at ``total_steps`` (held there after).

    ``total_steps`` can be revised with :meth:`set_total_steps`, because a FLOP or hours budget
    converts to steps only approximately until the run has measured its own throughput.
    ``step_epoch`` is accepted and ignored, so the trainer can drive any schedule alike.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
    ):
        _check(warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}")
        _check(0.0 <= min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        self.total_steps = self._valid_total(total_steps)
        super().__init__(optimizer)

    def _valid_total(self, total_steps: int) -> int:
        _check(
            total_steps > self.warmup_steps,
            f"total_steps ({total_steps}) must exceed warmup_steps ({self.warmup_steps}); "
            "lower the warmup or raise the budget",
        )
        return int(total_steps)

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = self._valid_total(total_steps)
        self._apply()

    def step_epoch(self, epoch: Optional[float] = None) -> None:
        """Recorded only: the cosine schedule depends on steps alone."""
        self.epoch = float(self.epoch + 1 if epoch is None else epoch)

    def factor(self) -> float:
        b = self.batch
        if b < self.warmup_steps:
            return (b + 1) / self.warmup_steps  # never 0: the first step is not wasted
        progress = min(1.0, (b - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


class WarmupStepDecay(_Schedule):
    """Linear warmup over ``warmup_steps``, then ``decay`` per completed epoch from
    ``decay_start_epoch`` on: AST's and AuM's Speech Commands schedule (lr x 0.85 after each epoch
    from epoch 5; their MultiStepLR with milestones 5, 6, ...). Epochs are the trainer's (fractional)
    passes over the data, so a resumed run decays exactly as an uninterrupted one."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 0,
        decay_start_epoch: int = 5,
        decay: float = 0.85,
    ):
        _check(warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}")
        _check(decay_start_epoch >= 1, f"decay_start_epoch must be >= 1, got {decay_start_epoch}")
        _check(0 < decay <= 1, f"decay must be in (0, 1], got {decay}")
        self.warmup_steps, self.decay_start_epoch, self.decay = (
            int(warmup_steps),
            int(decay_start_epoch),
            decay,
        )
        super().__init__(optimizer)

    def factor(self) -> float:
        warmup = min(1.0, (self.batch + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        decays = max(0, math.floor(self.epoch) - self.decay_start_epoch + 1)
        return warmup * self.decay**decays


# ------------------------------------------------------------------------------------ factories
_SCALED_ADAM_OPTIONS = (
    "betas",
    "scalar_lr_scale",
    "eps",
    "param_min_rms",
    "param_max_rms",
    "clipping_scale",
    "clipping_update_period",
    "size_update_period",
)
_ADAMW_OPTIONS = ("betas", "eps", "amsgrad", "foreach", "fused")
_SCHEDULE_OPTIONS = {
    "eden": ("lr_batches", "lr_epochs", "warmup_batches", "warmup_start"),
    "cosine": ("warmup_steps", "total_steps", "min_lr_ratio"),
    "step": ("warmup_steps", "decay_start_epoch", "decay"),
}


def build_optimizer(
    name: str, params: Union[nn.Module, Iterable], lr: float, weight_decay: float = 0.0, **kw
) -> torch.optim.Optimizer:
    """``scaled_adam`` or ``adamw`` over a model's trainable parameters (or given params/groups).

    AdamW decays only tensors with 2+ dims: decaying biases, norm gains and scalars pulls them
    towards 0, which is not a prior anyone wants. ScaledAdam takes no weight decay: its
    ``param_max_rms`` already bounds parameter size.
    """
    if name not in OPTIMIZERS:
        raise SpeechBudgetError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    _check(lr > 0, f"optim.lr must be > 0, got {lr}")
    _check(weight_decay >= 0, f"optim.weight_decay must be >= 0, got {weight_decay}")
    params = _trainable(params)
    if name == "scaled_adam":
        _check_options("scaled_adam", kw, _SCALED_ADAM_OPTIONS)
        _check(
            weight_decay == 0,
            "scaled_adam has no weight decay (param_max_rms bounds parameter "
            "size): set optim.weight_decay to 0 or use adamw",
        )
        return ScaledAdam(params, lr=lr, **kw)
    _check_options("adamw", kw, _ADAMW_OPTIONS)
    return torch.optim.AdamW(_decay_groups(params, weight_decay), lr=lr, **kw)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, **kw) -> _Schedule:
    """``eden`` (for ScaledAdam) or ``cosine`` (warmup + cosine, for AdamW)."""
    if name not in SCHEDULERS:
        raise SpeechBudgetError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    _check_options(name, kw, _SCHEDULE_OPTIONS[name])
    if name == "eden":
        return Eden(optimizer, **kw)
    if name == "step":
        return WarmupStepDecay(optimizer, **kw)
    if "total_steps" not in kw:
        raise SpeechBudgetError(
            "the cosine schedule needs total_steps (set a budget in steps, "
            "or one the trainer can convert to steps)"
        )
    return WarmupCosine(optimizer, **kw)


def _trainable(params: Union[nn.Module, Iterable]) -> list:
    if isinstance(params, nn.Module):
        params = [p for p in params.parameters() if p.requires_grad]
    params = list(params)
    if not params:
        raise SpeechBudgetError("nothing to optimize: the model has no trainable parameters")
    return params


def _decay_groups(params: list, weight_decay: float) -> list:
    """Split plain tensors into a decayed (ndim >= 2) and an undecayed group; pass groups through."""
    if isinstance(params[0], dict):
        return [{"weight_decay": weight_decay, **group} for group in params]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _check_options(name: str, kw: Dict[str, Any], valid) -> None:
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise SpeechBudgetError(
            f"unknown option(s) for {name}: {', '.join(unknown)}; valid: {', '.join(valid)}"
        )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SpeechBudgetError(message)
