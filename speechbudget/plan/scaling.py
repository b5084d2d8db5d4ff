"""A scaling law for the SSL pretraining loss, its fit on pilot runs, and budget allocation.

The law has the Chinchilla form (Hoffmann et al. 2022)

    L(N, D) = E + A / N**alpha + B / D_eff**beta

with N the parameter count and D the hours of audio processed (unique hours U times epochs).
Speech corpora are small next to text, so budgets often buy more hours than exist and the data
gets looped. Repeated audio is worth less each time; following Muennighoff et al. 2023
("Scaling Data-Constrained Language Models") the hours processed are replaced by an effective
amount that saturates:

    D_eff = D                                           if D <= U
    D_eff = U + U * R* * (1 - exp(-(D / U - 1) / R*))   otherwise

so that looping forever is worth at most U * (1 + R*) fresh hours. R* is the characteristic
number of repetitions after which extra epochs stop helping.

Two ways to get the coefficients. ``fit_law`` fits losses of the user's own pilot runs. Without
pilots, DEFAULT_LAW is a prior fitted by ``fit_prior`` to published runs (published_runs.csv), which
publish no loss on a common scale: each run's model size is taken as near-optimal at its compute and
data, and the law's optimum is fitted to those sizes (a compute-optimal-frontier fit). Both keep
their bootstrap refits, from which a plan reports the range of its best model size.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp
from threadpoolctl import threadpool_limits

from speechbudget.errors import SpeechBudgetError

from .. import atomic

# Muennighoff et al. fit R_D* = 15.4 for repeated tokens in language models; no speech fit exists,
# so we use the same order of magnitude. fit_law takes it as a fixed input, not a free parameter:
# pilot runs rarely loop enough to identify it.
DEFAULT_R_STAR = 15.0

COEFFICIENTS = ("E", "A", "alpha", "B", "beta")
HUBER_DELTA = 1e-3


def effective_hours(hours, unique_hours=None, r_star: float = DEFAULT_R_STAR):
    """Hours of fresh audio that ``hours`` processed over ``unique_hours`` of data are worth.

    ``unique_hours=None`` means unlimited data (every hour is fresh). Works on arrays.
    """
    d = np.asarray(hours, dtype=float)
    if unique_hours is None:
        return d
    if r_star <= 0:
        raise SpeechBudgetError(f"r_star must be > 0, got {r_star}")
    u = np.asarray(unique_hours, dtype=float)
    repeats = np.maximum(d / u - 1.0, 0.0)
    # min(d, u) is d for the first epoch and u afterwards, so both branches are one expression.
    return np.minimum(d, u) + u * r_star * -np.expm1(-repeats / r_star)


@dataclass
class ScalingLaw:
    """Coefficients of L(N, D) = E + A/N^alpha + B/D_eff^beta (loss in nats, D in hours).

    ``calibrated`` says whether the numbers were fitted on pilot runs or are the defaults;
    ``ci`` holds 95% bootstrap intervals ``{name: (low, high)}`` when fitted; ``samples`` the
    bootstrap refits themselves (``{name: value}``, r_star included), from which a plan draws the
    range of its best model size.
    """

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    r_star: float = DEFAULT_R_STAR
    calibrated: bool = False
    ci: dict[str, tuple[float, float]] | None = None
    #: how the pilots were trained ({"schedule": {...}, "max_duration": s}): the law describes runs
    #: trained that way, so a plan made with it writes recipes that train that way too
    pilots: dict | None = None
    samples: list[dict[str, float]] | None = None

    def pilot(self, key: str):
        """How the pilots were trained (``schedule``, ``max_duration``); None when not recorded."""
        return (self.pilots or {}).get(key)

    def predict(self, params, hours, unique_hours=None):
        """Predicted loss for ``params`` parameters trained on ``hours`` processed hours of
        audio drawn from ``unique_hours`` distinct hours (None: no repetition)."""
        n = np.asarray(params, dtype=float)
        d_eff = effective_hours(hours, unique_hours, self.r_star)
        if np.any(n <= 0) or np.any(d_eff <= 0):
            raise SpeechBudgetError("params and hours must be > 0 to predict a loss")
        loss = self.E + self.A / n**self.alpha + self.B / d_eff**self.beta
        return float(loss) if np.ndim(loss) == 0 else loss

    def to_json(self, path: str | Path) -> None:
        """Save atomically, so a planner never reads a half-written law."""
        data = asdict(self)
        if self.ci is not None:
            data["ci"] = {k: [float(lo), float(hi)] for k, (lo, hi) in self.ci.items()}
        atomic.write_json(path, data, sort_keys=True)

    @classmethod
    def from_json(cls, path: str | Path) -> ScalingLaw:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise SpeechBudgetError(f"scaling law file {path} does not exist") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise SpeechBudgetError(f"cannot read scaling law {path}: {exc}") from exc
        missing = [k for k in COEFFICIENTS if k not in data]
        if missing:
            raise SpeechBudgetError(f"scaling law {path} lacks {', '.join(missing)}")
        ci = data.get("ci")
        return cls(
            **{k: float(data[k]) for k in COEFFICIENTS},
            r_star=float(data.get("r_star", DEFAULT_R_STAR)),
            calibrated=bool(data.get("calibrated", False)),
            ci=None if ci is None else {k: (float(v[0]), float(v[1])) for k, v in ci.items()},
            pilots=data.get("pilots"),
            samples=data.get("samples"),
        )

    def resampled(self) -> list[ScalingLaw]:
        """One law per bootstrap refit (empty when the law has none)."""
        return [
            ScalingLaw(**{k: float(s[k]) for k in COEFFICIENTS}, r_star=float(s.get("r_star", self.r_star)))
            for s in self.samples or []
        ]


# The first uncalibrated default, kept for comparison (BENCHMARKS.md 5): Chinchilla's exponents
# with A and B guessed. Its parameter term dominates, so once data repeats it sends compute to the
# largest model at every budget. DEFAULT_LAW, fitted to published runs, replaced it.
GUESS_LAW = ScalingLaw(E=2.5, A=130.0, alpha=0.34, B=3.9, beta=0.28, calibrated=False)

#: the prior law fitted to published runs (fit_prior on published_runs.csv), shipped as data so that
#: importing the planner fits nothing; a test refits it and checks the file is current
PRIOR_LAW_PATH = Path(__file__).with_name("prior_law.json")
PUBLISHED_RUNS_PATH = Path(__file__).with_name("published_runs.csv")
DEFAULT_LAW = ScalingLaw.from_json(PRIOR_LAW_PATH)


# ---------------------------------------------------------------------------------------------
# Fitting (Chinchilla approach 3)

# theta = (a, b, e, alpha, beta) with A = exp(a), B = exp(b), E = exp(e): positivity for free.
# The grid covers E in [0.37, 4.5] nats, exponents in [0.1, 1], and prefactors over many decades
# (N spans 1e5-1e9 and D 1-1e6 hours, so A and B can be large).
_GRID = {
    "a": (0.0, 5.0, 10.0, 15.0, 20.0),
    "b": (0.0, 2.5, 5.0, 10.0),
    "e": (-1.0, 0.0, 0.5, 1.0, 1.5),
    "alpha": (0.1, 0.3, 0.5, 1.0),
    "beta": (0.1, 0.3, 0.5, 1.0),
}
_BOUNDS = [(-30.0, 60.0), (-30.0, 60.0), (-10.0, 5.0), (1e-3, 3.0), (1e-3, 3.0)]


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss divided by delta (same minimiser, better-scaled numbers) and its derivative."""
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r**2 / delta, np.abs(r) - 0.5 * delta)
    grad = np.clip(r / delta, -1.0, 1.0)
    return value, grad


