"""Pilots that plan themselves: design a pilot sweep for a budget, run it, fit the law, plan the rest.

Chinchilla's approach 3 fits L(N, D) on runs that vary both model size and compute. The design
spends ``fraction`` of the user's budget on a grid of sizes x budgets: sizes from the top of the
prior's best-size range down to what the prior would pick at the smallest pilot budget (a pilot's
own optimum is smaller than the full run's), budgets geometric over one decade. A pilot that would
take fewer than ``min_steps`` optimizer steps is still in its initial transient, where no power law
holds (BENCHMARKS.md section 5): such cells are dropped and the others get their share, so the
pilots still spend exactly the fraction. What the pilots spent (measured, from their runs) comes
out of the budget the final plan gets.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .. import atomic
from ..errors import OptionError, SpeechBudgetError
from .costs import CandidateCost
from .planner import BudgetSpec, Plan, PlanRow, plan
from .scaling import ScalingLaw
from .sweep import MIN_STEPS, PilotSpec, fit_runs, run_sweep, sweep_section

MAX_FRACTION = 0.5  # pilots that take half the budget are no longer pilots
PILOT_SPAN = 10.0  # largest / smallest pilot budget: one decade, as the bench's pilots span ~8x
DEFAULT_SIZES, DEFAULT_BUDGETS = 4, 3
MIN_SIZES, MIN_LEVELS, MIN_PILOTS = 3, 2, 5  # a law with a size and a data term, 5 coefficients
#: how designed pilots train (and so the planned run): cosine decay to a tenth over each run's own
#: budget, Chinchilla's practice, so every pilot ends converged (README, "Pilots should train ...")
PILOT_SCHEDULE = {"name": "cosine", "warmup_batches": 5, "min_lr_ratio": 0.1}
PILOTS_DIR, SUMMARY_NAME = "pilots", "pilots.json"


def check_fraction(fraction: Optional[float]) -> float:
    if fraction is None or not (math.isfinite(fraction) and 0 < fraction < MAX_FRACTION):
        raise OptionError("pilot-fraction", f"must be above 0 and below {MAX_FRACTION:g}, got {fraction}")
    return float(fraction)


# -------------------------------------------------------------------------------------- design
@dataclass(frozen=True)
class Pilot:
    name: str
    spec: Any  # preset name or config dict
    params: int
    flops: float
    cost: float  # in the budget's unit
    audio_hours: float
    steps: int  # estimated, at the pilots' batch size
    level: int  # 0 = the largest pilot budget


@dataclass
class PilotDesign:
    fraction: float
    budget: BudgetSpec
    max_duration: float
    min_steps: int
    pilots: List[Pilot]
    per_unit: Dict[str, float]  # FLOPs one budget unit buys each candidate
    prior_choice: str
    notes: List[str] = field(default_factory=list)

    @property
    def sizes(self) -> List[str]:
        return list(dict.fromkeys(p.name for p in sorted(self.pilots, key=lambda p: p.params)))

    @property
    def levels(self) -> List[int]:
        return sorted({p.level for p in self.pilots})

    @property
    def cost(self) -> float:
        return sum(p.cost for p in self.pilots)

    @property
    def flops(self) -> float:
        return sum(p.flops for p in self.pilots)

    def specs(self) -> List[PilotSpec]:
        return [PilotSpec(p.name, p.spec, p.flops) for p in self.pilots]

    def to_json(self) -> Dict[str, Any]:
        return {
            "fraction": self.fraction,
            "budget": dataclasses.asdict(self.budget),
            "pilot_cost": self.cost,
            "pilot_flops": self.flops,
            "sizes": self.sizes,
            "budget_levels": len(self.levels),
            "max_duration": self.max_duration,
            "min_steps": self.min_steps,
            "schedule": PILOT_SCHEDULE,
            "prior_choice": self.prior_choice,
            "pilots": [dataclasses.asdict(p) for p in self.pilots],
            "notes": self.notes,
        }


def design_pilots(
    prior: Plan,
    fraction: float,
    sizes: int = DEFAULT_SIZES,
    budgets: int = DEFAULT_BUDGETS,
    min_steps: int = MIN_STEPS,
) -> PilotDesign:
    """Pilots for ``prior``'s budget (a plan with the prior law): ``fraction`` of it in total."""
    fraction = check_fraction(fraction)
    if sizes < MIN_SIZES:
        raise OptionError("pilot-sizes", f"must be at least {MIN_SIZES}, got {sizes}")
    if budgets < MIN_LEVELS:
        raise OptionError("pilot-budgets", f"must be at least {MIN_LEVELS}, got {budgets}")
    if min_steps < 0:
        raise OptionError("min-steps", f"must be >= 0, got {min_steps}")
    cells = _cells(prior, fraction, sizes, budgets, min_steps)
    if cells is None:
        raise SpeechBudgetError(_too_small(prior, fraction, sizes, budgets, min_steps))
    b = prior.budget
    per_unit = {r.name: r.budget_flops / b.amount for r in prior.candidates}
    pilots = []
    for row, level, cost in cells:
        flops = cost * per_unit[row.name]
        hours = flops / row.flops_per_hour
        steps = int(hours * 3600 / prior.max_duration)
        pilots.append(Pilot(row.name, row.spec, row.params, flops, cost, hours, steps, level))
    design = PilotDesign(fraction, b, prior.max_duration, min_steps, pilots, per_unit, prior.recommended.name)
    design.notes = [
        f"{len(pilots)} pilots ({len(design.sizes)} sizes x {len(design.levels)} budgets over {PILOT_SPAN:g}x; "
        f"those under {min_steps} steps dropped) spend {design.cost:.4g} {b.unit} = {100 * fraction:g}% of {b.amount:g} {b.unit}.",
        f"Sizes from the prior's best-size range ({prior.recommended.name} at the full budget) down to what "
        "it picks at the smallest pilot budget; each pilot decays a cosine schedule over its own budget.",
    ]
    return design


