"""``speechbudget plan | plan fit | sweep | calibrate``: the compute-budget commands.

Thin like cli.py: parse, call plan.planner / sweep / calibrate, render. ``register(app)`` adds
the commands to the main Typer app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import typer
from rich import box
from rich.table import Table

from . import cli_common as ui
from .cli_common import JSON_OPT
from .config import split_csv
from .errors import SpeechBudgetError

# ------------------------------------------------------------------------------------------ plan
PLAN_EPILOG = (
    "Examples:\n\n"
    "  speechbudget plan --budget 200 --unit gpu-hours --device a100 --data-hours 960 --out recipes/plan.yaml\n\n"
    "  speechbudget plan --budget 1e19 --unit flops --data-hours 100 --family transformer --json\n\n"
    "  speechbudget plan --budget 1e19 --unit flops --data-hours 100 --family transformer --tome 4,16\n\n"
    "  speechbudget plan --budget 2 --unit hours --device cpu --data-hours 0.5 --presets zipformer-tiny,zipformer-xs\n\n"
    "  speechbudget plan --budget 200 --device h100 --data-hours 960 --law exp/sweep/law.json --grid full\n\n"
    "  speechbudget plan fit exp/sweep --out law.json   # fit the law on pilot runs first\n\n"
    "  speechbudget plan --budget 200 --device a100 --data-hours 960 --pilot-fraction 0.05 --out pilots.yaml"
)


def plan_main(
    ctx: typer.Context,
    budget: Optional[float] = typer.Option(None, help="How much compute you have, in --unit."),
    unit: str = typer.Option(
        "gpu-hours", help="flops | gpu-hours | hours (wall-clock hours on --num-devices devices)."
    ),
    device: str = typer.Option(
        "a100", help="Device whose peak converts hours to FLOPs: v100, a100, l4, h100, h200, cpu."
    ),
    data_hours: Optional[float] = typer.Option(
        None, "--data-hours", help="Hours of unlabeled audio you have (inf = unlimited)."
    ),
    family: str = typer.Option("zipformer", help="Encoder family: zipformer, transformer, bimamba."),
    presets: Optional[str] = typer.Option(
        None, help="Comma-separated presets to consider instead of the family's."
    ),
    grid: Optional[str] = typer.Option(
        None, help="Width x depth grid: none | small | full (default: small; none with --presets)."
    ),
    law: Optional[Path] = typer.Option(
        None, "--law", help="Scaling law fitted by `plan fit` (default: uncalibrated guess)."
    ),
    tome: Optional[str] = typer.Option(
        None,
        help="Comma-separated r values: also plan each Transformer/AST preset with r tokens merged per "
        "block (token merging, FastAST), e.g. 4,8.",
    ),
    dtype: Optional[str] = typer.Option(
        None, help="Peak to use: bf16, fp16, tf32, fp32 (default: bf16 on GPUs, fp32 on cpu)."
    ),
    utilisation: Optional[float] = typer.Option(
        None,
        help="Model-FLOPs utilisation (default: calibrated, else from published runs on this device class).",
    ),
    num_devices: int = typer.Option(1, help="Devices training at once, for --unit hours."),
    num_clusters: int = typer.Option(500, help="k-means clusters of your targets (the HuBERT head's size)."),
    max_duration: Optional[float] = typer.Option(
        None, help="Seconds of audio per batch in the recipe (default 350 GPU, 60 CPU)."
    ),
    calibration: Optional[Path] = typer.Option(
        None, help="Calibration file from `calibrate` (default ~/.cache/speechbudget)."
    ),
    out_path: Optional[Path] = typer.Option(
        None, "--out", help="Write a ready pretraining recipe (YAML) here."
    ),
    plot: Optional[Path] = typer.Option(None, help="isoFLOP plot PNG (default: next to --out)."),
    train_cuts: Optional[str] = typer.Option(
        None, help="Fill the recipe's train_cuts (k-means labeled cuts)."
    ),
    exp_dir: Optional[str] = typer.Option(None, help="Fill the recipe's exp_dir."),
    pilot_fraction: Optional[float] = typer.Option(
        None,
        "--pilot-fraction",
        help="Design pilots for this budget instead: sizes x budgets costing this share of it "
        "(0 < F < 0.5); --out writes them for `speechbudget sweep --recipe`.",
    ),
    pilot_sizes: int = typer.Option(4, help="With --pilot-fraction: model sizes in the design (>= 3)."),
    pilot_budgets: int = typer.Option(
        3, help="With --pilot-fraction: pilot budgets per size, geometric over a decade (>= 2)."
    ),
    min_steps: int = typer.Option(
        100,
        help="With --pilot-fraction: drop pilots under this many optimizer steps (`plan fit` leaves them out).",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Budget -> model size vs hours of audio: predicted loss per candidate, a recommendation, a recipe;
    with --pilot-fraction, the pilot sweep that fits the law for this budget."""
    if ctx.invoked_subcommand is not None:
        return
    from . import progress
    from .plan import calibrate, planner
    from .plan.scaling import ScalingLaw

    ui.quiet_if_json(as_json)
    if budget is None:
        raise SpeechBudgetError(
            "give --budget (e.g. --budget 200 --unit gpu-hours), or run `speechbudget plan fit`"
        )
    spec = planner.BudgetSpec(budget, unit, device, dtype, utilisation, num_devices).validated()
    if pilot_fraction is not None:
        from .plan.pilots import check_fraction

        check_fraction(pilot_fraction)  # before seconds of counting
    planner.check_inputs(data_hours, num_clusters, max_duration)  # fail before seconds of counting
    names = split_csv(presets) or None
    fitted = ScalingLaw.from_json(law) if law else None
    if (
        calibration is not None and not calibration.is_file()
    ):  # a named file must be there; the default may not
        raise SpeechBudgetError(
            f"calibration file {calibration} does not exist (make it with `speechbudget calibrate`)"
        )
    cal = calibrate.load_calibration(calibration)
    cands = planner.candidate_costs(
        family,
        grid or ("none" if names else "small"),
        names,
        num_clusters,
        progress=lambda items, total=None: progress.track(items, total, "counting FLOPs"),
        tome=_ints(tome, "--tome"),
    )
    result = planner.plan(
        spec,
        data_hours,
        cands,
        law=fitted,
        law_source=str(law) if law else None,
        max_duration=max_duration,
        num_clusters=num_clusters,
        calibration=cal,
    )
    if pilot_fraction is not None:
        _design(
            result,
            pilot_fraction,
            pilot_sizes,
            pilot_budgets,
            min_steps,
            out_path,
            train_cuts,
            exp_dir,
            as_json,
        )
        return
    written: Dict[str, Optional[str]] = {"recipe": None, "plot": None}
    if out_path is not None:
        written["recipe"] = str(planner.write_recipe(result, out_path, train_cuts, exp_dir))
    plot_path = plot or (out_path.with_name(out_path.stem + "-isoflop.png") if out_path is not None else None)
    if plot_path is not None:
        written["plot"] = str(planner.plot_isoflops(result, plot_path))
    if as_json:
        ui.emit_json({**result.to_json(), **written})
        return
    _render_plan(result, written)