def _objective(theta, log_n, log_d, log_loss, delta):
    """Mean Huber loss between log predicted and log observed loss, with its gradient.

    Written out by hand (no scipy logsumexp, no stacking): it runs ~10^5 times per fit.
    """
    a, b, e, alpha, beta = theta
    t_n = a - alpha * log_n
    t_d = b - beta * log_d
    top = np.maximum(np.maximum(t_n, t_d), e)
    w_n, w_d, w_e = np.exp(t_n - top), np.exp(t_d - top), np.exp(e - top)
    total = w_n + w_d + w_e
    log_pred = top + np.log(total)
    value, dvalue = _huber(log_pred - log_loss, delta)
    # d log_pred / d term_i is the softmax weight of term i.
    g_n, g_d, g_e = dvalue * w_n / total, dvalue * w_d / total, dvalue * w_e / total
    m = len(log_n)
    grad = np.array([g_n.sum(), g_d.sum(), g_e.sum(), -(g_n @ log_n), -(g_d @ log_d)])
    return value.sum() / m, grad / m


def _grid_values(log_n, log_d, log_loss, delta) -> tuple[np.ndarray, np.ndarray]:
    """All grid starting points and their objective values, evaluated in one vectorised pass."""
    starts = np.array(list(product(*_GRID.values())))
    a, b, e, alpha, beta = (starts[:, i : i + 1] for i in range(5))
    e = np.broadcast_to(e, (len(starts), len(log_n)))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, e])
    log_pred = logsumexp(terms, axis=0)
    value, _ = _huber(log_pred - log_loss, delta)
    return starts, value.mean(axis=1)


