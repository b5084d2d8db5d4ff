"""Pilot runs for the scaling law: a presets x budgets grid of short pretrainings, and the fit.

Each pilot is an ordinary budgeted ``pretrain`` run in its own exp_dir, so a killed sweep resumes
by running the same command (finished pilots return at once). From each run's folder we read
back the point the law is fitted on: (encoder parameters, audio hours processed, unique hours
of its training data, final masked loss).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from .. import atomic
from ..config import split_csv
from ..errors import SpeechBudgetError
from ..train.metrics_log import read_metrics
from .scaling import DEFAULT_R_STAR, fit_law

LAST_STEPS = 3  # logged steps averaged into a run's final loss: one step's loss is noisy
MIN_STEPS = 100  # shorter runs are still in their initial transient: left out of the fit
_OTHER_LIMITS = ("gpu_hours", "wall_hours", "audio_hours", "steps")


def parse_list(text: str, what: str) -> List[str]:
    items = split_csv(text)
    if not items:
        raise SpeechBudgetError(f"give at least one {what} (comma-separated)")
    return items


def parse_budgets(text: str) -> List[float]:
    """``"1e11,2e11"`` -> FLOP budgets, each a positive number."""
    out = []
    for item in parse_list(text, "budget"):
        try:
            value = float(item)
        except ValueError:
            raise SpeechBudgetError(f"budget {item!r} is not a number (write FLOPs like 1e11)") from None
        if not (math.isfinite(value) and value > 0):
            raise SpeechBudgetError(f"budgets must be positive FLOPs, got {item}")
        if run_name("x", value) in {run_name("x", v) for v in out}:
            raise SpeechBudgetError(
                f"budget {item} is listed twice (one pilot each; the fit would count it twice)"
            )
        out.append(value)
    return out


def run_name(preset: str, budget: float) -> str:
    """``zipformer-tiny-1e11``: readable, and stable so a re-run finds its folder again."""
    return f"{preset}-{budget:.3g}".replace("e+", "e")


# --------------------------------------------------------------------------- the pilots to run
@dataclass(frozen=True)
class PilotSpec:
    """One pilot: an encoder (a preset name or a config dict) pretrained on ``flops`` FLOPs."""

    name: str  # the candidate's name: a preset, or the planner's ``zipformer-w192-l6``
    encoder: Union[str, Dict[str, Any]]
    flops: float

    @property
    def run_name(self) -> str:
        return run_name(self.name, self.flops)

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "encoder": self.encoder, "flops": self.flops}


def grid_pilots(presets: Sequence[str], budgets: Sequence[float]) -> List[PilotSpec]:
    """Every preset at every budget (``sweep --presets --budgets``)."""
    return [PilotSpec(p, p, float(b)) for p in presets for b in budgets]


#: the recipe section that lists a designed sweep's pilots (``plan --pilot-fraction --out``)
SWEEP_KEY = "sweep"


def recipe_pilots(recipe: Dict[str, Any], where: str = "recipe") -> List[PilotSpec]:
    """The pilots a recipe's ``sweep: {pilots: [{name, encoder, flops}, ...]}`` lists."""
    rows = (recipe.get(SWEEP_KEY) or {}).get("pilots")
    if not rows:
        raise SpeechBudgetError(
            f"{where} lists no pilots (sweep.pilots); give --presets and --budgets, "
            "or write a design with `speechbudget plan --pilot-fraction F --out FILE`"
        )
    try:
        pilots = [PilotSpec(str(r["name"]), r.get("encoder") or r["name"], float(r["flops"])) for r in rows]
    except (KeyError, TypeError, ValueError):
        raise SpeechBudgetError(f"{where}: each sweep.pilots entry needs name, encoder and flops") from None
    if any(not (math.isfinite(p.flops) and p.flops > 0) for p in pilots):
        raise SpeechBudgetError(f"{where}: pilot flops must be positive")
    return pilots


def sweep_section(pilots: Sequence[PilotSpec]) -> Dict[str, Any]:
    """What :func:`recipe_pilots` reads back: the one format a designed sweep is stored in."""
    return {"pilots": [p.to_json() for p in pilots]}


def pilot_recipe(
    recipe: Dict[str, Any], encoder: Union[str, Dict[str, Any]], budget: float, exp_dir: Path
) -> Dict[str, Any]:
    """The recipe with this pilot's encoder, exp_dir and a FLOP budget as its only limit (another
    limit would stop some pilots early and put them off the budget grid)."""
    section = dict(recipe.get("pretrain") or {})
    section.update(encoder=encoder, exp_dir=str(exp_dir))
    budget_cfg = dict(section.get("budget") or {})
    budget_cfg.update({k: None for k in _OTHER_LIMITS}, flops=float(budget))
    section["budget"] = budget_cfg
    return {k: v for k, v in recipe.items() if k != SWEEP_KEY} | {"pretrain": section}


