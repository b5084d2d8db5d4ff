"""The compute-budget planner: which encoder to pretrain, on how many hours of audio.

For each candidate (a family's presets plus a width x depth grid of config dicts) we count the
training FLOPs one hour of audio costs it: 3 x (encoder forward + HuBERT head), counted exactly as
the trainer accounts a run. The budget then buys a number of audio hours, those hours are a number
of epochs over the user's data, and the scaling law (scaling.py; repeats discounted) predicts the
pretraining loss. The lowest predicted loss wins, and becomes a ready recipe.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic import check_output_file, write_png
from ..cost.devices import (
    default_dtype,
    get_device,
    measure_cpu_peak,
    normalise_dtype,
)
from ..errors import OptionError, SpeechBudgetError
from . import calibrate
from .costs import DEFAULT_CLUSTERS, CandidateCost, count_configs, jsonable_config, make_candidate
from .scaling import DEFAULT_LAW, ScalingLaw, SizeInterval, best_size_interval, optimal_allocation

UNITS = ("flops", "gpu-hours", "hours")
GRIDS = ("none", "small", "full")
MIN_AUDIO_HOURS = 0.01  # below this a pilot learns nothing and the law has no meaning
#: Liu et al. (arXiv 2409.16295) find that looping many epochs over limited data hurts SSL
EPOCH_WARNING = 4.0
#: hours no corpus has: all public speech together is well under this; a budget that buys more is a typo
ANY_DATA_HOURS = 1e7
#: max_duration (seconds of audio per batch) written into the recipe: the trainer's default on a
#: CPU; on a GPU k2SSL's 87.5 s x 4 accumulation steps per device
MAX_DURATION = {"cpu": 60.0, "gpu": 350.0}
#: icefall's ratios (zipformer: lr_epochs 3.5 of 30 epochs, lr_batches 7500 of ~26k steps,
#: warmup 500): Eden's decay starts a tenth into the data and 30% into the steps
LR_EPOCHS_FRACTION, LR_BATCHES_FRACTION, WARMUP_FRACTION = 0.1, 0.3, 0.02


# ------------------------------------------------------------------------------------ the grid
def _round16(x: float) -> int:
    return max(32, 16 * round(x / 16))


def _zipformer_config(width: int, depth: int) -> Dict[str, Any]:
    """k2SSL Base's shape (relative stack widths, feed-forward ratios, heads) scaled to a
    widest stack of ``width``, with ``depth`` layers in every one of the six stacks."""
    from ..models.zipformer import PRESETS

    base = jsonable_config(PRESETS["zipformer-base"])
    top = max(base["dims"])
    dims = [_round16(width * d / top) for d in base["dims"]]
    ff = [_round16(d * f / bd) for d, f, bd in zip(dims, base["feedforward_dims"], base["dims"])]
    return {
        "family": "zipformer",
        **base,
        "num_layers": [depth] * len(dims),
        "dims": dims,
        "feedforward_dims": ff,
    }


def _transformer_config(width: int, depth: int) -> Dict[str, Any]:
    return {
        "family": "transformer",
        "dim": width,
        "layers": depth,
        "heads": max(1, width // 64),
        "ffn_dim": 4 * width,
        "norm_first": True,
    }


def _bimamba_config(width: int, depth: int) -> Dict[str, Any]:
    return {"family": "bimamba", "dim": width, "layers": depth}


@dataclass(frozen=True)
class GridSpec:
    make: Callable[[int, int], Dict[str, Any]]  # (width, depth) -> config dict
    widths: Dict[str, Tuple[int, ...]]
    depths: Dict[str, Tuple[int, ...]]  # depth units: layers per stack (zipformer) or layers


# Narrow + deep ("slim", which Liu et al. find best at equal compute) to wide + shallow.
GRIDS_BY_FAMILY = {
    "zipformer": GridSpec(
        _zipformer_config,
        {"small": (192, 512), "full": (128, 192, 256, 384, 512, 768, 1024)},
        {"small": (1, 2, 4), "full": (1, 2, 3, 4, 6)},
    ),
    "transformer": GridSpec(
        _transformer_config,
        {"small": (192, 512), "full": (128, 192, 256, 384, 512, 768, 1024)},
        {"small": (2, 6, 18), "full": (1, 2, 4, 6, 8, 12, 18, 24)},
    ),
    "bimamba": GridSpec(
        _bimamba_config,
        {"small": (128, 384), "full": (128, 192, 256, 384, 512, 768)},
        {"small": (4, 12, 24), "full": (2, 4, 8, 12, 24, 36)},
    ),
}


def grid_configs(family: str, size: str) -> List[Tuple[int, int, Dict[str, Any]]]:
    """``(width, depth, config)`` of a family's grid ("none", "small" or "full")."""
    if size not in GRIDS:
        raise SpeechBudgetError(f"unknown grid {size!r}; choose one of {', '.join(GRIDS)}")
    if size == "none":
        return []
    grid = GRIDS_BY_FAMILY[family]
    return [(w, d, grid.make(w, d)) for w in grid.widths[size] for d in grid.depths[size]]