def _minimise(data, starts) -> tuple[np.ndarray, float]:
    """Run L-BFGS-B from each start and keep the lowest objective."""
    best_theta, best_value = None, math.inf
    for theta0 in starts:
        result = minimize(
            _objective,
            theta0,
            args=data,
            jac=True,
            method="L-BFGS-B",
            bounds=_BOUNDS,
            options={"maxiter": 500, "ftol": 1e-12, "gtol": 1e-9},
        )
        if np.isfinite(result.fun) and result.fun < best_value:
            best_theta, best_value = result.x, float(result.fun)
    if best_theta is None:
        raise SpeechBudgetError("the scaling-law fit diverged from every start: check pilot losses")
    return best_theta, best_value


def _fit_theta(data, n_starts: int, extra_starts=()) -> np.ndarray:
    """Screen the whole grid cheaply, then refine the ``n_starts`` most promising points.

    Running L-BFGS from every grid point (Chinchilla does) costs seconds per fit; screening
    keeps the fit fast enough to bootstrap hundreds of times.
    """
    starts, values = _grid_values(*data)
    chosen = starts[np.argsort(values)[:n_starts]]
    if len(extra_starts):
        chosen = np.vstack([np.atleast_2d(extra_starts), chosen])
    theta, _ = _minimise(data, chosen)
    return theta


def _theta_to_coefficients(theta) -> dict[str, float]:
    a, b, e, alpha, beta = theta
    return {
        "E": math.exp(e),
        "A": math.exp(a),
        "alpha": float(alpha),
        "B": math.exp(b),
        "beta": float(beta),
    }


def _validate_points(points) -> np.ndarray:
    shape_error = SpeechBudgetError("each pilot point must be (params, hours, unique_hours, loss)")
    try:
        array = np.asarray(points, dtype=float)
    except (TypeError, ValueError) as exc:
        raise shape_error from exc
    if array.ndim != 2 or array.shape[1] != 4:
        raise shape_error
    if len(array) < len(COEFFICIENTS):
        raise SpeechBudgetError(
            f"need at least {len(COEFFICIENTS)} pilot runs to fit {len(COEFFICIENTS)} "
            f"coefficients, got {len(array)}: run more pilots"
        )
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise SpeechBudgetError("pilot points must be finite and > 0 (params, hours, unique, loss)")
    distinct = lambda col: len(np.unique(np.round(np.log(array[:, col]), 4)))  # noqa: E731
    if distinct(0) < 2:
        raise SpeechBudgetError(
            f"every pilot has {array[0, 0]:.4g} parameters: the law's model-size term cannot be fitted; "
            "add pilots of other presets (speechbudget sweep --presets A,B)"
        )
    if distinct(1) < 2:
        raise SpeechBudgetError(
            f"every pilot saw {array[0, 1]:.4g} hours of audio: the law's data term cannot be fitted; "
            "add pilots of other budgets (speechbudget sweep --budgets X,Y)"
        )
    return array


