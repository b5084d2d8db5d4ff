"""One training loop for every stage (pretraining, fine-tuning): budget, resume, DDP, logging.

The model passed in is a task module: ``model(batch) -> (loss, stats)``. The trainer knows
nothing about HuBERT or CTC; it spends the budget, and makes sure a killed run resumes exactly
where it stopped (same batches, same random numbers, same counters).
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from .. import __version__, atomic, locks, progress
from ..config import TrainConfig, to_dict
from ..cost.flops import TRAIN_FACTOR, macs_rate, training_flops
from ..errors import SpeechBudgetError
from . import checkpoint as ckpt
from .budget import Budget, Counters
from .distributed import DistInfo, all_sum, barrier
from .metrics_log import FILE, read_metrics
from .optim import build_optimizer, build_scheduler
from .profiling import StepProfiler


def _git_commit() -> Optional[str]:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


#: batch statistics that count things (utterances, frames, clips): validation adds them up instead of
#: averaging them over batches ("39.91 utterances" was a mean count per batch); train-multi prefixes
#: them with the head's name (``hubert_frames``)
COUNT_STATS = (
    "utterances",
    "ctc_infeasible",
    "frames",
    "masked_frames",
    "teacher_clips",
    "no_teacher_clips",
    "pairs",
)


def is_count(stat: str) -> bool:
    return any(stat == c or stat.endswith("_" + c) for c in COUNT_STATS)


#: the keys that shape a run's trajectory: a resumed run must have the values it started with (budget,
#: dev_cuts, device and the logging/checkpoint keys may change: "train on for longer" is a resume)
TRAJECTORY_KEYS = (
    "max_duration",
    "num_buckets",
    "grad_accum",
    "seed",
    "amp",
    "train_hours",
    "train_speakers",
    "extra_train_cuts",
    "optim",
    "schedule",
    "hubert",
    "ctc",
    "task",
    "classify",
    "distill",
)


def check_trajectory(exp: Path, cfg: TrainConfig, saved: Dict[str, Any]) -> None:
    """A resumed run must have the trajectory values its checkpoint was trained with."""
    as_json = lambda x: json.loads(json.dumps(x, default=str))  # noqa: E731 (tuples and lists alike)
    changed = _differing_leaves(
        as_json({k: saved[k] for k in TRAJECTORY_KEYS if k in saved}), as_json(to_dict(cfg)), prefix=""
    )
    if changed:
        raise SpeechBudgetError(
            f"{exp} was trained with {'; '.join(changed[:3])}"
            f"{f' (and {len(changed) - 3} more)' if len(changed) > 3 else ''}: a resumed run would go on "
            "with the checkpoint's optimizer, schedule and data order; use another exp_dir, or the same "
            "values (only budget, dev_cuts and logging/checkpoint keys may change when resuming)"
        )


def check_resumable(cfg: TrainConfig) -> None:
    """Before a stage writes what its model needs into the exp_dir (tokenizer, speaker means, class
    list): a run there must be resumable with these values, or a refused re-run would already have
    overwritten the finished model's files."""
    path = ckpt.latest_checkpoint(Path(cfg.exp_dir) / "checkpoints")
    if path is not None:
        config = ckpt.load(path, mmap=True).get("config") or {}  # mapped: its tensors are not read here
        check_trajectory(Path(cfg.exp_dir), cfg, config)


