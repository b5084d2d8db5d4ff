"""Scaling law: data-constrained effective hours, fitting on pilot runs, JSON, budget allocation."""

import json
import math

import numpy as np
import pytest

from speechbudget.errors import SpeechBudgetError
from speechbudget.plan.scaling import (
    COEFFICIENTS,
    DEFAULT_LAW,
    DEFAULT_R_STAR,
    GUESS_LAW,
    ScalingLaw,
    effective_hours,
    fit_law,
    optimal_allocation,
)

# A law unlike DEFAULT_LAW, so the fit is not accidentally helped by the defaults.
TRUE_LAW = ScalingLaw(E=2.2, A=300.0, alpha=0.4, B=6.0, beta=0.3, r_star=DEFAULT_R_STAR)
FRAMES_PER_HOUR = 50 * 3600  # one "token" per 20 ms frame


def pilot_points(law, sizes, hours, repeat_every=3, noise=0.003, seed=0):
    """(N, D, U, loss) grid; every ``repeat_every``-th run loops a corpus 4x smaller than D."""
    rng = np.random.default_rng(seed)
    points = []
    for i, (n, d) in enumerate((n, d) for n in sizes for d in hours):
        u = d / 4 if i % repeat_every == 0 else d
        loss = law.predict(n, d, u) * math.exp(rng.normal(0.0, noise))
        points.append((n, d, u, loss))
    return points


@pytest.fixture(scope="module")
def fitted():
    points = pilot_points(TRUE_LAW, [1e6, 3e6, 1e7, 3e7, 1e8], [10, 30, 100, 300, 1000, 3000])
    return fit_law(points, bootstrap=30, seed=0)


# --- effective hours ---------------------------------------------------------------------------


def test_effective_hours_equal_hours_within_one_epoch():
    hours = np.array([1.0, 50.0, 99.9, 100.0])
    np.testing.assert_allclose(effective_hours(hours, 100.0, r_star=15.0), hours)
    np.testing.assert_allclose(effective_hours(hours * 1e3, None), hours * 1e3)


def test_effective_hours_are_monotone_and_saturate_at_u_times_one_plus_r_star():
    unique, r_star = 100.0, 15.0
    hours = np.geomspace(1.0, 1e7, 400)
    eff = effective_hours(hours, unique, r_star)
    assert np.all(np.diff(eff) >= 0)
    assert np.all(np.diff(eff[hours < 100 * unique]) > 0)  # strictly, until floats saturate
    assert np.all(eff <= hours + 1e-9)
    ceiling = unique * (1 + r_star)
    assert np.all(eff <= ceiling)
    assert effective_hours(10 * r_star * unique, unique, r_star) < ceiling
    assert eff[-1] == pytest.approx(ceiling, rel=1e-9)
    # Early repeats are worth nearly as much as fresh data; late ones almost nothing.
    assert effective_hours(200.0, unique, r_star) == pytest.approx(200.0, rel=0.04)
    assert effective_hours(100 * 60, unique, r_star) < 0.3 * 100 * 60


def test_repetition_raises_predicted_loss():
    fresh = DEFAULT_LAW.predict(1e7, 1000.0, unique_hours=1000.0)
    assert DEFAULT_LAW.predict(1e7, 1000.0) == pytest.approx(fresh)
    looped = DEFAULT_LAW.predict(1e7, 1000.0, unique_hours=50.0)
    assert looped > fresh
    assert DEFAULT_LAW.predict(1e7, 1000.0, unique_hours=50.0) < DEFAULT_LAW.predict(1e7, 50.0)


def test_predict_is_vectorised():
    losses = DEFAULT_LAW.predict(np.array([1e6, 1e7, 1e8]), 100.0)
    assert losses.shape == (3,)
    assert np.all(np.diff(losses) < 0)


def test_default_law_is_uncalibrated_and_plausible_for_hubert_targets():
    # an uncalibrated prior: fitted to published runs' sizes, not to the user's pilots, with refits
    assert DEFAULT_LAW.calibrated is False and DEFAULT_LAW.samples
    tiny = DEFAULT_LAW.predict(1e6, 10.0)
    hubert_base = DEFAULT_LAW.predict(95e6, 311e3, unique_hours=960.0)
    assert DEFAULT_LAW.E < hubert_base < tiny < math.log(500)
    assert 2.7 < hubert_base < 3.3


# --- fitting -----------------------------------------------------------------------------------


def test_fit_recovers_exponents(fitted):
    assert fitted.calibrated
    assert fitted.alpha == pytest.approx(TRUE_LAW.alpha, rel=0.1)
    assert fitted.beta == pytest.approx(TRUE_LAW.beta, rel=0.1)
    assert fitted.E == pytest.approx(TRUE_LAW.E, rel=0.1)


def test_fit_predicts_held_out_runs_within_one_percent(fitted):
    held_out = pilot_points(TRUE_LAW, [2e6, 5e7], [20, 2000], repeat_every=2, noise=0.0, seed=1)
    for n, d, u, loss in held_out:
        assert fitted.predict(n, d, u) == pytest.approx(loss, rel=0.01)