def fit_law(
    points: Sequence[tuple[float, float, float, float]],
    r_star: float = DEFAULT_R_STAR,
    bootstrap: int = 200,
    seed: int = 0,
    n_starts: int = 32,
    delta: float = HUBER_DELTA,
) -> ScalingLaw:
    """Fit the law to pilot runs ``(params, hours, unique_hours, final_loss)``.

    Chinchilla approach 3: Huber loss on log-loss (robust to a diverged pilot), L-BFGS from a
    grid of starts. ``bootstrap`` refits on resampled points give 95% intervals per coefficient.
    """
    array = _validate_points(points)
    n, d, u, loss = array.T
    log_d_eff = np.log(effective_hours(d, u, r_star))
    data = (np.log(n), log_d_eff, np.log(loss), delta)
    # L-BFGS-B calls BLAS on 5-vectors; with several BLAS threads on a busy machine the threads
    # spin-wait on each other and the fit gets ~15x slower. One thread is all it needs.
    with threadpool_limits(limits=1, user_api="blas"):
        theta = _fit_theta(data, n_starts)
        fits = _bootstrap_fits(data, theta, bootstrap, seed) if bootstrap > 0 else None
    return ScalingLaw(
        **_theta_to_coefficients(theta),
        r_star=r_star,
        calibrated=True,
        ci=_intervals(fits) if fits else None,
        samples=[{**f, "r_star": r_star} for f in fits] if fits else None,
    )


def _bootstrap(n_points: int, refit: Callable[[np.ndarray], dict], rounds: int, seed: int) -> list[dict]:
    """``refit(indices)`` on ``rounds`` resamples of the points drawn with replacement."""
    rng = np.random.default_rng(seed)
    return [refit(rng.integers(0, n_points, size=n_points)) for _ in range(rounds)]


def _intervals(fits: list[dict], names=COEFFICIENTS, level: float = 95.0) -> dict[str, tuple[float, float]]:
    tail = (100.0 - level) / 2
    return {
        name: tuple(float(q) for q in np.percentile([f[name] for f in fits], [tail, 100.0 - tail]))
        for name in names
    }


def _bootstrap_fits(data, theta, rounds: int, seed: int) -> list[dict]:
    """Refits of the Chinchilla law on points resampled with replacement.

    Each refit starts from the full-data optimum and the best screened grid point: enough to
    follow the optimum as it moves, at a fraction of the full fit's cost.
    """
    log_n, log_d, log_loss, delta = data

    def refit(idx):
        sample = (log_n[idx], log_d[idx], log_loss[idx], delta)
        return _theta_to_coefficients(_fit_theta(sample, n_starts=1, extra_starts=theta))

    return _bootstrap(len(log_n), refit, rounds, seed)


# ---------------------------------------------------------------------------------------------
# The prior law: fitted to the model sizes published runs chose (no losses needed)
#
# Published runs give (N, U, D) but no loss on a common scale, so fit_law cannot use them. They do
# say where their authors put the optimum: at the compute of a run, its N is taken as near-optimal.
# For L = E + A/N^alpha + B/D_eff^beta that optimum depends only on beta / (alpha + beta), A / B
# and R* (a fixed compute is a fixed N x D for any cost per parameter-hour, so the cost model drops
# out). Those three are fitted (least squares in log N); the rest is set by what the frontier cannot
# see: the exponents' sum (how flat the loss is near the optimum) and the loss level.