def _linear(one: Dict[str, float], two: Dict[str, float], depth: int, key: str) -> float:
    """``key`` at ``depth`` on the line through its values at depths 1 and 2."""
    return one[key] + (depth - 1) * (two[key] - one[key])


def _grid_candidates(
    family: str, size: str, shallow: Dict[Tuple[int, int], Dict[str, float]]
) -> List[CandidateCost]:
    """Grid candidates from the counts at depths 1 and 2 of each width.

    The layers of a stack are identical, so cost and parameters are exactly linear in the depth
    unit: two shallow traces give every deeper config of that width for free.
    """
    out = []
    for width, depth, cfg in grid_configs(family, size):
        one, two = shallow[(width, 1)], shallow[(width, 2)]
        counted = {
            **one,
            "params": round(_linear(one, two, depth, "params")),
            "macs_per_audio_second": _linear(one, two, depth, "macs_per_audio_second"),
        }
        out.append(make_candidate(cfg, cfg, counted, "grid"))
    return out


#: encoder families with token merging (``tome``); a frame-level loss (HuBERT) needs ``unmerge``
TOME_FAMILIES = ("transformer", "ast")


def tome_variants(
    names: Sequence[str], cfgs: Sequence[Dict[str, Any]], rs: Sequence[int]
) -> List[Tuple[str, Dict[str, Any]]]:
    """``(name+tomeR, config)`` for each Transformer-family preset and r > 0."""
    if any(not isinstance(r, int) or r < 0 for r in rs):
        raise SpeechBudgetError(f"tome r values must be non-negative integers, got {list(rs)}")
    out = []
    for name, cfg in zip(names, cfgs):
        if cfg["family"] not in TOME_FAMILIES:
            continue
        for r in (r for r in dict.fromkeys(rs) if r > 0):
            spec = {"r": r, "unmerge": cfg["family"] == "transformer"}
            out.append((f"{name}+tome{r}", {**cfg, "tome": spec}))
    return out


def candidate_costs(
    family: str = "zipformer",
    grid: str = "small",
    presets: Optional[Sequence[str]] = None,
    num_clusters: int = DEFAULT_CLUSTERS,
    progress=None,
    tome: Sequence[int] = (),
) -> List[CandidateCost]:
    """The family's presets (or the named ``presets``) plus its width x depth grid, with costs; with
    ``tome`` (r values), each Transformer-family preset also with r tokens merged per block."""
    from ..models.presets import FAMILIES, all_presets

    known = all_presets()
    if presets:
        missing = [p for p in presets if p not in known]
        if missing:
            raise SpeechBudgetError(f"unknown preset {missing[0]!r}; known: {', '.join(known)}")
        names = list(dict.fromkeys(presets))
    else:
        if family not in FAMILIES:
            raise SpeechBudgetError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
        names = [n for n, cfg in known.items() if cfg["family"] == family]
    grid_configs("zipformer", grid)  # an unknown grid name fails before any counting
    families = list(dict.fromkeys(known[n]["family"] for n in names))
    shallow_keys = [(fam, w) for fam in families for w in sorted({w for w, _, _ in grid_configs(fam, grid)})]
    shallow_cfgs = [GRIDS_BY_FAMILY[fam].make(w, d) for fam, w in shallow_keys for d in (1, 2)]
    preset_cfgs = [jsonable_config(known[n]) for n in names]
    merged = tome_variants(names, preset_cfgs, tome)
    counted = count_configs(preset_cfgs + [cfg for _, cfg in merged] + shallow_cfgs, num_clusters, progress)
    out = [make_candidate(n, cfg, c, "preset") for n, cfg, c in zip(names, preset_cfgs, counted)]
    out += [
        make_candidate(cfg, cfg, c, "tome", name) for (name, cfg), c in zip(merged, counted[len(names) :])
    ]
    shallow = counted[len(names) + len(merged) :]
    for fam in families:
        by_width = {
            (w, d): shallow[2 * i + d - 1]
            for i, (f, w) in enumerate(shallow_keys)
            if f == fam
            for d in (1, 2)
        }
        out += _grid_candidates(fam, grid, by_width)
    return out