def _design(result, fraction, sizes, budgets, min_steps, out_path, train_cuts, exp_dir, as_json) -> None:
    """`plan --pilot-fraction`: the pilots for ``result``'s budget, printed and written."""
    from .plan.pilots import design_pilots, write_design

    design = design_pilots(result, fraction, sizes, budgets, min_steps)
    written = str(write_design(design, out_path, train_cuts, exp_dir)) if out_path is not None else None
    if as_json:
        ui.emit_json({**design.to_json(), "prior_plan": result.to_json(), "recipe": written})
        return
    b = design.budget
    t = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        title=f"pilots: {100 * fraction:g}% of {b.amount:g} {b.unit} on {b.device}",
        caption=f"steps: estimated at {design.max_duration:g} s batches; schedule: cosine to a tenth over "
        "each pilot's own budget",
    )
    t.add_column("pilot", no_wrap=True)
    for col in ("params M", b.unit, "FLOPs", "audio h", "steps"):
        t.add_column(col, justify="right", no_wrap=True)
    for p in design.pilots:
        t.add_row(
            p.name, f"{p.params / 1e6:.2f}", _num(p.cost), f"{p.flops:.3g}", _num(p.audio_hours), str(p.steps)
        )
    ui.print_table(t)
    for line in design.notes:
        ui.out.print(line, highlight=False)
    if written:
        ui.out.print(f"pilots -> {written}; run them: speechbudget sweep --recipe {written} --out exp/pilots")


