"""The prior law fitted to published runs: the shipped file is current, and `plan` with it puts
the optimum where published runs put theirs (HuBERT Base, HuBERT Large, one A100-hour), with a range."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import cli_result as run

from speechbudget import cli, cli_plan
from speechbudget.plan import planner, scaling

torch.set_num_threads(1)
cli_plan.register(cli.app)
pytestmark = pytest.mark.usefixtures("private_cache_dir")


@pytest.fixture(scope="module")
def transformers(private_cache_dir):
    """The HuBERT-shaped family: presets + the full width x depth grid (0.4M to 311M)."""
    return planner.candidate_costs("transformer", "full")


def _flops_of(cands, params: float, hours: float) -> float:
    """What our counter charges a published run: its hours x the closest candidate's cost per hour."""
    nearest = min(cands, key=lambda c: abs(math.log(c.params / params)))
    return hours * nearest.flops_per_hour


def _runs():
    return {r["id"]: r for r in scaling.load_published_runs()}


def test_shipped_prior_is_the_fit_of_the_shipped_runs():
    law = scaling.fit_prior(scaling.load_published_runs(), bootstrap=0)
    for name in ("E", "A", "alpha", "B", "beta", "r_star"):
        assert getattr(scaling.DEFAULT_LAW, name) == pytest.approx(getattr(law, name), rel=1e-3), name
    assert not scaling.DEFAULT_LAW.calibrated and len(scaling.DEFAULT_LAW.samples) >= 100


def test_every_run_has_a_source_and_arithmetic():
    rows = scaling.load_published_runs()
    assert len(rows) >= 8 and sum(r["use"] == "fit" for r in rows) >= 6
    for r in rows:
        assert r["source"] and r["arithmetic"] and r["basis"] in ("published", "assumed"), r["id"]
        assert r["params"] > 0 and r["unique_hours"] > 0 and r["processed_hours"] > 0


def test_the_prior_puts_the_optimum_near_the_published_choices():
    rows = [r for r in scaling.load_published_runs() if r["use"] == "fit"]
    ratios = [math.exp(x) for x in scaling.frontier_residuals(scaling.DEFAULT_LAW, rows)]
    assert all(0.4 < q < 2.5 for q in ratios), ratios  # the guess law missed 960-h runs by 3-17x


def test_plan_at_hubert_base_compute_recommends_a_base_size(transformers):
    r = _runs()["hubert-base"]
    budget = planner.BudgetSpec(_flops_of(transformers, r["params"], r["processed_hours"]), "flops")
    p = planner.plan(budget, 960.0, transformers, calibration={"devices": {}})
    assert 60e6 <= p.recommended.params <= 150e6
    assert p.interval.low <= p.recommended.params <= p.interval.high
    assert p.interval.low < p.interval.high  # an uncalibrated prior is not sure to one candidate
    # the guess law sent the same budget to the largest candidate
    guess = planner.plan(budget, 960.0, transformers, law=scaling.GUESS_LAW, calibration={"devices": {}})
    assert guess.recommended.params > 300e6


def test_plan_at_hubert_large_compute_recommends_a_large_size(transformers):
    r = _runs()["hubert-large"]
    budget = planner.BudgetSpec(_flops_of(transformers, r["params"], r["processed_hours"]), "flops")
    p = planner.plan(budget, 60000.0, transformers, calibration={"devices": {}})
    assert 200e6 <= p.recommended.params <= 600e6


def test_one_a100_hour_recommends_something_small(transformers):
    p = planner.plan(
        planner.BudgetSpec(1, "gpu-hours", "a100"), 960.0, transformers, calibration={"devices": {}}
    )
    assert p.recommended.params < 30e6 and p.interval.high < 30e6


def test_plausible_candidates_are_those_inside_the_range(transformers):
    p = planner.plan(
        planner.BudgetSpec(10, "gpu-hours", "a100"), 960.0, transformers, calibration={"devices": {}}
    )
    inside = [r for r in p.candidates if p.interval.low <= r.params <= p.interval.high]
    assert {r.name for r in inside} == {r.name for r in p.candidates if r.plausible}
    assert len(inside) > 1 and p.recommended.plausible
    assert sum(r.p_best for r in p.candidates) == pytest.approx(1.0)
    line = next(n for n in p.notes if n.startswith("uncalibrated prior: the best size is"))
    assert "run pilots to narrow it" in line


def test_a_law_without_refits_says_it_has_no_range():
    law = scaling.ScalingLaw(**{k: getattr(scaling.GUESS_LAW, k) for k in scaling.COEFFICIENTS})
    cands = [("a", 1e6, 6e6 * 180000), ("b", 1e7, 6e7 * 180000)]
    assert scaling.best_size_interval(law, 1e17, cands, 100.0) is None


def test_cli_json_carries_the_range(capsys):
    code, out, err = run(
        capsys,
        "plan",
        "--budget",
        100,
        "--unit",
        "gpu-hours",
        "--device",
        "a100",
        "--data-hours",
        960,
        "--family",
        "transformer",
        "--grid",
        "small",
        "--json",
    )
    assert code == 0, err
    d = json.loads(out)
    iv = d["best_size_interval"]
    assert iv["level"] == 0.9 and iv["samples"] >= 100 and iv["low_params"] <= iv["high_params"]
    assert d["recommended"]["name"] in iv["candidates"]
    assert all(c["plausible"] == (c["name"] in iv["candidates"]) for c in d["candidates"])
    assert any(line.startswith("uncalibrated prior: the best size is") for line in d["explanation"])