# ---------------------------------------------------------------------------------- the budget
@dataclass(frozen=True)
class BudgetSpec:
    """What the user has: ``amount`` of ``unit`` on ``device``."""

    amount: float
    unit: str = "gpu-hours"
    device: str = "a100"
    dtype: Optional[str] = None  # None: bf16 on a GPU, fp32 on the CPU (what the trainer uses)
    utilisation: Optional[float] = None  # None: calibrated if measured, else the device default
    num_devices: int = 1  # for unit "hours": wall-clock hours on this many devices

    def validated(self) -> BudgetSpec:
        if self.unit not in UNITS:
            raise SpeechBudgetError(f"unknown budget unit {self.unit!r}; choose one of {', '.join(UNITS)}")
        if not (isinstance(self.amount, (int, float)) and math.isfinite(self.amount) and self.amount > 0):
            raise OptionError("budget", f"must be a positive number of {self.unit}, got {self.amount}")
        if self.num_devices < 1:
            raise OptionError("num-devices", f"must be at least 1, got {self.num_devices}")
        if self.utilisation is not None and not 0 < self.utilisation <= 1:
            raise OptionError("utilisation", f"must be in (0, 1], got {self.utilisation}")
        dev = get_device(self.device)
        return BudgetSpec(
            float(self.amount),
            self.unit,
            dev.name,
            normalise_dtype(self.dtype or default_dtype(dev.kind)),
            self.utilisation,
            int(self.num_devices),
        )


def _peak(budget: BudgetSpec, calibration: Dict[str, Any]) -> float:
    """Device peak FLOP/s; on the CPU the calibration's own measurement when there is one, so a
    utilisation is always divided by the peak it was measured against."""
    dev = get_device(budget.device)
    if dev.kind != "cpu":
        return dev.peak_flops(budget.dtype)
    record = calibrate.device_record(budget.device, budget.dtype, data=calibration)
    if record:
        return float(record["peak_flops"])
    return measure_cpu_peak(budget.dtype, cache_path=calibrate.cpu_peak_cache())


# ------------------------------------------------------------------------------------ planning
@dataclass
class Plan:
    budget: BudgetSpec
    peak_flops: Optional[float]  # None for a budget in FLOPs
    law: ScalingLaw
    law_source: Optional[str]
    data_hours: Optional[float]  # None: unlimited
    max_duration: float
    num_clusters: int
    candidates: List[PlanRow]  # best first
    skipped: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    interval: Optional[SizeInterval] = None  # the best size across the law's bootstrap refits

    @property
    def recommended(self) -> PlanRow:
        return self.candidates[0]

    def to_json(self) -> Dict[str, Any]:
        return {
            "recommended": self.recommended.to_json(),
            "candidates": [r.to_json() for r in self.candidates],
            "calibrated": self.law.calibrated,
            "law": {
                **{k: getattr(self.law, k) for k in ("E", "A", "alpha", "B", "beta", "r_star")},
                "source": self.law_source or "default",
            },
            "budget": {**asdict(self.budget), "peak_flops": self.peak_flops},
            "data_hours": self.data_hours,
            "max_duration": self.max_duration,
            "num_clusters": self.num_clusters,
            "skipped": self.skipped,
            "explanation": self.notes,
            "warnings": self.warnings,
            "best_size_interval": None
            if self.interval is None
            else {
                "low_params": self.interval.low,
                "high_params": self.interval.high,
                "level": self.interval.level,
                "samples": self.interval.samples,
                "candidates": [r.name for r in self.candidates if r.plausible],
            },
        }


