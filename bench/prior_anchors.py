"""The prior law against published runs: at each run's compute and data, what `plan` recommends.

For every row of speechbudget/plan/published_runs.csv the budget is the FLOPs our counter charges
the authors' own run (its processed hours x the training FLOPs per hour of our candidate closest in
size within the run's family), on the run's unique hours. Candidates: the transformer family's
presets + full width x depth grid (HuBERT / wav2vec 2.0 rows), the zipformer presets + small grid
(k2SSL and quickstart rows). Before = the first default law (GUESS_LAW), after = DEFAULT_LAW.

    OMP_NUM_THREADS=1 python bench/prior_anchors.py     # ~1 min; prints a markdown table
"""

from __future__ import annotations

import math

from speechbudget.plan import planner, scaling


def _candidates():
    return {
        "transformer": planner.candidate_costs("transformer", "full"),
        "zipformer": planner.candidate_costs("zipformer", "small"),
    }


def _plan(budget, data_hours, cands, law):
    return planner.plan(budget, data_hours, cands, law=law, calibration={"devices": {}})


def _fmt(p) -> str:
    best = p.recommended
    iv = p.interval
    rng = "" if iv is None else f" [{iv.low / 1e6:.3g}-{iv.high / 1e6:.3g}M]"
    return f"{best.name} {best.params / 1e6:.3g}M{rng}, {best.epochs:.3g} ep"


def main() -> None:
    cands = _candidates()
    rows = scaling.load_published_runs()
    residuals = dict(zip([r["id"] for r in rows], scaling.frontier_residuals(scaling.DEFAULT_LAW, rows)))
    print(
        "| run | data h | hardware | compute (our FLOPs) | authors' model | before (guess law) | after (prior law) [90% range] | law's continuous optimum / authors' N |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        family = cands[r["family"]]
        nearest = min(family, key=lambda c: abs(math.log(c.params / r["params"])))
        flops = r["processed_hours"] * nearest.flops_per_hour
        budget = planner.BudgetSpec(flops, "flops")
        before = _plan(budget, r["unique_hours"], family, scaling.GUESS_LAW)
        after = _plan(budget, r["unique_hours"], family, scaling.DEFAULT_LAW)
        print(
            f"| {r['model']}{'' if r['use'] == 'fit' else ' (not fitted)'} | {r['unique_hours']:g} | {r['hardware']} | {flops:.3g} | {r['params'] / 1e6:.3g}M, "
            f"{r['processed_hours'] / r['unique_hours']:.3g} ep | {_fmt(before)} | {_fmt(after)} | "
            f"{math.exp(residuals[r['id']]):.2f} |"
        )
    for hours in (1.0, 10.0, 100.0):
        budget = planner.BudgetSpec(hours, "gpu-hours", "a100")
        before = _plan(budget, 960.0, cands["transformer"], scaling.GUESS_LAW)
        after = _plan(budget, 960.0, cands["transformer"], scaling.DEFAULT_LAW)
        print(
            f"| {hours:g} A100-hour(s), transformer grid | 960 | 1 A100 | {after.recommended.budget_flops:.3g} | - | "
            f"{_fmt(before)} | {_fmt(after)} | - |"
        )


if __name__ == "__main__":
    main()