def _ints(text: Optional[str], flag: str) -> List[int]:
    try:
        return [int(x) for x in split_csv(text)]
    except ValueError:
        raise SpeechBudgetError(f"{flag} takes comma-separated integers (e.g. 4,8), got {text!r}") from None


def _num(x: float) -> str:
    """Readable at any scale: 0.0123, 12.3, 12,345, 1.23e+06."""
    return f"{x:,.1f}" if 10 <= x < 1e5 else f"{x:.3g}"


def _render_plan(result, written: Dict[str, Optional[str]]) -> None:
    out = ui.out
    b = result.budget
    t = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption="shape: layers x width; GFLOP/s: training FLOPs per second of audio; loss: predicted, nats; "
        "* best, ~ inside the best size's range; p best: share of the law's bootstrap refits picking it",
        title=f"{b.amount:g} {b.unit} on {b.device}, "
        f"{'unlimited data' if result.data_hours is None else f'{result.data_hours:g} h of data'}, "
        f"{'fitted' if result.law.calibrated else 'uncalibrated'} law",
    )
    t.add_column("candidate", no_wrap=True)
    for col in ("params M", "shape", "GFLOP/s", "audio h", "epochs", "loss", "p best"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in result.candidates:
        t.add_row(
            r.name + (" *" if r.best else " ~" if r.plausible else ""),
            f"{r.params / 1e6:.2f}",
            f"{r.layers} x {r.width}",
            f"{r.flops_per_hour / 3600 / 1e9:.3f}",
            _num(r.audio_hours),
            "-" if r.epochs is None else _num(r.epochs),
            f"{r.predicted_loss:.3f}",
            "-" if r.p_best is None else f"{r.p_best:.2f}",
            style="bold green" if r.best else None,
        )
    ui.print_table(t)
    for line in result.notes:
        out.print(line, highlight=False)
    for line in result.warnings:
        out.print(f"[yellow]warning:[/yellow] {line}", highlight=False)
    if written["recipe"]:
        out.print(f"recipe -> {written['recipe']}")
    if written["plot"]:
        out.print(f"isoFLOP plot -> {written['plot']}")


def plan_fit(
    run_dirs: List[Path] = typer.Argument(
        ..., help="Pretraining exp_dirs, or a sweep's --out folder (searched below)."
    ),
    out_path: Path = typer.Option(..., "--out", help="Where the fitted law goes (JSON), for `plan --law`."),
    bootstrap: int = typer.Option(200, min=0, help="Bootstrap refits for the 95% intervals (0: none)."),
    r_star: float = typer.Option(
        15.0, "--r-star", help="Repetitions after which extra epochs stop helping (fixed, not fitted)."
    ),
    last: int = typer.Option(3, help="Logged steps averaged into each run's final loss."),
    min_steps: int = typer.Option(
        100, help="Leave out runs with fewer optimizer steps (still near chance loss)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Fit the scaling law L(N, D) = E + A/N^alpha + B/D^beta on pilot runs (Huber on log-loss)."""
    from .plan.sweep import fit_runs

    res = fit_runs(run_dirs, out_path, bootstrap, r_star, last, min_steps=min_steps)
    law = res["law"]
    if as_json:
        ui.emit_json(
            {
                "law": {k: getattr(law, k) for k in ("E", "A", "alpha", "B", "beta", "r_star")},
                "ci": law.ci,
                "calibrated": law.calibrated,
                "path": res["path"],
                "points": res["points"],
                "mean_relative_error": res["mean_relative_error"],
                "left_out": res["left_out"],
            }
        )
        return
    t = Table(box=box.SIMPLE_HEAD, title=f"scaling law fitted on {len(res['points'])} runs -> {res['path']}")
    for col in ("coefficient", "value", "95% interval"):
        t.add_column(col, justify="left" if col == "coefficient" else "right")
    for name in ("E", "A", "alpha", "B", "beta"):
        ci = law.ci.get(name) if law.ci else None
        t.add_row(name, f"{getattr(law, name):.4g}", f"{ci[0]:.4g} - {ci[1]:.4g}" if ci else "-")
    ui.print_table(t)
    if res["left_out"]:
        ui.out.print(
            f"left out ({len(res['left_out'])} runs under {min_steps} optimizer steps): "
            + ", ".join(f"{Path(r['exp_dir']).name} ({r['steps']})" for r in res["left_out"]),
            highlight=False,
        )
    ui.out.print(
        f"R* = {law.r_star:g} (fixed); mean relative error on the runs "
        f"{100 * res['mean_relative_error']:.2f}%. Use it: speechbudget plan --law {res['path']} ..."
    )


# ----------------------------------------------------------------------------------------- sweep
def sweep(
    recipe: Path = typer.Option(
        ..., "--recipe", help="Recipe YAML whose `pretrain:` section every pilot uses."
    ),
    presets: Optional[str] = typer.Option(
        None,
        help="Comma-separated encoder presets (default: the recipe's sweep.pilots, from `plan --pilot-fraction`).",
    ),
    budgets: Optional[str] = typer.Option(None, help="Comma-separated FLOP budgets, e.g. 1e11,2e11,4e11."),
    out_dir: Path = typer.Option(
        ..., "--out", help="Pilots go to OUT/<preset>-<budget>/, the points to OUT/sweep.json."
    ),
    last: int = typer.Option(3, help="Logged steps averaged into each run's final loss."),
    as_json: bool = JSON_OPT,
) -> None:
    """Pilot pretrainings over presets x budgets (or a designed list), the points a scaling law is
    fitted on. Resumable."""
    from .pipeline import sweep_recipe
    from .plan.sweep import grid_pilots, parse_budgets, parse_list, recipe_pilots, run_sweep

    ui.quiet_if_json(as_json)
    if (presets is None) != (budgets is None):
        raise SpeechBudgetError(
            "give --presets and --budgets together, or neither (the recipe's sweep.pilots)"
        )
    pilots = (
        grid_pilots(parse_list(presets, "preset"), parse_budgets(budgets)) if presets is not None else None
    )
    if not recipe.is_file():
        raise SpeechBudgetError(f"recipe {recipe} does not exist")
    data = sweep_recipe(recipe)  # a `run` recipe: its pretrain stage's inputs
    pilots = pilots or recipe_pilots(data, str(recipe))
    report = (
        None
        if as_json
        else (
            lambda r: ui.out.print(
                f"{Path(r['exp_dir']).name}: {r['steps']} steps, {r['audio_hours']:.4f} h, loss {r['final_loss']:.3f}"
                + (" (already done)" if r["already_done"] else ""),
                highlight=False,
            )
        )
    )
    res = run_sweep(data, pilots, out_dir, last, on_run=report, source=str(recipe))
    if as_json:
        ui.emit_json(res)
        return
    t = Table(
        box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title=f"sweep -> {out_dir / 'sweep.json'}"
    )
    t.add_column("run", no_wrap=True)
    for col in ("params M", "FLOPs", "audio h", "unique h", "steps", "final loss"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in res["runs"]:
        t.add_row(
            Path(r["exp_dir"]).name,
            f"{r['params'] / 1e6:.2f}",
            f"{r['flops']:.3g}",
            f"{r['audio_hours']:.4f}",
            f"{r['unique_hours']:.3f}",
            str(r["steps"]),
            f"{r['final_loss']:.4f}",
        )
    ui.print_table(t)
    ui.out.print(f"next: speechbudget plan fit {out_dir} --out {out_dir / 'law.json'}")


# ------------------------------------------------------------------------------------- calibrate
def calibrate_cmd(
    presets: Optional[str] = typer.Option(
        None, help="Comma-separated presets (default: the family's; on a CPU those under 25M)."
    ),
    family: str = typer.Option(
        "zipformer", help="Family whose presets are calibrated when --presets is not given."
    ),
    device_name: Optional[str] = typer.Option(
        None,
        "--device-name",
        help="Name to store it under and take the peak of (default: cpu, or the detected GPU).",
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda: where the steps run."),
    steps: int = typer.Option(
        3, help="Timed training steps per preset (after one warm-up step); the median counts."
    ),
    batch_size: int = typer.Option(4, help="Utterances per batch."),
    seconds: float = typer.Option(10.0, help="Seconds of audio per utterance."),
    dtype: Optional[str] = typer.Option(
        None, help="bf16 | fp16 | fp32 (default: bf16 on CUDA, fp32 on cpu)."
    ),
    out_path: Optional[Path] = typer.Option(
        None, "--out", help="Calibration file (default ~/.cache/speechbudget/calibration.json)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Time real training steps per preset and store the measured utilisation (FLOP/s / peak) for `plan`."""
    import torch

    from . import progress
    from .plan import calibrate

    ui.quiet_if_json(as_json)
    kind = "gpu" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    names = split_csv(presets) if presets else calibrate.presets_for(family, kind)
    res = calibrate.calibrate(
        names,
        device_name,
        device,
        steps,
        batch_size,
        seconds,
        dtype,
        path=out_path,
        progress=lambda items: progress.track(items, description="timing steps"),
        announce=lambda msg: ui.err.print(msg, highlight=False, soft_wrap=True),
    )
    if as_json:
        ui.emit_json(res)
        return
    t = Table(
        box=box.SIMPLE_HEAD,
        title=f"{res['device']} ({res['dtype']} peak {res['peak_flops'] / 1e12:.3g} TFLOP/s) -> {res['path']}",
    )
    for col in ("preset", "step s (median)", "TFLOP/s", "utilisation"):
        t.add_column(col, justify="left" if col == "preset" else "right")
    for name in res["measured"]:
        r = res["presets"][name]
        t.add_row(
            name,
            f"{r['step_seconds']:.3f}",
            f"{r['flops_per_step'] / r['step_seconds'] / 1e12:.4f}",
            f"{r['utilisation']:.3f}",
        )
    ui.print_table(t)


# -------------------------------------------------------------------------------------- register
def register(app: typer.Typer) -> None:
    """Add plan (with its `fit` subcommand), sweep and calibrate to ``app``; safe to call twice."""
    if any(g.name == "plan" for g in app.registered_groups):
        return
    plan_app = typer.Typer(
        help="Budget -> model size vs data hours, a ready recipe; `plan fit` fits the law.",
        invoke_without_command=True,
        no_args_is_help=False,
    )
    plan_app.callback(invoke_without_command=True, epilog=PLAN_EPILOG)(plan_main)
    plan_app.command(
        "fit", epilog="Example:\n\n  speechbudget plan fit exp/sweep --out exp/sweep/law.json --bootstrap 200"
    )(plan_fit)
    app.add_typer(plan_app, name="plan")
    app.command(
        "sweep",
        epilog="Examples:\n\n  speechbudget sweep --recipe recipes/quickstart.yaml "
        "--presets zipformer-tiny,zipformer-xs --budgets 1e13,2e13,4e13 --out exp/sweep\n\n"
        "  speechbudget plan --budget 2e14 --unit flops --device cpu --data-hours 1.7 --pilot-fraction 0.1 "
        "--train-cuts exp/km/cuts_train.jsonl.gz --out pilots.yaml\n\n"
        "  speechbudget sweep --recipe pilots.yaml --out exp/sweep   # the designed pilots",
    )(sweep)
    app.command(
        "calibrate",
        epilog="Examples:\n\n  speechbudget calibrate --presets zipformer-tiny,zipformer-xs --steps 3\n\n"
        "  speechbudget calibrate --device cuda --family zipformer --out calibration.json",
    )(calibrate_cmd)