def _utilisation(budget: BudgetSpec, cand: CandidateCost, calibration: Dict[str, Any]) -> Tuple[float, str]:
    if budget.utilisation is not None:
        return budget.utilisation, "given"
    util, source = calibrate.calibrated_utilisation(budget.device, budget.dtype, cand.name, data=calibration)
    if util is not None:
        return util, source
    util, source = get_device(budget.device).default_utilisation_source
    return util, f"default from {source}; `speechbudget calibrate` measures this device"


def plan(
    budget: BudgetSpec,
    data_hours: Optional[float],
    candidates: Sequence[CandidateCost],
    law: Optional[ScalingLaw] = None,
    law_source: Optional[str] = None,
    max_duration: Optional[float] = None,
    num_clusters: int = DEFAULT_CLUSTERS,
    calibration: Optional[Dict[str, Any]] = None,
) -> Plan:
    """Spend the budget on every candidate, predict each one's loss, recommend the lowest.

    ``data_hours`` of None or infinity means unlimited data (no epoch is ever repeated).
    """
    budget = budget.validated()
    unique = check_inputs(data_hours, num_clusters, max_duration)
    law = law or DEFAULT_LAW
    calibration = calibration if calibration is not None else calibrate.load_calibration()
    max_duration = float(
        max_duration or law.pilot("max_duration") or MAX_DURATION[get_device(budget.device).kind]
    )
    if not candidates:
        raise SpeechBudgetError("no candidate encoders to plan for")
    peak = None if budget.unit == "flops" else _peak(budget, calibration)

    # what one budget unit buys each candidate, in its model FLOPs
    per_unit, utils = {}, {}
    for c in candidates:
        utils[c.name] = _utilisation(budget, c, calibration)
        per_unit[c.name] = (
            1.0
            if peak is None
            else 3600.0 * peak * utils[c.name][0] * (budget.num_devices if budget.unit == "hours" else 1)
        )
    units_per_hour = {c.name: c.flops_per_hour / per_unit[c.name] for c in candidates}

    min_hours = max(MIN_AUDIO_HOURS, max_duration / 3600.0)  # at least 0.01 h and one full batch
    affordable = [c for c in candidates if budget.amount / units_per_hour[c.name] >= min_hours]
    if not affordable:
        cheapest = min(candidates, key=lambda c: units_per_hour[c.name])
        need = _ceil_sig(min_hours * units_per_hour[cheapest.name])
        raise SpeechBudgetError(
            f"a budget of {budget.amount:g} {budget.unit} buys only "
            f"{3600 * budget.amount / units_per_hour[cheapest.name]:.3g} s of audio even for the cheapest candidate "
            f"({cheapest.name}); give at least {need:.3g} {budget.unit} ({min_hours:.3g} h of audio)"
        )

    specs = [(c.name, c.params, units_per_hour[c.name]) for c in affordable]
    allocations = optimal_allocation(law, budget.amount, specs, unique)
    interval = best_size_interval(law, budget.amount, specs, unique)
    by_name = {c.name: c for c in affordable}
    rows = [
        _row(by_name[a.name], a, per_unit[a.name], utils[a.name], max_duration, interval) for a in allocations
    ]
    result = Plan(
        budget,
        peak,
        law,
        law_source,
        unique,
        max_duration,
        num_clusters,
        rows,
        skipped=[c.name for c in candidates if c not in affordable],
        interval=interval,
    )
    result.notes, result.warnings = explain(result, affordable)
    return result


def _ceil_sig(x: float, digits: int = 3) -> float:
    """``x`` rounded up to ``digits`` significant digits: a minimum must not print below itself."""
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return math.ceil(x / step) * step


def check_inputs(
    data_hours: Optional[float], num_clusters: int = DEFAULT_CLUSTERS, max_duration: Optional[float] = None
) -> Optional[float]:
    """Validate what the user typed; returns the unique hours (None = unlimited data)."""
    if data_hours is None:
        raise SpeechBudgetError(
            "give --data-hours: the hours of unlabeled audio you have (inf for unlimited)"
        )
    if math.isnan(data_hours) or data_hours <= 0:
        raise OptionError("data-hours", f"must be positive, got {data_hours}")
    if num_clusters < 2:
        raise OptionError("num-clusters", f"must be at least 2, got {num_clusters}")
    if max_duration is not None and not max_duration > 0:
        raise OptionError("max-duration", f"must be positive, got {max_duration}")
    return None if math.isinf(data_hours) else float(data_hours)