def test_bootstrap_intervals_bracket_the_fit(fitted):
    assert set(fitted.ci) == set(COEFFICIENTS)
    for name, (low, high) in fitted.ci.items():
        value = getattr(fitted, name)
        assert low <= high
        # Percentile intervals need not contain the point fit exactly; allow a hair of slack.
        assert low * 0.98 <= value <= high * 1.02, name


def test_fit_is_robust_to_one_diverged_pilot():
    points = pilot_points(TRUE_LAW, [1e6, 3e6, 1e7, 3e7, 1e8], [10, 30, 100, 300, 1000, 3000])
    n, d, u, loss = points[7]
    points[7] = (n, d, u, loss * 1.5)  # a run that blew up
    law = fit_law(points, bootstrap=0)
    assert law.alpha == pytest.approx(TRUE_LAW.alpha, rel=0.1)
    assert law.beta == pytest.approx(TRUE_LAW.beta, rel=0.1)


def test_fit_needs_at_least_five_points():
    points = pilot_points(TRUE_LAW, [1e6, 1e7], [10, 100])
    with pytest.raises(SpeechBudgetError, match="at least 5"):
        fit_law(points[:4], bootstrap=0)


@pytest.mark.parametrize("bad", [(1e6, 10.0, 10.0, -1.0), (0.0, 10.0, 10.0, 4.0), (1e6, 10.0)])
def test_fit_rejects_malformed_points(bad):
    points = pilot_points(TRUE_LAW, [1e6, 1e7], [10, 100, 1000])
    with pytest.raises(SpeechBudgetError):
        fit_law(points + [bad], bootstrap=0)


# --- JSON --------------------------------------------------------------------------------------


def test_json_round_trip(tmp_path, fitted):
    path = tmp_path / "law" / "scaling_law.json"
    fitted.to_json(path)
    assert ScalingLaw.from_json(path) == fitted
    assert [p.name for p in path.parent.iterdir()] == ["scaling_law.json"]  # no temp leftovers
    DEFAULT_LAW.to_json(path)  # overwrite in place
    assert ScalingLaw.from_json(path) == DEFAULT_LAW


def test_from_json_errors_are_user_errors(tmp_path):
    with pytest.raises(SpeechBudgetError, match="does not exist"):
        ScalingLaw.from_json(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"E": 2.0, "A": 1.0}))
    with pytest.raises(SpeechBudgetError, match="alpha"):
        ScalingLaw.from_json(broken)


# --- allocation --------------------------------------------------------------------------------


def transformer_candidates(sizes=(1e6, 3e6, 1e7, 3e7, 1e8, 3e8, 1e9)):
    """Forward + backward costs ~6 FLOPs per parameter per frame."""
    return [(f"{n / 1e6:g}M", n, 6 * n * FRAMES_PER_HOUR) for n in sizes]


def best(allocations):
    (winner,) = [a for a in allocations if a.best]
    return winner


def test_allocation_spends_the_budget_and_sorts_by_loss():
    allocations = optimal_allocation(DEFAULT_LAW, 1e18, transformer_candidates(), unique_hours=5e4)
    losses = [a.loss for a in allocations]
    assert losses == sorted(losses)
    assert allocations[0].best and sum(a.best for a in allocations) == 1
    for a in allocations:
        assert a.hours * a.flops_per_hour == pytest.approx(1e18)
        assert a.epochs == pytest.approx(a.hours / 5e4)
        assert a.loss == pytest.approx(DEFAULT_LAW.predict(a.params, a.hours, 5e4))


# The two mechanics below use the first default (R* = 15 makes looping expensive): the prior's R* of
# 1,000 barely discounts 30 epochs, so it moves sizes less.
def test_compute_optimal_model_grows_with_the_budget():
    sizes = [
        best(optimal_allocation(GUESS_LAW, c, transformer_candidates())).params
        for c in (1e15, 1e17, 1e19, 1e21)
    ]
    assert sizes == sorted(sizes)
    assert sizes[0] < sizes[-1]
    assert sizes[0] <= 1e7 and sizes[-1] >= 1e9


def test_scarce_data_favours_a_larger_model_that_loops_less():
    budget, candidates = 1e18, transformer_candidates()
    plenty = best(optimal_allocation(GUESS_LAW, budget, candidates))
    scarce_hours = plenty.hours / 30
    scarce = optimal_allocation(GUESS_LAW, budget, candidates, unique_hours=scarce_hours)
    winner = best(scarce)
    same_as_plenty = next(a for a in scarce if a.name == plenty.name)
    assert winner.params > plenty.params
    assert winner.epochs < same_as_plenty.epochs
    assert winner.loss < same_as_plenty.loss


def test_allocation_rejects_bad_inputs():
    with pytest.raises(SpeechBudgetError, match="budget"):
        optimal_allocation(DEFAULT_LAW, 0.0, transformer_candidates())
    with pytest.raises(SpeechBudgetError, match="candidate"):
        optimal_allocation(DEFAULT_LAW, 1e18, [])
    with pytest.raises(SpeechBudgetError, match="unique_hours"):
        optimal_allocation(DEFAULT_LAW, 1e18, transformer_candidates(), unique_hours=-5)
    with pytest.raises(SpeechBudgetError, match="tiny"):
        optimal_allocation(DEFAULT_LAW, 1e18, [("tiny", 1e6, 0.0)])
