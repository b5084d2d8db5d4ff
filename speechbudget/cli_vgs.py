"""``train-multi``, ``evaluate-retrieval`` and ``probe abx``: SSL + visually grounded speech commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table

from .cli_common import JSON_OPT, emit_json, out, print_table, quiet_if_json

probe_app = typer.Typer(
    help="Probe what an encoder's layers represent.",
    epilog="Example:\n\n  speechbudget probe abx exp/pretrain data/fsdd/cuts_dev.jsonl.gz",
    no_args_is_help=True,
)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v)


def train_multi_cmd(
    recipe: Path = typer.Argument(..., help="Recipe with an ssl_vgs: section."),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="key=value overrides, e.g. max_duration=20 vgs.dim=64 seed=1"
    ),
    schedule: Optional[List[str]] = typer.Option(
        None, "--schedule", help="Run only this named schedule (repeatable); default: all, in order."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """HuBERT + VGS on one shared encoder: simultaneous (weighted sum) or in phases. Re-run to resume."""
    from .train.multi import train_multi
    from .train.multi_config import load_multi_recipe

    quiet_if_json(as_json)
    parsed, raw = load_multi_recipe(recipe, overrides or [])
    result = train_multi(parsed, raw, schedule or None)
    if as_json:
        emit_json(result)
        return
    t = Table(title=f"train-multi -> {result['exp_dir']}")
    for col in ("schedule", "phase", "objectives", "steps", "FLOPs", "SSL held-out", "VGS held-out"):
        t.add_column(col)
    for name, run in result["schedules"].items():
        for p in run["phases"]:
            w = ", ".join(f"{k} {v:g}" for k, v in p["objectives"].items() if v > 0)
            v = p["valid"]
            t.add_row(
                name,
                str(p["phase"]),
                w,
                str(p["steps"]),
                f"{p['flops']:.3e}",
                _fmt(v.get("valid_hubert_loss")),
                _fmt(v.get("valid_vgs_loss")),
            )
    print_table(t)


def evaluate_retrieval_cmd(
    exp: Path = typer.Argument(..., help="A train-multi schedule folder (or one of its phase folders)."),
    cuts: Path = typer.Argument(
        ..., help="Paired cuts (cuts_test.jsonl.gz of a scenes/flickr8k/coco corpus)."
    ),
    bootstrap: int = typer.Option(1000, min=0, help="Bootstrap resamples for the 95% intervals (0: none)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Speech->image and image->speech recall@1/5/10 with 95% CIs; writes EXP/retrieval.json."""
    from .train.multi_eval import evaluate_retrieval

    quiet_if_json(as_json)
    r = evaluate_retrieval(exp, cuts, bootstrap=bootstrap)
    if as_json:
        emit_json(r)
        return
    t = Table(title=f"retrieval: {r['captions']} captions, {r['images']} images")
    for col in ("direction", "r@1", "r@5", "r@10"):
        t.add_column(col)
    for d in ("speech_to_image", "image_to_speech"):
        row = r[d]
        cells = []
        for k in (1, 5, 10):
            ci = row.get(f"r@{k}_ci")
            cells.append(f"{row[f'r@{k}']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        t.add_row(d.replace("_", " "), *cells)
    print_table(t)
    out.print(f"written to {Path(exp) / 'retrieval.json'}")


def probe_abx_cmd(
    exp: Path = typer.Argument(..., help="A train-multi folder, or any training run folder/checkpoint."),
    cuts: Path = typer.Argument(..., help="Cuts with features whose transcripts label the ABX items."),
    layers: str = typer.Option("all", help="'all' or a comma list: input,1,3 (or layer3)."),
    mode: str = typer.Option("across", help="across (X another speaker) | within."),
    max_per_group: int = typer.Option(
        4, help="At most this many items per (label, speaker): bounds DTW work."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """ABX error of each encoder layer (lower: the layer separates the labels better); writes EXP/abx.json."""
    from .config import split_csv
    from .train.multi_eval import probe_abx

    quiet_if_json(as_json)
    r = probe_abx(exp, cuts, split_csv(layers) or ["all"], mode=mode, max_per_group=max_per_group)
    if as_json:
        emit_json(r)
        return
    t = Table(title=f"ABX ({r['mode']} speakers), best layer: {r['best_layer']}")
    for col in ("layer", "error", "triplets"):
        t.add_column(col)
    for name, v in r["layers"].items():
        t.add_row(name, _fmt(v["error"]), str(v["triplets"]))
    print_table(t)
    out.print(f"written to {Path(exp) / 'abx.json'}")


def register(app: typer.Typer) -> None:
    app.command(
        "train-multi",
        epilog="Examples:\n\n"
        "  speechbudget train-multi recipes/scenes-ssl-vgs.yaml\n\n"
        "  speechbudget train-multi recipes/scenes-ssl-vgs.yaml --schedule sequential seed=1 --json\n\n"
        "  speechbudget train-multi recipes/spokencoco-ssl-vgs.yaml exp_dir=exp/coco",
    )(train_multi_cmd)
    app.command(
        "evaluate-retrieval",
        epilog="Examples:\n\n"
        "  speechbudget evaluate-retrieval exp/scenes-ssl-vgs/sequential data/synthetic-scenes/cuts_test.jsonl.gz\n\n"
        "  speechbudget evaluate-retrieval exp/coco/simultaneous data/spokencoco/cuts_test.jsonl.gz --json",
    )(evaluate_retrieval_cmd)
    probe_app.command(
        "abx",
        epilog="Examples:\n\n"
        "  speechbudget probe abx exp/scenes-ssl-vgs/sequential data/fsdd/cuts_train.jsonl.gz --layers all\n\n"
        "  speechbudget probe abx exp/pt data/fsdd/cuts_test.jsonl.gz --layers input,2,4 --json",
    )(probe_abx_cmd)
    app.add_typer(probe_app, name="probe")