@dataclass
class PlanRow:
    """One candidate of a plan: what the budget buys it and the loss the law predicts."""

    name: str
    kind: str  # "preset" or "grid"/"config"
    family: str
    spec: Union[str, Dict[str, Any]]  # a preset name, or a config dict for a recipe's encoder
    params: int
    layers: int
    width: int
    flops_per_hour: float
    budget_flops: float
    utilisation: float
    utilisation_source: str
    audio_hours: float
    epochs: Optional[float]
    effective_hours: float
    predicted_loss: float
    steps: int
    best: bool
    #: inside the range of sizes the law's bootstrap refits pick as best (always the best itself)
    plausible: bool = False
    #: fraction of the law's bootstrap refits that pick this candidate; None without refits
    p_best: Optional[float] = None

    def to_json(self) -> Dict[str, Any]:
        """The row as `plan --json` and the pipeline's plan stage have always written it."""
        row = asdict(self)
        spec = row.pop("spec")
        return {**row, ("preset" if self.kind == "preset" else "config"): spec}


def _row(
    c: CandidateCost,
    a,
    flops_per_unit: float,
    util: Tuple[float, str],
    max_duration: float,
    interval: Optional[SizeInterval],
) -> PlanRow:
    inside = interval is not None and interval.low <= c.params <= interval.high
    return PlanRow(
        name=c.name,
        kind=c.kind,
        family=c.family,
        spec=c.spec,
        params=c.params,
        layers=c.layers,
        width=c.width,
        flops_per_hour=c.flops_per_hour,
        budget_flops=a.hours * c.flops_per_hour,
        utilisation=util[0],
        utilisation_source=util[1],
        audio_hours=a.hours,
        epochs=a.epochs,
        effective_hours=a.effective_hours,
        predicted_loss=a.loss,
        steps=int(a.hours * 3600 / max_duration),
        best=a.best,
        plausible=a.best or inside,
        p_best=None if interval is None else interval.shares[c.name],
    )


def explain(p: Plan, affordable: Sequence[CandidateCost]) -> Tuple[List[str], List[str]]:
    """A few lines on why the winner wins, and warnings the user should act on."""
    best, notes, warnings = p.recommended, [], []
    hours, epochs = best.audio_hours, best.epochs
    data = "unlimited data" if p.data_hours is None else f"your {p.data_hours:g} h"
    over = "" if epochs is None else f" = {epochs:.2f} epochs over {data}"
    notes.append(
        f"{best.name} ({best.params / 1e6:.1f} M parameters, {best.layers} layers, width "
        f"{best.width}) trains on {hours:,.1f} h of audio{over}; predicted loss {best.predicted_loss:.3f}."
    )
    if epochs is None or epochs <= 1:
        have = "with unlimited data" if epochs is None else "the budget buys no more audio than you have"
        notes.append(
            f"Compute-bound ({have}): the budget is split between model size and hours; a bigger model "
            "would see too few hours, a smaller one would underfit."
        )
    else:
        notes.append(
            f"Data-bound: the budget buys {epochs:.1f}x your audio. Repeated hours are discounted "
            f"(R* = {p.law.r_star:g}), so each extra epoch is worth less than the last and compute shifts "
            "towards parameters."
        )
    if hours > ANY_DATA_HOURS:
        warnings.append(
            f"The budget buys {hours:.3g} h of audio, beyond any speech collection (~{ANY_DATA_HOURS:.0e} h "
            "at most): check --budget and --unit."
        )
    if epochs is not None and epochs > EPOCH_WARNING:
        warnings.append(
            f"{epochs:.1f} epochs over {p.data_hours:g} h: looping limited data hurts SSL (Liu et al., "
            "arXiv 2409.16295); add unlabeled audio, or accept that extra compute helps little."
        )
    if len(p.candidates) > 1:
        second = p.candidates[1]
        notes.append(
            f"Runner-up {second.name} ({second.params / 1e6:.1f} M) predicts "
            f"{second.predicted_loss:.3f} with {second.audio_hours:,.1f} h."
        )
    sizes = sorted(c.params for c in affordable)
    if len(sizes) > 2 and best.params in (sizes[0], sizes[-1]):
        edge = "largest" if best.params == sizes[-1] else "smallest"
        warnings.append(
            f"The optimum is the {edge} candidate: try --grid full or another family to look beyond it."
        )
    if p.law.calibrated:
        notes.append(f"Scaling law fitted on pilot runs ({p.law_source or 'given'}).")
        pilot_batch = p.law.pilot("max_duration")
        if pilot_batch and abs(pilot_batch - p.max_duration) > 1e-9:
            warnings.append(
                f"The pilots used batches of {pilot_batch:g} s, this plan {p.max_duration:g} s: the law "
                "describes runs trained like its pilots; keep --max-duration at theirs."
            )
    else:
        notes.append(
            "Uncalibrated: the default law is a prior fitted to published SSL runs' model sizes "
            "(speechbudget/plan/published_runs.csv), not to your data; run `speechbudget sweep` and "
            "`speechbudget plan fit` to fit it on your data."
        )
    notes.insert(1, interval_line(p))
    if p.peak_flops is not None:
        notes.append(
            f"{p.budget.amount:g} {p.budget.unit} on {p.budget.device} ({p.budget.dtype} peak "
            f"{p.peak_flops / 1e12:.3g} TFLOP/s, utilisation {best.utilisation:.2f}, "
            f"{best.utilisation_source}) = {best.budget_flops:.3g} training FLOPs for {best.name}."
        )
    notes += tome_notes(p)
    if p.skipped:
        notes.append(
            f"Skipped {len(p.skipped)} candidates the budget cannot feed {MIN_AUDIO_HOURS:g} h of audio "
            f"or one batch: {', '.join(p.skipped)}."
        )
    return notes, warnings


