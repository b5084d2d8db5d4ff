"""The compute-budget planner: allocation logic, FLOP counting, recipe, isoFLOP plot, CLI errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import cli_result as run

from speechbudget import cli, cli_plan
from speechbudget.config import load_train_config
from speechbudget.errors import SpeechBudgetError
from speechbudget.models.catalog import training_flops_per_audio_second
from speechbudget.models.presets import build_encoder
from speechbudget.plan import calibrate, costs, planner
from speechbudget.plan.planner import BudgetSpec, CandidateCost

torch.set_num_threads(1)
cli_plan.register(cli.app)

TINY = "transformer-tiny,transformer-tiny-wide,transformer-tiny-slim"


pytestmark = pytest.mark.usefixtures("private_cache_dir")  # never the user's ~/.cache


def plan_json(capsys, *args):
    code, out, err = run(capsys, "plan", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def fake(name: str, params: float, layers: int = 12, width: int = 256) -> CandidateCost:
    """A candidate whose cost follows the 6N-per-frame rule at 50 frames/s (no tracing)."""
    return CandidateCost(
        name=name,
        family="transformer",
        spec=name,
        kind="preset",
        params=int(params),
        macs_per_audio_second=params * 50,
        head_macs_per_frame=0.0,
        frame_rate_hz=50.0,
        layers=layers,
        width=width,
    )


LADDER = [fake(f"m{i}", n) for i, n in enumerate([1e6, 3e6, 1e7, 3e7, 1e8, 3e8, 1e9])]


# ------------------------------------------------------------------------------ allocation logic
def test_bigger_budgets_pick_bigger_models_with_unlimited_data():
    picks = [
        planner.plan(BudgetSpec(flops, "flops"), math.inf, LADDER, calibration={"devices": {}}).recommended
        for flops in (1e16, 1e17, 1e18, 1e19, 1e20, 1e21)
    ]
    sizes = [p.params for p in picks]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
    assert all(p.epochs is None for p in picks)


def test_hours_follow_from_the_budget_and_the_cost_per_hour():
    p = planner.plan(BudgetSpec(1e18, "flops"), 1000.0, LADDER, calibration={"devices": {}})
    for row in p.candidates:
        assert row.audio_hours * row.flops_per_hour == pytest.approx(1e18)
        assert row.epochs == pytest.approx(row.audio_hours / 1000.0)
        assert row.budget_flops == pytest.approx(1e18)
    losses = [r.predicted_loss for r in p.candidates]
    assert losses == sorted(losses) and p.candidates[0].best


def test_scarce_data_is_data_bound_and_warns_about_epochs():
    p = planner.plan(BudgetSpec(1e19, "flops"), 1.0, LADDER, calibration={"devices": {}})
    assert p.recommended.epochs > planner.EPOCH_WARNING
    assert any(n.startswith("Data-bound") for n in p.notes)
    assert any("epochs" in w and "2409.16295" in w for w in p.warnings)


def test_plenty_of_data_is_compute_bound_without_epoch_warning():
    p = planner.plan(BudgetSpec(1e17, "flops"), 1e6, LADDER, calibration={"devices": {}})
    assert p.recommended.epochs < 1
    assert any(n.startswith("Compute-bound") for n in p.notes)
    assert not any("2409.16295" in w for w in p.warnings)


def test_gpu_hours_convert_with_peak_and_utilisation():
    p = planner.plan(
        BudgetSpec(10, "gpu-hours", "a100", utilisation=0.4), 1e6, LADDER, calibration={"devices": {}}
    )
    assert p.recommended.budget_flops == pytest.approx(10 * 3600 * 312e12 * 0.4)
    wall = planner.plan(
        BudgetSpec(10, "hours", "a100", utilisation=0.4, num_devices=8),
        1e6,
        LADDER,
        calibration={"devices": {}},
    )
    assert wall.recommended.budget_flops == pytest.approx(8 * 10 * 3600 * 312e12 * 0.4)


def test_calibrated_utilisation_is_used_per_preset():
    calibration = {
        "devices": {
            "a100": {
                "dtype": "bf16",
                "peak_flops": 312e12,
                "presets": {"m2": {"utilisation": 0.1}, "m4": {"utilisation": 0.3}},
            }
        }
    }
    p = planner.plan(BudgetSpec(10, "gpu-hours", "a100"), 1e6, LADDER, calibration=calibration)
    rows = {r.name: r for r in p.candidates}
    assert rows["m2"].utilisation == 0.1 and rows["m2"].utilisation_source == "calibrated"
    assert rows["m2"].budget_flops == pytest.approx(10 * 3600 * 312e12 * 0.1)
    assert rows["m0"].utilisation == pytest.approx(0.2) and "median" in rows["m0"].utilisation_source
    # a calibration in another dtype does not apply
    fp16 = planner.plan(
        BudgetSpec(10, "gpu-hours", "a100", dtype="fp16"), 1e6, LADDER, calibration=calibration
    )
    assert fp16.recommended.utilisation_source.startswith("default")


def test_too_small_a_budget_names_the_minimum():
    with pytest.raises(SpeechBudgetError, match=r"give at least [0-9.e+]+ flops") as err:
        planner.plan(
            BudgetSpec(1e9, "flops", "cpu"), 10.0, LADDER, max_duration=8.0, calibration={"devices": {}}
        )
    need = float(str(err.value).split("give at least ")[1].split()[0])
    ok = planner.plan(
        BudgetSpec(need * 1.01, "flops", "cpu"), 10.0, LADDER, max_duration=8.0, calibration={"devices": {}}
    )
    assert ok.recommended.name == "m0" and ok.skipped  # only the smallest is affordable


# ---------------------------------------------------------------------------------- FLOP counts
def test_cost_per_hour_matches_the_trainers_accounting():
    """The planner counts a weightless (meta-device) build; the trainer the encoder it trains."""
    c = costs.count_cost("transformer-tiny", num_clusters=500)
    head = 192 * 256 + 256 * 500  # projection + cosine logits against 500 cluster embeddings
    assert c.head_macs_per_frame == head
    trained = build_encoder("transformer-tiny")  # initialised weights: counted apart from the spec
    assert c.flops_per_hour == pytest.approx(3600 * training_flops_per_audio_second(trained, head, 10.0))
    assert c.params == sum(p.numel() for p in trained.parameters())


def test_grid_depths_are_extrapolated_exactly():
    cands = planner.candidate_costs("transformer", grid="small", presets=["transformer-tiny"])
    grid = {c.name: c for c in cands if c.kind == "grid"}
    assert len(grid) == 6 and {c.layers for c in grid.values()} == {2, 6, 18}
    deep = grid["transformer-w192-l18"]
    direct = costs.count_cost(deep.spec)
    assert deep.params == direct.params
    assert deep.macs_per_audio_second == pytest.approx(direct.macs_per_audio_second, rel=1e-9)


def test_counts_are_cached_on_disk(monkeypatch, tmp_path):
    """A count is traced once per machine: a later process (nothing in memory) reads it from the file."""
    from speechbudget.cost import count_cache
    from speechbudget.models import catalog

    monkeypatch.setenv("SPEECHBUDGET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(catalog, "_COST_CACHE", {})
    first = costs.count_cost("transformer-tiny-wide")
    assert (tmp_path / "encoder_counts.json").is_file()

    def no_tracing(*a, **k):
        raise AssertionError("a cached config was traced again")

    monkeypatch.setattr(catalog, "_COST_CACHE", {})  # as in a new process
    monkeypatch.setattr(count_cache, "_OPEN", {})
    monkeypatch.setattr(catalog, "_count", no_tracing)
    assert costs.count_cost("transformer-tiny-wide") == first
    (tmp_path / "encoder_counts.json").write_text("{not json")  # a damaged cache is recounted, not an error
    monkeypatch.setattr(catalog, "_COST_CACHE", {})
    monkeypatch.setattr(count_cache, "_OPEN", {})
    with pytest.raises(AssertionError, match="traced again"):
        costs.count_cost("transformer-tiny-wide")


# --------------------------------------------------------------------------------- CLI and files
def test_json_output_keys(capsys):
    d = plan_json(
        capsys,
        "--budget",
        5,
        "--unit",
        "gpu-hours",
        "--device",
        "a100",
        "--data-hours",
        100,
        "--presets",
        TINY,
    )
    rec = d["recommended"]
    for key in ("preset", "params", "audio_hours", "epochs", "predicted_loss"):
        assert key in rec
    assert d["calibrated"] is False and len(d["candidates"]) == 3
    assert rec["name"] == d["candidates"][0]["name"] and rec["best"]
    assert any("Uncalibrated" in line for line in d["explanation"])


def test_bigger_budget_bigger_model_on_real_presets(capsys):
    small = plan_json(
        capsys,
        "--budget",
        1e15,
        "--unit",
        "flops",
        "--data-hours",
        "inf",
        "--family",
        "transformer",
        "--grid",
        "none",
    )["recommended"]
    big = plan_json(
        capsys,
        "--budget",
        1e21,
        "--unit",
        "flops",
        "--data-hours",
        "inf",
        "--family",
        "transformer",
        "--grid",
        "none",
    )["recommended"]
    assert big["params"] > small["params"]


def test_recipe_loads_and_spends_the_planned_budget(tmp_path, capsys):
    out = tmp_path / "plan" / "recipe.yaml"
    d = plan_json(
        capsys, "--budget", 2e16, "--unit", "flops", "--data-hours", 50, "--presets", TINY, "--out", out
    )
    cfg = load_train_config(out, "pretrain")  # placeholders validate as they are
    rec = d["recommended"]
    assert cfg.encoder == rec["preset"] and "CHANGE-ME" in cfg.train_cuts and cfg.exp_dir
    assert cfg.budget.flops == pytest.approx(2e16, rel=1e-3)
    s = cfg.schedule
    assert s.name == "eden" and s.epoch_unit == "hours"
    assert s.lr_epochs == pytest.approx(planner.LR_EPOCHS_FRACTION * rec["audio_hours"], rel=1e-2)
    filled = tmp_path / "filled.yaml"
    plan_json(
        capsys,
        "--budget",
        2e16,
        "--unit",
        "flops",
        "--data-hours",
        50,
        "--presets",
        TINY,
        "--out",
        filled,
        "--train-cuts",
        "data/km/cuts_train.jsonl.gz",
        "--exp-dir",
        "exp/x",
    )
    cfg = load_train_config(filled, "pretrain")
    assert (cfg.train_cuts, cfg.exp_dir) == ("data/km/cuts_train.jsonl.gz", "exp/x")


def test_grid_recipe_writes_a_buildable_config_dict(tmp_path):
    spec = planner._transformer_config(192, 2)
    cand = costs.make_candidate(spec, spec, costs.count_configs([spec])[0], "grid")
    p = planner.plan(BudgetSpec(1e15, "flops"), 10.0, [cand], calibration={"devices": {}})
    path = planner.write_recipe(p, tmp_path / "r.yaml")
    assert "!!python" not in path.read_text()  # lists, not tuples
    cfg = load_train_config(path, "pretrain")
    assert cfg.encoder == spec
    assert sum(q.numel() for q in build_encoder(cfg.encoder).parameters()) == cand.params


def test_isoflop_plot_is_a_real_png(tmp_path, capsys):
    from matplotlib.image import imread

    out = tmp_path / "recipe.yaml"
    d = plan_json(
        capsys, "--budget", 1e17, "--unit", "flops", "--data-hours", 100, "--presets", TINY, "--out", out
    )
    png = tmp_path / "recipe-isoflop.png"
    assert d["plot"] == str(png) and png.stat().st_size > 10_000
    image = imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert (
        len({tuple(px) for px in image.reshape(-1, image.shape[-1])[::50]}) > 20
    )  # curves, not a blank canvas
    custom = tmp_path / "curves.png"
    plan_json(
        capsys, "--budget", 1e17, "--unit", "flops", "--data-hours", 100, "--presets", TINY, "--plot", custom
    )
    assert custom.stat().st_size > 10_000


def test_table_output_explains_the_choice(capsys):
    code, out, _ = run(
        capsys, "plan", "--budget", 1e19, "--unit", "flops", "--data-hours", 2, "--presets", TINY
    )
    assert code == 0
    assert "Data-bound" in out and "warning:" in out and "2409.16295" in out and "Uncalibrated" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", 0, "--data-hours", 10], "--budget must be a positive"),
        (["--budget", -5, "--data-hours", 10], "--budget must be a positive"),
        (["--budget", 10, "--data-hours", 0], "--data-hours must be positive"),
        (["--budget", 10, "--data-hours", -3], "--data-hours must be positive"),
        (["--budget", 10], "give --data-hours"),
        (["--data-hours", 10], "give --budget"),
        (
            ["--budget", 10, "--data-hours", 10, "--device", "tpu-v5"],
            "use one of v100, a100, l4, h100, h200, cpu",
        ),
        (["--budget", 10, "--data-hours", 10, "--unit", "days"], "choose one of flops, gpu-hours, hours"),
        (["--budget", 10, "--data-hours", 10, "--utilisation", 1.5], "--utilisation must be in (0, 1]"),
        (["--budget", 1e6, "--unit", "flops", "--data-hours", 10], "give at least"),
        (
            ["--budget", 10, "--data-hours", 10, "--presets", "zipformer-huge"],
            "unknown preset 'zipformer-huge'",
        ),
        (["--budget", 10, "--data-hours", 10, "--grid", "huge"], "unknown grid 'huge'"),
        (["--budget", 10, "--data-hours", 10, "--max-duration", 0], "--max-duration must be positive"),
        (["--budget", 10, "--data-hours", 10, "--num-clusters", 1], "--num-clusters must be at least 2"),
        (["--budget", 10, "--data-hours", 10, "--law", "/nonexistent/law.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(capsys, args, message):
    extra = [] if "--presets" in args else ["--presets", TINY]
    code, _, err = run(capsys, "plan", *args, *extra)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert message in err


def test_minimum_budget_message_is_enough(capsys):
    code, _, err = run(
        capsys, "plan", "--budget", 1e6, "--unit", "flops", "--data-hours", 10, "--presets", TINY
    )
    assert code == 2
    need = float(err.split("give at least ")[1].split()[0])
    d = plan_json(capsys, "--budget", need * 1.01, "--unit", "flops", "--data-hours", 10, "--presets", TINY)
    assert d["recommended"]["steps"] >= 1


def test_register_is_idempotent():
    before = len(cli.app.registered_groups), len(cli.app.registered_commands)
    cli_plan.register(cli.app)
    assert (len(cli.app.registered_groups), len(cli.app.registered_commands)) == before


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHBUDGET_CACHE_DIR", str(tmp_path))
    assert calibrate.default_calibration_path() == tmp_path / "calibration.json"