def _cells(
    prior: Plan, fraction: float, sizes: int, budgets: int, min_steps: int
) -> Optional[List[Tuple[PlanRow, int, float]]]:
    """(candidate, budget level, cost in the budget's unit) of every pilot; None if no grid fits."""
    b = prior.budget
    rows = sorted(prior.candidates, key=lambda r: r.params)
    per_unit = {r.name: r.budget_flops / b.amount for r in rows}
    # the fewest budget units that buy a candidate min_steps batches
    least = {
        r.name: min_steps * prior.max_duration / 3600 * r.flops_per_hour / per_unit[r.name] for r in rows
    }
    iv = prior.interval
    top = iv.high if iv is not None else prior.recommended.params
    pool = [r for r in rows if r.params <= top]
    pool += rows[len(pool) : len(pool) + max(0, sizes - len(pool))]  # too few below: reach just above
    weights = [PILOT_SPAN ** (-j / (budgets - 1)) for j in range(budgets)]
    total = fraction * b.amount
    smallest = total / (sizes * sum(weights)) * weights[-1]
    loss = [
        prior.law.predict(r.params, smallest * per_unit[r.name] / r.flops_per_hour, prior.data_hours)
        for r in pool
    ]
    low = pool[int(np.argmin(loss))].params
    chosen = _nearest(pool, np.geomspace(low, top, sizes))
    while True:
        cells = _fit_cells(chosen, weights, total, least)
        with_cells = {r.name for r, _, _ in cells}
        smaller = [r for r in pool if r.params < min(c.params for c in chosen) and r not in chosen]
        if len(with_cells) >= sizes or not smaller:
            break
        chosen = [c for c in chosen if c.name in with_cells] + [smaller[-1]]
    levels = {j for _, j, _ in cells}
    if len(with_cells) < MIN_SIZES or len(levels) < MIN_LEVELS or len(cells) < MIN_PILOTS:
        return None
    return sorted(cells, key=lambda c: (c[0].params, c[1]))


def _nearest(pool: Sequence[PlanRow], targets: Iterable[float]) -> List[PlanRow]:
    """One distinct candidate per target size, the nearest in log parameters."""
    chosen: List[PlanRow] = []
    for t in targets:
        left = [r for r in pool if r not in chosen]
        if left:
            chosen.append(min(left, key=lambda r: abs(math.log(r.params / t))))
    return chosen


def _fit_cells(chosen, weights, total, least) -> List[Tuple[PlanRow, int, float]]:
    """The most cells whose shares of ``total`` each buy ``min_steps``: a cell needs the budget
    scale to reach ``least / weight``, so the candidates are the cells of lowest need first."""
    cells = sorted(
        ((r, j) for r in chosen for j in range(len(weights))), key=lambda c: least[c[0].name] / weights[c[1]]
    )
    for k in range(len(cells), 0, -1):
        scale = total / sum(weights[j] for _, j in cells[:k])
        r, j = cells[k - 1]
        if scale * weights[j] >= least[r.name]:
            return [(r, j, scale * weights[j]) for r, j in cells[:k]]
    return []