def _differing_leaves(saved: Any, now: Any, prefix: str) -> list:
    """``key: saved -> now`` for every leaf the saved config has and the current one gives otherwise
    (a key the saved config lacks came after it was written: its default is what that run used)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for k in saved:
            out += _differing_leaves(saved[k], now.get(k), f"{prefix}{k}.") if k in now else []
        return out
    return [] if saved == now else [f"{prefix.rstrip('.')} {saved!r} (this run asks for {now!r})"]


def _name(spec: Any) -> str:
    return str(spec.get("preset") or spec) if isinstance(spec, dict) else str(spec)


def _paths(spec: str) -> list:
    """A comma-separated list of manifests, as absolute paths (the same files however written)."""
    return [str(Path(p.strip()).absolute()) for p in str(spec or "").split(",") if p.strip()]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def claim_exp_dir(exp_dir: Path) -> locks.FolderLock:
    """Before any work: the exp_dir and its checkpoints/ folder are writable (checked now, not at the
    first save hours later) and no other run writes into them (an exclusive lock, rank 0 only)."""
    lock = locks.lock_experiment(exp_dir)
    try:
        atomic.check_writable(Path(exp_dir) / "checkpoints", "checkpoint folder")
    except BaseException:
        lock.release()
        raise
    return lock


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        *,
        loader: torch.utils.data.DataLoader,
        sampler: Any,
        dist: DistInfo,
        cost: Dict[str, float],
        epoch_seconds: float,
        stage: str,
        recipe: Optional[Dict[str, Any]] = None,
        before_step: Optional[Callable[[nn.Module, Counters], None]] = None,
        find_unused_parameters: bool = False,
        valid_loader: Optional[torch.utils.data.DataLoader] = None,
        card_extra: Optional[Dict[str, Any]] = None,
        extra_flops: Optional[Callable[[Dict[str, Any]], float]] = None,
    ):
        """``cost``: ``macs_per_input_second`` of the encoder and ``head_macs_per_frame``, ``frame_rate_hz``
        and ``input_rate_hz``; ``epoch_seconds``: audio in one pass over the training set. ``recipe``
        is the recipe as the user wrote it (provenance, kept in the run card as is); facts about this
        run that later stages read (e.g. which checkpoint it started from) go in ``card_extra``.
        ``extra_flops(batch)``: training FLOPs of a batch that are not per second of audio (per-pair
        VGS heads and the image encoder), added to every micro-batch's charge."""
        self.cfg, self.dist, self.stage, self.recipe = cfg, dist, stage, recipe or {}
        self.exp_dir = Path(cfg.exp_dir)
        self.ckpt_dir = self.exp_dir / "checkpoints"
        self.budget = Budget(cfg.budget)
        self.cost, self.epoch_seconds = cost, epoch_seconds
        self.before_step, self.extra_flops = before_step, extra_flops
        self.valid_loader, self.card_extra = valid_loader, card_extra or {}
        self.loader, self.sampler = loader, sampler
        self.model = model.to(dist.device)
        self.ddp = (
            nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters,
            )
            if dist.enabled
            else self.model
        )
        o = cfg.optim
        extra = {"clipping_scale": o.clipping_scale} if o.name == "scaled_adam" else {}
        # a task module may ask for parameter groups with their own rates (CTC: head vs pretrained encoder)
        params = self.model.optimizer_groups(o.lr) if hasattr(self.model, "optimizer_groups") else self.model
        self.optimizer = build_optimizer(o.name, params, lr=o.lr, weight_decay=o.weight_decay, **extra)
        s = cfg.schedule
        sched_kw = (
            {"lr_batches": s.lr_batches, "lr_epochs": s.lr_epochs, "warmup_batches": s.warmup_batches}
            if s.name == "eden"
            else {
                "warmup_steps": s.warmup_batches,
                "total_steps": cfg.budget.steps or 1000,
                "min_lr_ratio": s.min_lr_ratio,
            }
        )
        if s.name == "step":  # AuM/AST: x decay per epoch from decay_start_epoch
            sched_kw = {
                "warmup_steps": s.warmup_batches,
                "decay_start_epoch": s.decay_start_epoch,
                "decay": s.decay,
            }
        self.scheduler = build_scheduler(s.name, self.optimizer, **sched_kw)
        self.counters = Counters()
        use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and dist.device.type == "cuda")
        self.autocast = (
            (lambda: torch.autocast(dist.device.type, dtype=torch.bfloat16))
            if use_bf16
            else contextlib.nullcontext
        )
        self.writer = None

    # ----------------------------------------------------------------------------- state
    def state(self) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": ckpt.rng_state(),
            "counters": self.counters.to_dict(),
            "config": to_dict(self.cfg),
            "stage": self.stage,
            "cost": self.cost,
        }

    def save(self) -> Path:
        path = self.ckpt_dir / f"checkpoint-{self.counters.step:08d}.pt"
        if self.dist.is_main:
            ckpt.atomic_save(self.state(), path)
            ckpt.prune(self.ckpt_dir, self.cfg.keep_last)
        barrier(self.dist)
        return path

    def resume(self) -> Optional[Path]:
        path = ckpt.latest_checkpoint(self.ckpt_dir)
        if path is None:
            return None
        state = ckpt.load(path)
        if state.get("stage") != self.stage:
            raise SpeechBudgetError(
                f"{path} belongs to stage {state.get('stage')!r}, not {self.stage!r}; "
                "use a separate exp_dir per stage"
            )
        self._check_same_run(state.get("config") or {})
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:  # shapes differ: another head size (clusters, vocabulary) or encoder kwargs
            raise SpeechBudgetError(
                f"{self.exp_dir} holds a model of another shape than this run builds (encoder, "
                "hubert.num_clusters or tokenizer changed): use another exp_dir or the same settings"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.counters = Counters(**state["counters"])
        ckpt.set_rng_state(state["rng"])
        return path

    def _check_same_run(self, saved: Dict[str, Any]) -> None:
        """Resuming continues one run: its encoder and its data must be this run's (another encoder
        fails on the weights, other cuts on the sampler position), said in one line."""
        exp, cfg = self.exp_dir, self.cfg
        if "encoder" in saved and saved["encoder"] != cfg.encoder:
            was, now = _name(saved["encoder"]), _name(cfg.encoder)
            if was == now:  # same preset, other keyword arguments (e.g. ctc.encoder_dropout)
                was, now = str(saved["encoder"]), str(cfg.encoder)
            raise SpeechBudgetError(
                f"{exp} was trained with encoder {was}; this run asks for {now}: "
                "use another exp_dir or the same encoder"
            )
        if "train_cuts" in saved and _paths(saved["train_cuts"]) != _paths(cfg.train_cuts):
            raise SpeechBudgetError(
                f"{exp} was trained on train_cuts {saved['train_cuts']}; this run asks for "
                f"{cfg.train_cuts}: use another exp_dir or the same train_cuts"
            )
        check_trajectory(exp, cfg, saved)

    # --------------------------------------------------------------------------- logging
    def _open_logs(self) -> None:
        if not self.dist.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.exp_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.exp_dir / FILE
        if metrics.exists():  # drop lines logged after the checkpoint we resumed from (and a torn one)
            keep = [r for r in read_metrics(self.exp_dir) if r.get("step", 0) <= self.counters.step]
            metrics.write_text("".join(json.dumps(r) + "\n" for r in keep))
        self.metrics = open(metrics, "a", encoding="utf-8")
        self.writer = SummaryWriter(str(self.exp_dir / "tensorboard"), purge_step=self.counters.step + 1)

    def _log(self, row: Dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "step":
                self.writer.add_scalar(f"{self.stage}/{k}", v, row["step"])

    def write_run_card(self, extra: Optional[Dict[str, Any]] = None) -> None:
        if not self.dist.is_main:
            return
        import lhotse

        card = {
            "stage": self.stage,
            "speechbudget": __version__,
            "git_commit": _git_commit(),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "lhotse": lhotse.__version__,
            },
            "device": {
                "type": self.dist.device.type,
                "name": device_name(self.dist.device),
                "world_size": self.dist.world_size,
                "cpu_threads": torch.get_num_threads(),  # intra-op threads this process trains with
            },
            "budget": {**to_dict(self.cfg.budget), "flops_limit": self.budget.flops},
            "cost": self.cost,
            "config": to_dict(self.cfg),
            "recipe": self.recipe,
            "params": sum(p.numel() for p in self.model.parameters()),
            **(extra or {}),
        }

        atomic.write_json(self.exp_dir / "run_card.json", card)

    def _check_budget_holds_a_step(self) -> None:
        """A FLOP limit below a tenth of one full batch is a typo (1e6 for 1e16), not a budget: training
        would take one step anyway (the limit is checked after each) and report 10,000% spent."""
        c, limit = self.cost, self.budget.flops
        if limit is None or "macs_per_input_second" not in c:
            return
        seconds = self.cfg.max_duration * self.cfg.grad_accum
        step = training_flops(
            seconds, c["macs_per_input_second"], c["head_macs_per_frame"], c["frame_rate_hz"]
        )
        if limit < 0.1 * step:
            raise SpeechBudgetError(
                f"the budget allows {limit:.3g} FLOPs, less than a tenth of one step (~{step:.3g} FLOPs for "
                f"{seconds:g} s of audio at max_duration {self.cfg.max_duration:g}); raise it, or lower max_duration"
            )

    # ------------------------------------------------------------------------------ loop
    def batch_flops(self, batch: Dict[str, Any]) -> float:
        """Training FLOPs of one micro-batch: padded input seconds x encoder cost + head per frame."""
        b, t = batch["features"].shape[:2]
        c = self.cost
        seconds = b * t / c["input_rate_hz"]
        # a classifier's linear head runs once per clip, forward + backward
        per_clip = 2.0 * TRAIN_FACTOR * b * c.get("head_macs_per_clip", 0.0)
        rate = macs_rate(c, t / c["input_rate_hz"])  # per second at this padded length
        flops = per_clip + training_flops(seconds, rate, c["head_macs_per_frame"], c["frame_rate_hz"])
        return flops + (self.extra_flops(batch) if self.extra_flops is not None else 0.0)

    def _to_device(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return {
            k: v.to(self.dist.device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }

    def _epoch(self) -> float:
        """Eden's epoch: passes over the data, or hours of audio processed (budget-driven runs)."""
        secs = self.counters.audio_seconds
        return (
            secs / 3600 if self.cfg.schedule.epoch_unit == "hours" else secs / max(self.epoch_seconds, 1e-9)
        )

    def _batches(self):
        """Endless stream of batches across epochs; the sampler remembers where it is."""
        while True:
            self.sampler.set_epoch(self.counters.epoch)
            got = False
            for batch in self.loader:
                got = True
                yield batch
            if not got and self.counters.batches == 0:
                raise SpeechBudgetError(
                    "the training cuts produced no batch (max_duration smaller than every cut?)"
                )
            self.counters.epoch += 1

    def fit(self) -> Dict[str, Any]:
        with claim_exp_dir(self.exp_dir):
            return self._fit()

    def _fit(self) -> Dict[str, Any]:
        resumed = self.resume()
        if self.budget.exhausted(self.counters):
            return self._already_done(resumed)
        if resumed is None:
            self._check_budget_holds_a_step()
        self._open_logs()
        self.write_run_card({**self.card_extra, "resumed_from": str(resumed) if resumed else None})
        stream = self._batches()
        last: Dict[str, float] = {}
        t_prev = time.time()
        profiler = StepProfiler(
            self.exp_dir, self.cfg.profile_steps if self.dist.is_main else 0, self.dist.device.type == "cuda"
        )
        with progress.make_progress(percent=True) as bar, contextlib.closing(profiler):
            task = bar.add_task(self.stage, total=1000, info="")
            bar.update(task, completed=min(1000, 1000 * self.budget.used(self.counters)))
            while not self.budget.exhausted(self.counters):
                stats = self.train_step(stream)
                profiler.step()
                now = time.time()
                self.counters.wall_seconds += now - t_prev
                t_prev = now
                if stats is not None:
                    last = stats
                c = self.counters
                if stats is not None and (c.step % self.cfg.log_every == 0 or self.budget.exhausted(c)):
                    self._log(
                        {
                            "step": c.step,
                            **stats,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "flops": c.flops,
                            "audio_hours": c.audio_seconds / 3600,
                            "epoch": self._epoch(),
                            "budget_used": self.budget.used(c),
                            "bad_steps": c.bad_steps,
                            "throughput_audio_s_per_s": c.audio_seconds / max(c.wall_seconds, 1e-9),
                        }
                    )
                if stats is not None and self.cfg.valid_every and c.step % self.cfg.valid_every == 0:
                    self._log({"step": c.step, **self.validate()})
                if c.step % self.cfg.checkpoint_every == 0 and stats is not None:
                    self.save()
                used = self.budget.used(c)
                bar.update(
                    task,
                    completed=min(1000, 1000 * used),
                    info=f"loss {last.get('loss', float('nan')):.3f} | {self.budget.binding(c)} {100 * used:.1f}% used",
                )
        final = self.save()
        valid = self.validate()
        if valid:
            self._log({"step": self.counters.step, **valid})
        averaged = self.average_checkpoints()
        return self.finish(self.summary(resumed, final=final, last=last, valid=valid, averaged=averaged))

    def _already_done(self, resumed: Optional[Path]) -> Dict[str, Any]:
        """A run whose budget was spent: what it reported when it ended. Nothing is rewritten, so
        re-running a finished command (a sweep, a pipeline) never loses its validation results."""
        path = self.exp_dir / "summary.json"
        stored = json.loads(path.read_text()) if path.is_file() else None
        valid = {} if stored and stored.get("valid") else self._logged_valid()
        if stored is None:  # killed between its last checkpoint and its summary
            stored = self.finish(self.summary(resumed, already_done=True, valid=valid))
        elif valid and self.dist.is_main:  # emptied by an older version: the log still has them
            stored["valid"] = valid
            atomic.write_json(path, stored)
        return {**stored, "already_done": True, "resumed_from": str(resumed) if resumed else None}

    def _logged_valid(self) -> Dict[str, float]:
        """The validation row logged at this run's last step (metrics.jsonl), if any."""
        valid = [
            r
            for r in read_metrics(self.exp_dir)
            if r.get("step") == self.counters.step and any(k.startswith("valid_") for k in r)
        ]
        return {k: v for k, v in valid[-1].items() if k.startswith("valid_")} if valid else {}

    def validate(self) -> Dict[str, float]:
        """Statistics over ``dev_cuts`` in eval mode, with fixed masks: comparable across runs. Rates and
        losses are means weighted by each batch's seconds; counts (:data:`COUNT_STATS`) are totals."""
        if self.valid_loader is None:
            return {}
        self.model.eval()
        rng = torch.get_rng_state()
        torch.manual_seed(self.cfg.seed + 12345)
        sums: Dict[str, float] = {}
        n = 0
        with torch.no_grad(), self.autocast():
            for batch in self.valid_loader:
                _, stats = self.model(self._to_device(batch))
                w = float(batch["seconds"])
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * (1.0 if is_count(k) else w)
                n += w
        torch.set_rng_state(rng)
        self.model.train()
        totals = {k: v if is_count(k) else v / n for k, v in sums.items()}
        return {f"valid_{k}": v for k, v in totals.items()} if n else {}

    def train_step(self, stream) -> Optional[Dict[str, float]]:
        """One optimizer step over ``grad_accum`` micro-batches; None when the step was skipped."""
        c = self.counters
        self.model.train()
        if self.before_step is not None:
            self.before_step(self.model, c)
        self.optimizer.zero_grad(set_to_none=True)
        totals: Dict[str, float] = {}
        flops = seconds = 0.0
        finite = True
        for i in range(self.cfg.grad_accum):
            batch = next(stream)
            torch.manual_seed(self.cfg.seed * 1_000_003 + c.batches * self.dist.world_size + self.dist.rank)
            batch = self._to_device(batch)
            sync = i == self.cfg.grad_accum - 1 or not self.dist.enabled
            ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()
            with ctx, self.autocast():
                loss, stats = self.ddp(batch)
            finite = finite and bool(torch.isfinite(loss.detach()))
            if finite:
                with ctx:
                    (loss / self.cfg.grad_accum).backward()
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v) / self.cfg.grad_accum
            flops += self.batch_flops(batch)
            seconds += batch["seconds"]
            c.batches += 1
        flops, seconds, bad = all_sum([flops, seconds, 0.0 if finite else 1.0], self.dist)
        c.flops += flops
        c.audio_seconds += seconds
        if bad > 0:
            c.bad_steps += 1
            c.bad_in_a_row += 1
            self.optimizer.zero_grad(set_to_none=True)
            if c.bad_in_a_row >= self.cfg.max_bad_steps:
                path = self.save()
                raise SpeechBudgetError(
                    f"{c.bad_in_a_row} non-finite losses in a row at step {c.step}; stopped with checkpoint {path}. "
                    "Lower optim.lr or check the data, then re-run to resume"
                )
            return None
        c.bad_in_a_row = 0
        if self.cfg.optim.name != "scaled_adam":
            totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0))
        self.optimizer.step()
        c.step += 1
        if self.cfg.budget.steps is None and hasattr(self.scheduler, "set_total_steps"):
            est = self.budget.estimated_steps(
                c
            )  # cosine needs a horizon; a FLOP budget gives it approximately
            if est:
                self.scheduler.set_total_steps(est)
        self.scheduler.step_batch(c.step)
        self.scheduler.step_epoch(self._epoch())
        if self.cfg.optim.name == "scaled_adam":
            gn = getattr(self.optimizer, "last_grad_norm", None)
            if gn is not None:
                totals["grad_norm"] = float(gn)
        return totals

    def summary(
        self,
        resumed: Optional[Path],
        final: Optional[Path] = None,
        last: Optional[Dict] = None,
        already_done: bool = False,
        valid: Optional[Dict] = None,
        averaged: Optional[Path] = None,
    ) -> Dict[str, Any]:
        """What the run did, as the CLI shows it and summary.json keeps it (no side effects)."""
        c = self.counters
        out = {
            "stage": self.stage,
            "exp_dir": str(self.exp_dir),
            "steps": c.step,
            "epochs": self._epoch(),
            "flops": c.flops,
            "flops_limit": self.budget.flops,
            "audio_hours": c.audio_seconds / 3600,
            "wall_seconds": c.wall_seconds,
            "bad_steps": c.bad_steps,
            "budget_used": self.budget.used(c),
            "binding_limit": self.budget.binding(c),
            "resumed_from": str(resumed) if resumed else None,
            "checkpoint": str(final or ckpt.latest_checkpoint(self.ckpt_dir)),
            "already_done": already_done,
            "final": last or {},
            "valid": valid or {},
        }
        if averaged is not None:
            out["averaged"] = str(averaged)
        return out

    def average_checkpoints(self) -> Optional[Path]:
        """``averaged.pt``: the mean of the last ``average_last`` checkpoints, when asked for."""
        if not self.dist.is_main or self.cfg.average_last <= 1:
            return None
        paths = ckpt.list_checkpoints(self.ckpt_dir)[-self.cfg.average_last :]
        path = self.exp_dir / ckpt.AVERAGED
        ckpt.save_average(paths, path)
        return path

    def finish(self, summary: Dict[str, Any]) -> Dict[str, Any]:
        """Write summary.json (the file `report` and `plan fit` read) and close the logs."""
        if self.dist.is_main:
            atomic.write_json(self.exp_dir / "summary.json", summary)
            if self.writer is not None:
                self.writer.close()
                self.metrics.close()
        return summary


def finetune_trainer(
    cfg: TrainConfig,
    model: nn.Module,
    *,
    loader: torch.utils.data.DataLoader,
    sampler: Any,
    dist: DistInfo,
    cost: Dict[str, float],
    labeled_seconds: float,
    recipe: Optional[Dict[str, Any]],
    freeze_encoder_steps: int,
    valid_loader: Optional[torch.utils.data.DataLoader],
    card_extra: Dict[str, Any],
) -> Trainer:
    """The fine-tuning stage's Trainer (CTC or classification): the task model's encoder is frozen
    for its first ``freeze_encoder_steps`` steps, and the run card records the labeled hours."""

    def before_step(m: nn.Module, counters: Counters) -> None:
        m.freeze_encoder = counters.step < freeze_encoder_steps

    return Trainer(
        cfg,
        model,
        loader=loader,
        sampler=sampler,
        dist=dist,
        cost=cost,
        epoch_seconds=labeled_seconds,
        stage="finetune",
        recipe=recipe,
        before_step=before_step,
        find_unused_parameters=freeze_encoder_steps > 0,
        valid_loader=valid_loader,
        card_extra={"labeled_hours": labeled_seconds / 3600, **card_extra},
    )