#: alpha + beta, which the frontier does not identify: Chinchilla's 0.34 + 0.28
PRIOR_EXPONENT_SUM = 0.62
#: (N, D, U, loss) fixing the loss level, which no frontier identifies either: HuBERT-style cross
#: entropy over 500 clusters, ~3.0 nats for a HuBERT Base run, ~5.7 for 1M parameters on 10 fresh
#: hours (the first default's guesses). They shift predicted losses, never the recommended size.
LEVEL_ANCHORS = ((95e6, 311e3, 960.0, 3.0), (1e6, 10.0, None, 5.7))
_LOG_N_GRID = np.linspace(math.log(1e4), math.log(1e12), 801)
#: R* is capped at 1,000 repetitions: the runs loop LibriSpeech up to ~700 times and fit nearly as
#: well at 1,000 as at 10^5, and past the data a finite R* keeps endless looping from being free
PRIOR_MAX_R_STAR = 1000.0
_PRIOR_BOUNDS = ((0.05, 0.95), (-30.0, 80.0), (0.0, math.log(PRIOR_MAX_R_STAR)))  # ratio, ln A/B, ln R*


def load_published_runs(path: str | Path = PUBLISHED_RUNS_PATH) -> list[dict]:
    """The rows of a published-runs CSV (``#`` lines are its documentation), numbers as floats."""
    import csv

    try:
        lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    except OSError as exc:
        raise SpeechBudgetError(f"cannot read published runs {path}: {exc}") from exc
    rows = list(csv.DictReader(lines))
    for row in rows:
        for key in ("params", "unique_hours", "processed_hours"):
            row[key] = float(row[key])
    return rows


def _prior_shape(theta) -> tuple[float, float, float, float]:
    """(alpha, beta, A with B = 1, R*) from (beta share of the exponent sum, log A/B, log R*)."""
    ratio, log_ab, log_r = theta
    return PRIOR_EXPONENT_SUM * (1 - ratio), PRIOR_EXPONENT_SUM * ratio, math.exp(log_ab), math.exp(log_r)


def _optimal_log_params(theta, param_hours: np.ndarray, unique: np.ndarray) -> np.ndarray:
    """ln N minimising the law at each budget of ``param_hours`` (N x D) over ``unique`` hours.

    A grid over ln N, refined by the parabola through the best point and its neighbours, so the
    answer moves smoothly with theta (the fit's simplex needs that).
    """
    alpha, beta, a, r_star = _prior_shape(theta)
    log_n = _LOG_N_GRID[None, :]
    hours = param_hours[:, None] / np.exp(log_n)
    loss = a * np.exp(-alpha * log_n) + effective_hours(hours, unique[:, None], r_star) ** -beta
    i = np.clip(np.argmin(loss, axis=1), 1, len(_LOG_N_GRID) - 2)
    rows = np.arange(len(i))
    left, mid, right = loss[rows, i - 1], loss[rows, i], loss[rows, i + 1]
    curve = left - 2 * mid + right
    step = np.where(curve > 0, 0.5 * (left - right) / np.where(curve > 0, curve, 1.0), 0.0)
    return _LOG_N_GRID[i] + np.clip(step, -1, 1) * (_LOG_N_GRID[1] - _LOG_N_GRID[0])


def _frontier_loss(theta, log_n, param_hours, unique) -> float:
    if any(not lo <= t <= hi for t, (lo, hi) in zip(theta, _PRIOR_BOUNDS)):
        return 1e9
    return float(np.mean((_optimal_log_params(theta, param_hours, unique) - log_n) ** 2))


def _fit_frontier(log_n, param_hours, unique, starts) -> np.ndarray:
    best, best_value = None, math.inf
    for theta0 in starts:
        res = minimize(
            _frontier_loss,
            theta0,
            args=(log_n, param_hours, unique),
            method="Nelder-Mead",
            options={"xatol": 1e-4, "fatol": 1e-7, "maxiter": 2000},
        )
        if res.fun < best_value:
            best, best_value = res.x, float(res.fun)
    return best