def _too_small(prior: Plan, fraction: float, sizes: int, budgets: int, min_steps: int) -> str:
    """Why no design fits, and the smallest fraction (if any below the maximum) that gives one."""
    b = prior.budget
    need = next(
        (
            f
            for f in np.geomspace(fraction, MAX_FRACTION * 0.98, 60)
            if _cells(prior, f, sizes, budgets, min_steps)
        ),
        None,
    )
    head = (
        f"{100 * fraction:g}% of {b.amount:g} {b.unit} buys no pilot grid a law can be fitted on "
        f"({MIN_SIZES}+ sizes x {MIN_LEVELS}+ budgets, each pilot >= {min_steps} optimizer steps of "
        f"{prior.max_duration:g} s batches)"
    )
    if need is not None:
        return f"{head}: give --pilot-fraction {_ceil2(need):g} or more, or a larger budget"
    return f"{head}, even at {MAX_FRACTION:g}: give a larger budget or smaller batches (--max-duration)"


def _ceil2(x: float) -> float:
    step = 10.0 ** (math.floor(math.log10(x)) - 1)
    return math.ceil(x / step) * step


def design_recipe(
    design: PilotDesign, train_cuts: Optional[str] = None, exp_dir: Optional[str] = None
) -> Dict[str, Any]:
    """The designed sweep as a recipe `speechbudget sweep --recipe` runs (its ``sweep:`` section)."""
    first = design.pilots[0]
    return {
        "exp_dir": exp_dir or "exp/pilots",
        "pretrain": {
            "encoder": first.spec,  # every pilot replaces it
            "train_cuts": train_cuts or "CHANGE-ME/km/cuts_train.jsonl.gz",
            "max_duration": design.max_duration,
            "schedule": dict(PILOT_SCHEDULE),
            "budget": {"flops": first.flops},  # every pilot replaces it
        },
        "sweep": sweep_section(design.specs()),
    }


def write_design(
    design: PilotDesign, path: Path, train_cuts: Optional[str] = None, exp_dir: Optional[str] = None
) -> Path:
    import yaml

    b = design.budget
    header = [
        f"# written by `speechbudget plan --pilot-fraction {design.fraction:g}`: {len(design.pilots)} pilots, "
        f"{design.cost:.4g} {b.unit} of {b.amount:g} {b.unit} on {b.device}",
        f"#   speechbudget sweep --recipe {path} --out {exp_dir or 'exp/pilots'}",
        f"#   speechbudget plan fit {exp_dir or 'exp/pilots'} --out law.json",
        f"#   speechbudget plan --law law.json --budget {b.amount - design.cost:.4g} --unit {b.unit} ...",
    ]
    if not train_cuts:
        header.append("# fill in: pretrain.train_cuts (k-means labeled cuts from `speechbudget kmeans`)")
    body = yaml.safe_dump(
        design_recipe(design, train_cuts, exp_dir), sort_keys=False, default_flow_style=None
    )
    atomic.write_text(Path(path), "\n".join(header) + "\n" + body)
    return Path(path)


