"""Pilots that plan themselves: `plan --pilot-fraction` designs them, a recipe's `plan:` stage runs
pilots -> fit -> plan -> pretrain and spends the pilots out of the budget (issue 19, item 4)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import TINY, cli_result

from speechbudget.config import load_yaml
from speechbudget.errors import SpeechBudgetError
from speechbudget.plan.pilots import PILOT_SPAN, design_pilots
from speechbudget.plan.planner import BudgetSpec, candidate_costs, plan
from speechbudget.plan.sweep import recipe_pilots

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["zipformer-nano", "zipformer-tiny", "zipformer-xs"]

pytestmark = pytest.mark.usefixtures("private_cache_dir")


@pytest.fixture(scope="module")
def candidates(private_cache_dir):
    return candidate_costs(presets=PRESETS, grid="none")


def prior(candidates, budget=3e13, unit="flops", device="cpu", data_hours=1.7, max_duration=20.0):
    return plan(BudgetSpec(budget, unit, device), data_hours, candidates, max_duration=max_duration)


def test_design_spends_the_fraction_on_sizes_and_budgets(candidates):
    p = prior(candidates)
    d = design_pilots(p, 0.2, min_steps=30)
    assert math.isclose(d.cost, 0.2 * 3e13, rel_tol=1e-9) and math.isclose(d.flops, d.cost, rel_tol=1e-9)
    assert len(d.sizes) >= 3 and len(d.levels) >= 2 and len(d.pilots) >= 5
    assert all(x.steps >= 30 for x in d.pilots)  # none still in the initial transient
    budgets = sorted({x.cost for x in d.pilots})
    assert math.isclose(budgets[-1] / budgets[0], PILOT_SPAN ** (max(d.levels) / 2), rel_tol=1e-9)
    # around the prior's choice at the full budget and below it (a pilot's optimum is smaller)
    by_name = {r.name: r.params for r in p.candidates}
    assert min(by_name[s] for s in d.sizes) <= by_name[p.recommended.name] <= max(by_name[s] for s in d.sizes)


def test_design_in_gpu_hours_sums_in_gpu_hours(candidates):
    p = prior(candidates, budget=20, unit="gpu-hours", device="a100", data_hours=960, max_duration=350)
    d = design_pilots(p, 0.05)
    assert math.isclose(sum(x.cost for x in d.pilots), 0.05 * 20, rel_tol=1e-9)
    rows = {r.name: r for r in p.candidates}
    for x in d.pilots:  # FLOPs at the rate the plan converts GPU-hours for that candidate
        assert math.isclose(x.flops, x.cost * rows[x.name].budget_flops / 20, rel_tol=1e-9)


def test_too_small_a_fraction_names_the_one_that_works(candidates):
    p = prior(candidates, budget=1.5e13)
    with pytest.raises(SpeechBudgetError, match=r"give --pilot-fraction ([0-9.]+) or more") as e:
        design_pilots(p, 0.1, min_steps=30)
    need = float(str(e.value).split("--pilot-fraction ")[1].split()[0])
    assert 0.1 < need < 0.5
    assert design_pilots(p, need, min_steps=30).pilots  # and that one does


@pytest.mark.parametrize("fraction", ["0", "-0.1", "0.5", "0.9", "nan"])
def test_bad_fractions_are_one_line_errors(capsys, fraction):
    code, _, err = cli_result(
        capsys, "plan", "--budget", "1e13", "--unit", "flops", "--device", "cpu", "--data-hours", "1",
        "--pilot-fraction", fraction,
    )  # fmt: skip
    assert code == 2 and "--pilot-fraction must be above 0 and below 0.5" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_plan_writes_the_design_that_sweep_reads(capsys, tmp_path):
    out = tmp_path / "pilots.yaml"
    args = ["plan", "--budget", "3e13", "--unit", "flops", "--device", "cpu", "--data-hours", "1.7"]
    args += ["--max-duration", "20", "--presets", ",".join(PRESETS), "--pilot-fraction", "0.2"]
    code, stdout, err = cli_result(capsys, *args, "--min-steps", "30", "--out", out, "--json")
    assert code == 0, err
    design = json.loads(stdout)
    pilots = recipe_pilots(load_yaml(out))
    assert [(x.name, x.flops) for x in pilots] == [(x["name"], x["flops"]) for x in design["pilots"]]
    assert math.isclose(sum(x.flops for x in pilots), 0.2 * 3e13, rel_tol=1e-9)
    assert load_yaml(out)["pretrain"]["schedule"]["name"] == "cosine"
    code, _, err = cli_result(
        capsys, "sweep", "--recipe", ROOT / "bench" / "planner.yaml", "--out", tmp_path / "s"
    )
    assert code == 2 and "lists no pilots" in err  # a recipe without a design needs --presets/--budgets


PLAN = [
    "plan.budget=8e11",
    "plan.unit=flops",
    f"plan.presets=[{','.join(PRESETS)}]",
    "plan.pilot_fraction=0.25",
    "plan.pilot_sizes=3",
    "plan.pilot_budgets=2",
    "plan.min_steps=1",
    "plan.bootstrap=5",
    "plan.use_recommendation=true",
]


def test_self_planning_recipe_spends_its_pilots_out_of_the_budget(tmp_path, capsys):
    exp = tmp_path / "qs"
    run = ["run", ROOT / "recipes" / "quickstart.yaml", f"exp_dir={exp}", *TINY, *PLAN]
    code, stdout, err = cli_result(capsys, *run, "--stop-stage", "pretrain", "--json")
    assert code == 0, err[-3000:]
    results = json.loads(stdout)
    assert list(results) == ["prepare", "plan", "kmeans", "pretrain"]
    rec = results["plan"]["pilots"]
    summaries = {p.parent.name: json.loads(p.read_text()) for p in (exp / "pilots").glob("*/summary.json")}
    assert len(summaries) == len(rec["runs"]) >= 5
    spent = sum(s["flops"] for s in summaries.values())  # measured, not planned
    assert math.isclose(rec["spent_flops"], spent) and math.isclose(rec["share_of_budget"], spent / 8e11)
    assert rec["spent_flops"] >= 0.25 * 8e11  # a run stops at most one step over its budget
    best = results["plan"]["recommended"]
    assert math.isclose(best["budget_flops"], 8e11 - spent, rel_tol=1e-9)  # the rest, not the total
    assert rec["law"] and json.loads((exp / "pilots" / "law.json").read_text())["calibrated"]
    assert results["plan"]["calibrated"] and rec["chosen"]["name"] == best["name"]
    card = json.loads((exp / "pretrain" / "run_card.json").read_text())
    assert card["config"]["encoder"] == best["preset"]
    assert math.isclose(card["budget"]["flops"], 8e11 - spent, rel_tol=1e-9)
    # the report says what the pilots cost
    code, _, err = cli_result(capsys, "report", exp / "pretrain", "--out", tmp_path / "report")
    assert code == 0, err
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Pilots that planned this run" in md and f"{100 * spent / 8e11:.1f}% of 8e+11 flops" in md

    # a killed sweep: the plan redone, one pilot lost; only that one trains again
    first = sorted(summaries)[0]
    shutil.rmtree(exp / "pilots" / first)
    kept = {n: (exp / "pilots" / n / "metrics.jsonl").stat().st_mtime_ns for n in summaries if n != first}
    code, stdout, err = cli_result(capsys, *run, "--stage", "plan", "--stop-stage", "plan", "--json")
    assert code == 0, err[-3000:]
    again = {
        Path(r["exp_dir"]).name: r for r in json.loads((exp / "pilots" / "sweep.json").read_text())["runs"]
    }
    assert {n for n, r in again.items() if not r["already_done"]} == {first}
    assert all((exp / "pilots" / n / "metrics.jsonl").stat().st_mtime_ns == t for n, t in kept.items())