def _frontier_starts(log_n, param_hours) -> list[np.ndarray]:
    """Starts over the exponent share and R*, each with the A/B that fits the points best when data
    never runs out (then ln N* = (ln(alpha A / beta) + ratio (alpha+beta) ln(N D)) / (alpha+beta))."""
    starts = []
    for ratio, r_star in product((0.3, 0.45, 0.6), (15.0, 150.0, 1500.0)):
        alpha, beta, _, _ = _prior_shape((ratio, 0.0, 0.0))
        log_ab = float(np.mean(PRIOR_EXPONENT_SUM * (log_n - ratio * np.log(param_hours)))) - math.log(
            alpha / beta
        )
        starts.append(np.array([ratio, log_ab, math.log(r_star)]))
    return starts


def _prior_coefficients(theta) -> dict[str, float]:
    """The full law: the fitted shape, scaled and offset to pass through LEVEL_ANCHORS."""
    alpha, beta, a, r_star = _prior_shape(theta)
    (n1, d1, u1, l1), (n2, d2, u2, l2) = LEVEL_ANCHORS
    g1, g2 = (
        a * n**-alpha + float(effective_hours(d, u, r_star)) ** -beta
        for n, d, u in ((n1, d1, u1), (n2, d2, u2))
    )
    scale = (l2 - l1) / (g2 - g1)
    coefficients = {"E": l1 - scale * g1, "A": scale * a, "alpha": alpha, "B": scale, "beta": beta}
    return {k: float(v) for k, v in {**coefficients, "r_star": r_star}.items()}


def fit_prior(runs: Sequence[dict], bootstrap: int = 200, seed: int = 0) -> ScalingLaw:
    """Fit the uncalibrated prior to published runs' chosen sizes (rows of load_published_runs
    with ``use == "fit"``); ``bootstrap`` refits on resampled rows give the law's samples."""
    rows = [r for r in runs if r.get("use", "fit") == "fit"]
    if len(rows) < 3:
        raise SpeechBudgetError(f"need at least 3 published runs to fit the prior, got {len(rows)}")
    log_n = np.log([r["params"] for r in rows])
    param_hours = np.array([r["params"] * r["processed_hours"] for r in rows])
    unique = np.array([r["unique_hours"] for r in rows])
    theta = _fit_frontier(log_n, param_hours, unique, _frontier_starts(log_n, param_hours))

    def refit(idx):
        return _prior_coefficients(_fit_frontier(log_n[idx], param_hours[idx], unique[idx], [theta]))

    fits = _bootstrap(len(rows), refit, bootstrap, seed) if bootstrap > 0 else []
    best = _prior_coefficients(theta)
    return ScalingLaw(
        **{k: best[k] for k in COEFFICIENTS},
        r_star=best["r_star"],
        calibrated=False,
        ci=_intervals(fits, (*COEFFICIENTS, "r_star"), level=90.0) if fits else None,
        samples=fits or None,
    )


def write_prior(
    path: str | Path = PRIOR_LAW_PATH, runs_path: str | Path = PUBLISHED_RUNS_PATH, bootstrap: int = 200
) -> ScalingLaw:
    """Refit the prior on the published runs and store it where DEFAULT_LAW is read from."""
    law = fit_prior(load_published_runs(runs_path), bootstrap=bootstrap)
    law.to_json(path)
    return law


def frontier_residuals(law: ScalingLaw, runs: Sequence[dict]) -> list[float]:
    """ln(law's optimal N / the published N) per run: how far the law is from each choice."""
    rows = list(runs)
    theta = (law.beta / (law.alpha + law.beta), math.log(law.A / law.B), math.log(law.r_star))
    ph = np.array([r["params"] * r["processed_hours"] for r in rows])
    opt = _optimal_log_params(theta, ph, np.array([r["unique_hours"] for r in rows]))
    return [float(o - math.log(r["params"])) for o, r in zip(opt, rows)]