# -------------------------------------------------------------------------- pilots -> fit -> plan
def plan_with_pilots(
    spec: BudgetSpec,
    unique_hours: Optional[float],
    candidates: Sequence[CandidateCost],
    recipe: Dict[str, Any],
    out_dir: Path,
    fraction: float,
    prior_law: Optional[ScalingLaw] = None,
    prior_source: Optional[str] = None,
    sizes: int = DEFAULT_SIZES,
    budgets: int = DEFAULT_BUDGETS,
    min_steps: int = MIN_STEPS,
    bootstrap: int = 200,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Design pilots for the budget, run them (``recipe``'s pretrain section; finished pilots are
    not re-run), fit the law on them, and plan the budget they left; the plan's JSON with a
    ``pilots`` record (also written to OUT/pilots.json for the report)."""
    from ..config import load_train_config

    max_duration = load_train_config({**recipe, "exp_dir": str(out_dir)}, "pretrain").max_duration
    prior = plan(
        spec, unique_hours, candidates, law=prior_law, law_source=prior_source, max_duration=max_duration
    )
    design = design_pilots(prior, fraction, sizes, budgets, min_steps)
    out_dir = Path(out_dir)
    atomic.write_json(out_dir / "design.json", design.to_json())
    log(
        f"pilots: {len(design.pilots)} runs, {design.cost:.4g} {spec.unit} ({100 * fraction:g}% of the budget)"
    )
    schedule = (recipe.get("pretrain") or {}).get("schedule") or {}
    if schedule.get("name", "eden") != "cosine":
        log(
            f"note: the pilots train with the recipe's {schedule.get('name', 'eden')} schedule, as the planned "
            "run will; with pretrain.schedule.name cosine each pilot would end its own decay (Chinchilla's practice)"
        )
    swept = run_sweep(
        recipe,
        design.specs(),
        out_dir,
        on_run=lambda r: log(
            f"pilot {Path(r['exp_dir']).name}: {r['steps']} steps, loss {r['final_loss']:.3f}"
            + (" (already done)" if r["already_done"] else "")
        ),
    )
    runs = swept["runs"]
    spent_flops = sum(r["flops"] for r in runs)
    spent = sum(r["flops"] / design.per_unit[r["preset"]] for r in runs)  # measured, in the budget's unit
    if spent >= spec.amount:
        raise SpeechBudgetError(
            f"the pilots spent {spent:.4g} of {spec.amount:g} {spec.unit}: nothing is left"
        )
    law, source, fallback, fit_error = prior_law, prior_source, None, None
    try:
        fit = fit_runs(
            [Path(r["exp_dir"]) for r in runs], out_dir / "law.json", bootstrap, min_steps=min_steps
        )
        law, source, fit_error = fit["law"], str(out_dir / "law.json"), fit["mean_relative_error"]
    except SpeechBudgetError as e:
        fallback = f"the pilots' law could not be fitted ({e}); planning with the prior law"
        log(f"warning: {fallback}")
    final = plan(
        dataclasses.replace(spec, amount=spec.amount - spent),
        unique_hours,
        candidates,
        law=law,
        law_source=source,
        max_duration=max_duration,
    )
    best = final.recommended
    record = {
        "fraction": fraction,
        "budget": {"amount": spec.amount, "unit": spec.unit, "device": spec.device},
        "planned": design.cost,
        "spent": spent,
        "spent_flops": spent_flops,
        "share_of_budget": spent / spec.amount,
        "remaining": spec.amount - spent,
        "runs": [
            {
                k: r[k]
                for k in ("preset", "params", "flops", "steps", "audio_hours", "final_loss", "already_done")
            }
            for r in runs
        ],
        "law": source if fallback is None else None,
        "law_mean_relative_error": fit_error,
        "fallback": fallback,
        "prior_choice": design.prior_choice,
        "chosen": {
            "name": best.name,
            "params": best.params,
            "budget_flops": best.budget_flops,
            "predicted_loss": best.predicted_loss,
        },
    }
    atomic.write_json(out_dir / SUMMARY_NAME, record)
    log(summary_line(record))
    return {**final.to_json(), "pilots": record}


def summary_line(record: Dict[str, Any]) -> str:
    """One line on what the pilots cost and what they chose (console and report)."""
    b, chosen = record["budget"], record["chosen"]
    law = "the pilots' fitted law" if record.get("law") else "the prior law (fit failed)"
    return (
        f"{len(record['runs'])} pilots spent {record['spent']:.4g} {b['unit']} ({record['spent_flops']:.3g} FLOPs) = "
        f"{100 * record['share_of_budget']:.1f}% of {b['amount']:g} {b['unit']}; with {law} the remaining "
        f"{record['remaining']:.4g} {b['unit']} go to {chosen['name']} ({chosen['params'] / 1e6:.2f} M parameters, "
        f"predicted loss {chosen['predicted_loss']:.3f}; the prior alone chose {record['prior_choice']})."
    )


def find_pilot_summaries(paths: Iterable[Path]) -> List[Path]:
    """``pilots/pilots.json`` of the experiments given (an exp_dir or a run inside it)."""
    found: List[Path] = []
    for p in map(Path, paths):
        for cand in (p / PILOTS_DIR / SUMMARY_NAME, p.parent / PILOTS_DIR / SUMMARY_NAME):
            if cand.is_file() and cand.resolve() not in found:
                found.append(cand.resolve())
    return found
