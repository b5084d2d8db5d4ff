"""The ``ssl_vgs:`` recipe section: one shared speech encoder, objectives with weights, phases.

A schedule is a list of phases run in order; each phase names its objectives with weights, its own
budget and what happens to the optimizer when it starts (``reset``: fresh moments, as the paper's
sequential runs; ``carry``: the previous phase's moments). Simultaneous training is one phase with
two objectives. A section holds either one schedule (``objectives:`` or ``phases:``) or several
named ones (``schedules: {sequential: [...], simultaneous: {...}}``), each in its own sub-folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..config import BudgetConfig, TrainConfig, from_dict, load_train_config, load_yaml
from ..errors import SpeechBudgetError

SECTION = "ssl_vgs"
OBJECTIVES = ("hubert", "vgs")
MULTI_KEYS = ("vgs", "schedules", "phases", "objectives")


@dataclass
class VGSOptions:
    """The VGS head and image side (see objectives/vgs.py)."""

    dim: int = 256
    pooling: str = "attention"  # attention | mean
    temperature: float = 0.1
    margin: float = 1.0
    image_size: int = 64
    layer: Optional[int] = None  # pool this encoder layer (1-based) instead of the output
    image_channels: List[int] = field(default_factory=lambda: [32, 64, 128, 256])
    image_features: Optional[str] = None  # precomputed image features (.npz / .npy): no CNN


@dataclass
class Phase:
    objectives: Dict[str, float]
    budget: BudgetConfig
    optimizer: str = "reset"  # reset | carry

    @property
    def label(self) -> str:
        return "+".join(k for k in OBJECTIVES if self.objectives.get(k, 0) > 0)


@dataclass
class MultiRecipe:
    train: TrainConfig
    vgs: VGSOptions
    schedules: Dict[str, List[Phase]]  # name -> phases; the name "" means exp_dir itself


def _weights(value: Any, where: str) -> Dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise SpeechBudgetError(
            f"{where}.objectives must map objectives to weights, e.g. {{hubert: 0.5, vgs: 0.5}}"
        )
    out = {}
    for k, w in value.items():
        if k not in OBJECTIVES:
            raise SpeechBudgetError(f"unknown objective {k!r} in {where}; known: {', '.join(OBJECTIVES)}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise SpeechBudgetError(f"{where}.objectives.{k} must be a weight >= 0, got {w!r}")
        out[k] = float(w)
    if not any(out.values()):
        raise SpeechBudgetError(f"{where}.objectives needs a positive weight")
    return out


def _phase(spec: Any, where: str, default_budget: BudgetConfig) -> Phase:
    if not isinstance(spec, Mapping):
        raise SpeechBudgetError(f"{where} must be a mapping with objectives, budget and optimizer")
    unknown = set(spec) - {"objectives", "budget", "optimizer"}
    if unknown:
        raise SpeechBudgetError(
            f"unknown key {sorted(unknown)[0]!r} in {where}; valid keys: objectives, budget, optimizer"
        )
    optimizer = spec.get("optimizer", "reset")
    if optimizer not in ("reset", "carry"):
        raise SpeechBudgetError(f"{where}.optimizer must be reset or carry, got {optimizer!r}")
    budget = (
        from_dict(BudgetConfig, spec["budget"], f"{where}.budget.") if "budget" in spec else default_budget
    )
    if not any(getattr(budget, k) for k in ("flops", "gpu_hours", "wall_hours", "audio_hours", "steps")):
        raise SpeechBudgetError(f"{where} needs a budget (flops, steps, ...)")
    return Phase(_weights(spec.get("objectives"), where), budget, optimizer)


def _phase_specs(spec: Any) -> List[Any]:
    """The phase mappings of one schedule as a recipe writes it (a list, one phase, or {phases: ...})."""
    if isinstance(spec, Mapping) and "phases" in spec:
        spec = spec["phases"]
    return [spec] if isinstance(spec, Mapping) else list(spec) if isinstance(spec, (list, tuple)) else []


def _uses_default_budget(multi: Mapping[str, Any]) -> bool:
    """Whether some phase has no budget of its own (and so takes the section's ``budget``)."""
    if "objectives" in multi:
        return True
    schedules = multi["schedules"].values() if isinstance(multi.get("schedules"), Mapping) else []
    specs = [p for sch in [*schedules, multi.get("phases") or []] for p in _phase_specs(sch)]
    return any(not (isinstance(p, Mapping) and "budget" in p) for p in specs)


def _schedule(spec: Any, where: str, default_budget: BudgetConfig) -> List[Phase]:
    phases = _phase_specs(spec)
    if not phases:
        raise SpeechBudgetError(f"{where} must be a list of phases or one phase with objectives")
    return [_phase(p, f"{where}[{i}]", default_budget) for i, p in enumerate(phases)]


def load_multi_recipe(
    recipe: Union[str, Path, Mapping[str, Any]], overrides: Sequence[str] = ()
) -> Tuple[MultiRecipe, Dict[str, Any]]:
    """(parsed section, the recipe as written). ``vgs.*`` overrides go to the VGS options, the rest
    to the training config as for ``pretrain``."""
    data = dict(recipe) if isinstance(recipe, Mapping) else load_yaml(recipe)
    section = dict(data.get(SECTION) or {})
    if not section:
        raise SpeechBudgetError(f"the recipe has no {SECTION}: section (see recipes/scenes-ssl-vgs.yaml)")
    multi = {k: section.pop(k) for k in MULTI_KEYS if k in section}
    keys = [o.split("=", 1)[0].removeprefix(f"{SECTION}.") for o in overrides]
    fixed = [k for k in keys if k.split(".")[0] in ("schedules", "phases", "objectives")]
    if fixed:
        raise SpeechBudgetError(
            f"{fixed[0]} cannot be set on the command line (phases are lists); edit {SECTION}.{fixed[0].split('.')[0]} "
            "in the recipe, or pick a schedule with --schedule"
        )
    if any(k.startswith("budget.") for k in keys) and not _uses_default_budget(multi):
        raise SpeechBudgetError(
            "every phase of this recipe sets its own budget, so a budget.* override would change nothing; "
            f"edit the phases' budgets in {SECTION} instead"
        )
    vgs_over = [o.split(".", 1)[1] for o in overrides if o.startswith("vgs.")]
    vgs_over += [o[len(SECTION) + 5 :] for o in overrides if o.startswith(f"{SECTION}.vgs.")]
    rest = [o for o in overrides if not (o.startswith("vgs.") or o.startswith(f"{SECTION}.vgs."))]
    train = load_train_config({**data, SECTION: section}, SECTION, rest)
    from ..config import deep_merge, parse_overrides

    vgs = from_dict(VGSOptions, deep_merge(multi.get("vgs") or {}, parse_overrides(vgs_over)), "vgs.")
    rules = [
        ("pooling", vgs.pooling in ("attention", "mean"), "must be attention or mean"),
        ("temperature", vgs.temperature > 0, "must be positive (the similarities are divided by it)"),
        ("margin", vgs.margin >= 0, "must be 0 or more"),
        ("dim", vgs.dim >= 1, "must be at least 1"),
        ("image_size", vgs.image_size >= 8, "must be at least 8 (pixels)"),
        ("layer", vgs.layer is None or vgs.layer >= 1, "must be 1 or more (layers count from 1)"),
        ("image_channels", bool(vgs.image_channels) and min(vgs.image_channels) >= 1, "must be positive"),
    ]
    for key, ok, msg in rules:
        if not ok:
            raise SpeechBudgetError(f"config key '{SECTION}.vgs.{key}' {msg}")
    given = [k for k in ("schedules", "phases", "objectives") if k in multi]
    if len(given) != 1:
        raise SpeechBudgetError(f"{SECTION} needs exactly one of schedules, phases or objectives")
    if "schedules" in multi:
        if not isinstance(multi["schedules"], Mapping) or not multi["schedules"]:
            raise SpeechBudgetError(f"{SECTION}.schedules must map names to lists of phases")
        schedules = {
            str(n): _schedule(s, f"{SECTION}.schedules.{n}", train.budget)
            for n, s in multi["schedules"].items()
        }
    elif "phases" in multi:
        schedules = {"": _schedule(multi["phases"], f"{SECTION}.phases", train.budget)}
    else:
        schedules = {"": _schedule({"objectives": multi["objectives"]}, SECTION, train.budget)}
    return MultiRecipe(train, vgs, schedules), data


def phase_config(train: TrainConfig, phase: Phase, exp_dir: Path) -> TrainConfig:
    return dataclasses.replace(train, exp_dir=str(exp_dir), budget=phase.budget)