# ---------------------------------------------------------------------------------------------
# Allocation of a compute budget


class Candidate(NamedTuple):
    """A model configuration: its size and the training FLOPs one hour of audio costs it."""

    name: str
    params: float
    flops_per_hour: float


@dataclass(frozen=True)
class Allocation:
    """What a budget buys one candidate, and the loss the law predicts for it."""

    name: str
    params: float
    flops_per_hour: float
    hours: float  # audio hours processed
    epochs: float | None  # hours / unique_hours; None when data is unlimited
    effective_hours: float
    loss: float
    best: bool = False


def optimal_allocation(
    law: ScalingLaw,
    compute_flops: float,
    candidates: Sequence[tuple[str, float, float]],
    unique_hours: float | None = None,
) -> list[Allocation]:
    """Spend ``compute_flops`` on each candidate, predict its loss, best first.

    A candidate's hours are what the budget buys at its per-hour cost; with ``unique_hours``
    given, hours beyond the corpus are repeats and the law discounts them, so small models that
    would loop a small corpus many times lose to larger ones that see it fewer times.
    """
    if not compute_flops > 0:
        raise SpeechBudgetError(f"compute budget must be > 0 FLOPs, got {compute_flops}")
    if unique_hours is not None and not unique_hours > 0:
        raise SpeechBudgetError(f"unique_hours must be > 0, got {unique_hours}")
    if not candidates:
        raise SpeechBudgetError("no candidate configurations to allocate the budget to")
    allocations = [_allocate(law, compute_flops, Candidate(*c), unique_hours) for c in candidates]
    allocations.sort(key=lambda a: a.loss)
    best = allocations[0]
    allocations[0] = Allocation(**{**asdict(best), "best": True})
    return allocations


def _allocate(law, compute_flops, cand: Candidate, unique_hours) -> Allocation:
    if not (cand.params > 0 and cand.flops_per_hour > 0):
        raise SpeechBudgetError(f"candidate {cand.name!r} needs params > 0 and flops_per_hour > 0")
    hours = compute_flops / cand.flops_per_hour
    return Allocation(
        name=cand.name,
        params=float(cand.params),
        flops_per_hour=float(cand.flops_per_hour),
        hours=hours,
        epochs=None if unique_hours is None else hours / unique_hours,
        effective_hours=float(effective_hours(hours, unique_hours, law.r_star)),
        loss=law.predict(cand.params, hours, unique_hours),
    )


@dataclass(frozen=True)
class SizeInterval:
    """Where the best candidate's size falls across the law's bootstrap refits."""

    low: float  # params of the smallest candidate inside the central ``level`` of the refits' picks
    high: float
    level: float
    samples: int
    shares: dict[str, float]  # candidate -> fraction of refits that pick it


def best_size_interval(
    law: ScalingLaw,
    compute_flops: float,
    candidates: Sequence[tuple[str, float, float]],
    unique_hours: float | None = None,
    level: float = 0.9,
) -> SizeInterval | None:
    """Spend the budget under every bootstrap refit of ``law`` and see which candidate each picks;
    None when the law carries no refits (an old law file, or ``bootstrap=0``)."""
    laws = law.resampled()
    if not laws:
        return None
    cands = [Candidate(*c) for c in candidates]
    params = np.array([c.params for c in cands], dtype=float)
    hours = compute_flops / np.array([c.flops_per_hour for c in cands], dtype=float)
    picks = np.array([int(np.argmin(np.atleast_1d(w.predict(params, hours, unique_hours)))) for w in laws])
    sizes = params[picks]
    tail = 50.0 * (1.0 - level)
    counts = np.bincount(picks, minlength=len(cands))
    return SizeInterval(
        low=float(np.percentile(sizes, tail, method="lower")),
        high=float(np.percentile(sizes, 100.0 - tail, method="higher")),
        level=level,
        samples=len(laws),
        shares={c.name: float(k / len(laws)) for c, k in zip(cands, counts)},
    )