def run_sweep(
    recipe: Union[Path, Dict[str, Any]],
    pilots: Sequence[PilotSpec],
    out_dir: Path,
    last: int = LAST_STEPS,
    on_run=None,
    source: Optional[str] = None,
) -> Dict[str, Any]:
    """Run every pilot in turn and collect their points into OUT/sweep.json.

    A pilot whose run already finished returns at once (the trainer sees its summary), so a
    killed sweep resumes by running it again. ``source`` names a ``recipe`` given as a dict.
    """
    if last < 1:
        raise SpeechBudgetError(f"--last must be at least 1 (the logged steps averaged), got {last}")
    from ..config import load_train_config, load_yaml
    from ..models.presets import resolve
    from ..train.pretrain import pretrain

    data = load_yaml(recipe) if isinstance(recipe, (str, Path)) else dict(recipe)
    for p in pilots:
        resolve(p.encoder)  # fail on a typo before hours of pilots
    out_dir = Path(out_dir)
    runs: List[Dict[str, Any]] = []
    result = {
        "recipe": str(recipe) if isinstance(recipe, (str, Path)) else source,
        "presets": list(dict.fromkeys(p.name for p in pilots)),
        "budgets": sorted({p.flops for p in pilots}),
        "pilots": [p.to_json() for p in pilots],
        "runs": runs,
    }
    counted: Dict[str, Path] = {}
    for pilot in pilots:
        exp_dir = out_dir / pilot.run_name
        run = pilot_recipe(data, pilot.encoder, pilot.flops, exp_dir)
        cfg = load_train_config(run, "pretrain")
        _share_cost(counted.get(pilot.name), exp_dir)
        summary = pretrain(cfg, run)
        counted[pilot.name] = exp_dir / "cost.json"
        point = run_point(exp_dir, last)
        runs.append(
            {
                "preset": pilot.name,
                "budget_flops": pilot.flops,
                "already_done": bool(summary.get("already_done")),
                **point,
            }
        )
        # after every pilot: a killed sweep keeps its points
        atomic.write_json(out_dir / "sweep.json", result, sort_keys=True)
        if on_run is not None:
            on_run(runs[-1])
    return result


def _share_cost(source: Optional[Path], exp_dir: Path) -> None:
    """Give a new pilot the cost.json of an earlier pilot of the same encoder and recipe.

    The trainer counts an encoder's FLOPs once per exp_dir (seconds of tracing) and reuses a
    cost.json it finds there; pilots that differ only in budget have identical costs.
    """
    target = exp_dir / "cost.json"
    if source is None or not source.is_file() or target.exists():
        return
    exp_dir.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())


# ----------------------------------------------------------------------------- reading a run
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpeechBudgetError(f"{path} is missing: is {path.parent} a finished pretraining run?") from None
    except (OSError, json.JSONDecodeError) as e:
        raise SpeechBudgetError(f"{path} is unreadable ({type(e).__name__}); re-run that pilot") from None


def _metrics(exp_dir: Path) -> List[Dict[str, Any]]:
    """Logged training steps (validation rows, logged beside them, are left out)."""
    return [r for r in read_metrics(exp_dir) if "loss" in r or "masked_loss" in r]


def final_loss(rows: Sequence[Dict[str, Any]], last: int = LAST_STEPS) -> float:
    """Mean masked loss over the last ``last`` logged steps (the HuBERT loss the law models)."""
    values = [r.get("masked_loss", r.get("loss")) for r in rows[-last:]]
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        raise SpeechBudgetError("the run logged no finite loss")
    return statistics.fmean(values)


def _unique_hours_of(card: Dict[str, Any], rows: Sequence[Dict[str, Any]], audio_hours: float) -> float:
    """Hours of distinct training audio: as the run card records it; for older runs from the
    trainer's epoch counter (audio processed / epochs), else by summing the training cuts."""
    if card.get("unique_hours"):
        return float(card["unique_hours"])
    config = card.get("config") or {}
    unit = (config.get("schedule") or {}).get("epoch_unit", "epochs")
    epoch = rows[-1].get("epoch") if rows else None
    if unit == "epochs" and epoch:
        return audio_hours / float(epoch)
    from ..train.setup import load_train_cuts, total_seconds

    return total_seconds(load_train_cuts(config.get("train_cuts", ""))) / 3600.0