def tome_notes(p: Plan) -> List[str]:
    """What each token-merging variant saves per audio second, and the caveat the law cannot see."""
    rows = {r.name: r for r in p.candidates}
    savings = [
        f"{name} {1 - r.flops_per_hour / rows[name.split('+tome')[0]].flops_per_hour:.0%}"
        for name, r in sorted(rows.items())
        if "+tome" in name and name.split("+tome")[0] in rows
    ]
    if not savings:
        return []
    return [
        "Token merging (+tomeR: R tokens merged per block) saves training FLOPs per audio second: "
        + ", ".join(savings)
        + ". Merged variants are predicted with the unmerged law (same parameters, more audio per FLOP); "
        "merging's accuracy cost is not in it (BENCHMARKS.md section 8)."
    ]


def interval_line(p: Plan) -> str:
    """One line on how sure the recommendation is: the range of best sizes across the refits."""
    which = "fitted law" if p.law.calibrated else "uncalibrated prior"
    if p.interval is None:
        return f"{which}: no bootstrap refits in this law, so no range for the best size; refit it with `plan fit`."
    iv, n = p.interval, sum(r.plausible for r in p.candidates)
    low, high = f"{iv.low / 1e6:.3g}M", f"{iv.high / 1e6:.3g}M"
    span = low if iv.low == iv.high else f"{low}-{high}"
    advice = "run pilots to narrow it" if not p.law.calibrated else "more pilots narrow it"
    return (
        f"{which}: the best size is {span} at {100 * iv.level:.0f}% ({n} candidate{'s' * (n != 1)} "
        f"marked ~, over {iv.samples} bootstrap refits); {advice}."
    )


# ------------------------------------------------------------------------------------- outputs
def _sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def eden_schedule(hours: float, steps: int) -> Dict[str, Any]:
    """Eden counting hours of audio: the decay follows the data seen, whatever the corpus size."""
    return {
        "name": "eden",
        "epoch_unit": "hours",
        "lr_epochs": _sig(max(LR_EPOCHS_FRACTION * hours, 1e-3)),
        "lr_batches": float(min(7500, max(10, round(LR_BATCHES_FRACTION * steps)))),
        "warmup_batches": int(min(500, max(1, round(WARMUP_FRACTION * steps)))),
    }


def pilot_schedule(law: ScalingLaw) -> Optional[Dict[str, Any]]:
    """The learning-rate schedule of the law's pilots, when it scales with the run by itself: a
    cosine schedule decays over whatever budget it is given; Eden's constants do not transfer."""
    sched = law.pilot("schedule") or {}
    if sched.get("name") != "cosine":
        return None
    return {k: sched[k] for k in ("name", "warmup_batches", "min_lr_ratio") if k in sched}