def run_point(exp_dir: Path, last: int = LAST_STEPS) -> Dict[str, Any]:
    """One pilot's numbers from its folder (summary.json, run_card.json, metrics.jsonl, cost.json)."""
    exp_dir = Path(exp_dir)
    summary = _read_json(exp_dir / "summary.json")
    card = _read_json(exp_dir / "run_card.json")
    cost = _read_json(exp_dir / "cost.json")
    if card.get("stage") != "pretrain":
        raise SpeechBudgetError(
            f"{exp_dir} is a {card.get('stage')} run; the scaling law is fitted on pretraining runs"
        )
    rows = _metrics(exp_dir)
    if not rows:
        raise SpeechBudgetError(f"{exp_dir}/metrics.jsonl has no logged steps; the pilot did not train")
    audio_hours = float(summary["audio_hours"])
    valid = (summary.get("valid") or {}).get("valid_masked_loss")
    try:  # held-out loss when the pilot had dev_cuts: training loss flatters runs that loop the data
        loss = (
            float(valid)
            if valid is not None and math.isfinite(valid)
            else final_loss([r for r in rows if "masked_loss" in r or "loss" in r], last)
        )
        source = "valid_masked_loss" if valid is not None else f"train masked loss (last {last} logged steps)"
    except SpeechBudgetError:
        raise SpeechBudgetError(
            f"{exp_dir} logged no finite loss; drop it or re-run it with a lower lr"
        ) from None
    return {
        "exp_dir": str(exp_dir),
        "encoder": (card.get("config") or {}).get("encoder"),
        "params": int(cost.get("params") or card["params"]),  # the encoder's: the law's N
        "flops": float(summary["flops"]),
        "audio_hours": audio_hours,
        "unique_hours": _unique_hours_of(card, rows, audio_hours),
        "steps": int(summary["steps"]),
        "final_loss": loss,
        "loss_source": source,
    }


def find_runs(paths: Iterable[Path]) -> List[Path]:
    """Run folders among ``paths``: each path is a run (has summary.json) or holds runs below it
    (a sweep's output folder)."""
    found: List[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise SpeechBudgetError(
                f"{p} is not a folder; pass pretraining exp_dirs or a sweep's --out folder"
            )
        hits = [p] if (p / "summary.json").is_file() else sorted(s.parent for s in p.rglob("summary.json"))
        if not hits:
            raise SpeechBudgetError(f"no finished run (summary.json) in or below {p}")
        found += [h for h in hits if h not in found]
    return found


def fit_runs(
    paths: Iterable[Path],
    out: Path,
    bootstrap: int = 200,
    r_star: float = DEFAULT_R_STAR,
    last: int = LAST_STEPS,
    seed: int = 0,
    min_steps: int = MIN_STEPS,
) -> Dict[str, Any]:
    """Fit the law on the runs' points and save it (with the points, for the record) to ``out``.

    Runs with fewer than ``min_steps`` optimizer steps are left out (and listed): that early, a
    model is still in its initial transient near chance loss, which no power law in N and D
    describes, and a few such points drag the whole fit (BENCHMARKS.md, planner section).
    """
    if bootstrap < 0:
        raise SpeechBudgetError(f"--bootstrap must be >= 0, got {bootstrap}")
    if min_steps < 0:
        raise SpeechBudgetError(f"--min-steps must be >= 0, got {min_steps}")
    if last < 1:
        raise SpeechBudgetError(f"--last must be at least 1 (the logged steps averaged), got {last}")
    if not math.isfinite(r_star) or r_star <= 0:
        raise SpeechBudgetError(f"--r-star must be a positive number, got {r_star}")
    atomic.check_output_file(out, "law file")
    runs = find_runs(paths)
    every = [run_point(d, last) for d in runs]
    points = [p for p in every if p["steps"] >= min_steps]
    left_out = [{"exp_dir": p["exp_dir"], "steps": p["steps"]} for p in every if p["steps"] < min_steps]
    if left_out and len(points) < 5:
        raise SpeechBudgetError(
            f"only {len(points)} of {len(every)} runs have at least {min_steps} optimizer steps (the law needs 5): "
            "give the pilots larger budgets or smaller batches, or lower --min-steps"
        )
    law = fit_law(
        [(p["params"], p["audio_hours"], p["unique_hours"], p["final_loss"]) for p in points],
        r_star=r_star,
        bootstrap=bootstrap,
        seed=seed,
    )
    law.pilots = pilot_settings([Path(p["exp_dir"]) for p in points])
    predicted = [law.predict(p["params"], p["audio_hours"], p["unique_hours"]) for p in points]
    errors = [abs(q - p["final_loss"]) / p["final_loss"] for p, q in zip(points, predicted)]
    out = Path(out)
    law.to_json(out)
    data = json.loads(out.read_text())
    data["fitted_on"] = [{**p, "predicted_loss": q} for p, q in zip(points, predicted)]
    data["mean_relative_error"] = statistics.fmean(errors)
    data["min_steps"], data["left_out"] = min_steps, left_out
    atomic.write_json(out, data, sort_keys=True)
    return {
        "law": law,
        "path": str(out),
        "points": data["fitted_on"],
        "mean_relative_error": data["mean_relative_error"],
        "left_out": left_out,
    }


def pilot_settings(run_dirs: Sequence[Path]) -> Optional[Dict[str, Any]]:
    """The schedule and batch size the pilots shared (from their run cards); None when they differ."""
    seen = []
    for d in run_dirs:
        config = _read_json(Path(d) / "run_card.json").get("config") or {}
        seen.append({"schedule": config.get("schedule"), "max_duration": config.get("max_duration")})
    return seen[0] if seen and all(s == seen[0] for s in seen) and seen[0]["schedule"] else None