def recipe(p: Plan, train_cuts: Optional[str] = None, exp_dir: Optional[str] = None) -> Dict[str, Any]:
    """A pretraining recipe for the recommended candidate (the planned budget in FLOPs)."""
    best = p.recommended
    section = {
        "encoder": best.spec,
        "train_cuts": train_cuts or "CHANGE-ME/km/cuts_train.jsonl.gz",
        "max_duration": p.max_duration,
        "budget": {"flops": _sig(best.budget_flops, 4)},
        "schedule": pilot_schedule(p.law) or eden_schedule(best.audio_hours, best.steps),
    }
    return {"exp_dir": exp_dir or f"exp/pretrain-{best.name}", "pretrain": section}


def write_recipe(
    p: Plan, path: Path, train_cuts: Optional[str] = None, exp_dir: Optional[str] = None
) -> Path:
    import yaml

    best = p.recommended
    epochs = "unlimited data" if best.epochs is None else f"{best.epochs:.2f} epochs over {p.data_hours:g} h"
    law = "fitted" if p.law.calibrated else "uncalibrated default"
    header = [
        f"# written by `speechbudget plan`: {p.budget.amount:g} {p.budget.unit} on {p.budget.device} -> {best.name}",
        (
            f"# {best.params / 1e6:.1f} M parameters, {best.audio_hours:,.1f} h of audio ({epochs}), "
            f"~{best.steps} steps, predicted loss {best.predicted_loss:.3f} ({law} law; "
            f"{p.num_clusters} k-means clusters assumed)"
        ),
    ]
    if not train_cuts or not exp_dir:
        header.append(
            "# fill in: train_cuts (k-means labeled cuts from `speechbudget kmeans`) and exp_dir, then run"
        )
    header.append(f"#   speechbudget pretrain {path}")
    path = check_output_file(path, "recipe file")
    body = yaml.safe_dump(recipe(p, train_cuts, exp_dir), sort_keys=False, default_flow_style=None)
    path.write_text("\n".join(header) + "\n" + body, encoding="utf-8")
    return path


def _cost_curve(candidates: Sequence[PlanRow]):
    """flops_per_hour as a power law of params, fitted on the candidates, for smooth curves."""
    n = np.log([c.params for c in candidates])
    f = np.log([c.flops_per_hour for c in candidates])
    if len(set(n.round(6))) < 2:
        slope, intercept = 1.0, float(f.mean() - n.mean())
    else:
        slope, intercept = np.polyfit(n, f, 1)
    return lambda params: np.exp(intercept + slope * np.log(params))


def plot_isoflops(p: Plan, path: Path, factors: Sequence[float] = (1e-3, 1e-2, 0.1, 1.0, 10.0)) -> Path:
    """Predicted loss vs parameters at several budgets around the planned one (FLOPs of the
    recommended candidate), each curve's minimum dotted, the candidates and the optimum marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best, rows = p.recommended, p.candidates
    cost = _cost_curve(rows)
    params = np.array([r.params for r in rows], dtype=float)
    grid = np.geomspace(params.min() / 3, params.max() * 3, 200)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    colors = plt.cm.viridis(np.linspace(0.1, 0.9, len(factors)))
    for factor, color in zip(factors, colors):
        flops = best.budget_flops * factor
        loss = p.law.predict(grid, flops / cost(grid), p.data_hours)
        ax.plot(grid, loss, color=color, label=f"{flops:.2g} FLOPs")
        i = int(np.argmin(loss))
        if 0 < i < len(grid) - 1:  # a minimum at the edge is the plot's range, not an optimum
            ax.plot(grid[i], loss[i], "o", color=color, markersize=5)
    ax.scatter(params, [r.predicted_loss for r in rows], s=14, color="grey", zorder=3, label="candidates")
    ax.plot(
        best.params,
        best.predicted_loss,
        "*",
        color="crimson",
        markersize=14,
        zorder=4,
        label=f"recommended: {best.name}",
    )
    ax.set_xscale("log")
    ax.set_xlabel("encoder parameters")
    ax.set_ylabel("predicted pretraining loss (nats)")
    data = "unlimited data" if p.data_hours is None else f"{p.data_hours:g} h of data"
    ax.set_title(f"isoFLOP curves, {data} ({'fitted' if p.law.calibrated else 'uncalibrated'} law)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path = check_output_file(path if path.suffix else path.with_suffix(".png"), "plot file")
    write_png(path, fig)
    plt.close(fig)
    return path
