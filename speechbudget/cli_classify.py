"""``speechbudget evaluate | predict | distill-targets``: the classification commands (training is ``finetune`` with
``task=classify``). Thin: parse, call :mod:`speechbudget.evaluate`, render."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.table import Table

from . import cli_common as ui
from .cli_common import JSON_OPT

EVALUATE_EPILOG = (
    "Examples:\n\n"
    "  speechbudget evaluate exp/kws data/fsdd/cuts_test.jsonl.gz\n\n"
    "  speechbudget evaluate exp/kws data/fsdd/cuts_dev.jsonl.gz data/fsdd/cuts_test.jsonl.gz --json\n\n"
    "  speechbudget evaluate exp/kws/checkpoints/checkpoint-00000300.pt cuts.jsonl.gz --bootstrap 0"
)
PREDICT_EPILOG = (
    "Examples:\n\n"
    "  speechbudget predict exp/kws clip.wav\n\n"
    "  speechbudget predict exp/kws a.wav b.flac c.mp3 --top 3 --json\n\n"
    "  speechbudget predict exp/kws recordings/   # every audio file below the folder"
)

DISTILL_EPILOG = (
    "Examples:\n\n"
    "  speechbudget distill-targets exp/teacher data/fsdd/cuts_train.jsonl.gz\n\n"
    "  speechbudget distill-targets exp/teacher cuts_train.jsonl.gz --out data/logits-mn --json\n\n"
    "then fine-tune a student with  distill.targets=data/fsdd/logits-teacher-train  (distill.lambda=0.1)"
)

MODEL_ARG = typer.Argument(..., help="Classification exp dir (newest checkpoint) or a checkpoint file.")


def _ci(r, key: str) -> str:
    ci = r.get(f"{key}_ci")
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"


def evaluate(
    model: Path = MODEL_ARG,
    cuts: List[Path] = typer.Argument(
        ..., help="One or more labeled cut manifests; a corpus folder: each of its splits."
    ),
    out_dir: Path = typer.Option(None, "--out", help="Default: EXP/evaluate-<set>."),
    bootstrap: int = typer.Option(1000, min=0, help="Bootstrap resamples for the 95% intervals (0: none)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    as_json: bool = JSON_OPT,
) -> None:
    """Accuracy, macro-F1 (or mAP for multi-label) with 95% intervals, per-class table, confusion PNG."""
    from .evaluate import evaluate as run

    ui.quiet_if_json(as_json)
    from .data.manifests import split_manifests

    results = [run(model, c, out_dir, bootstrap=bootstrap, device=device) for c in split_manifests(cuts)]
    if as_json:
        ui.emit_json(results if len(results) > 1 else results[0])
        return
    t = Table(title="classification")
    for col in ("set", "clips", "accuracy", "95% CI", "macro-F1", "mAP"):
        t.add_column(col, justify="right")
    for r in results:
        acc, f1, m = r.get("accuracy"), r.get("macro_f1"), r.get("mAP")
        t.add_row(
            r["set"],
            str(r["clips"]),
            "-" if acc is None else f"{acc:.3f}",
            _ci(r, "accuracy" if acc is not None else "mAP"),
            "-" if f1 is None else f"{f1:.3f}",
            "-" if m is None else f"{m:.3f}",
        )
    ui.out.print(t)
    for r in results:
        per = Table(title=f"{r['set']}: per class")
        keys = [k for k in ("support", "precision", "recall", "f1", "ap") if k in r["per_class"][0]]
        for col in ("class", *keys):
            per.add_column(col, justify="right")
        for row in r["per_class"]:
            cells = [row[k] if isinstance(row[k], int) or row[k] is None else f"{row[k]:.3f}" for k in keys]
            per.add_row(row["class"], *map(str, cells))
        ui.out.print(per)
        ui.out.print(f"result files: {r['out_dir']}")


def predict(
    model: Path = MODEL_ARG,
    audio: List[Path] = typer.Argument(
        ..., help="Audio files (any format soundfile reads; resampled to 16 kHz), or folders of them."
    ),
    top: int = typer.Option(5, help="How many classes to show per file."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    as_json: bool = JSON_OPT,
) -> None:
    """The most probable classes of any audio files, with their probabilities."""
    from .evaluate import predict as run

    ui.quiet_if_json(as_json)
    results = run(model, audio, top=top, device=device)
    if as_json:
        ui.emit_json(results)
        return
    t = Table(title=f"top {top} classes")
    for col in ("audio", "seconds", "class", "probability"):
        t.add_column(col, justify="right" if col in ("seconds", "probability") else "left")
    skipped = [r for r in results if "error" in r]
    for r in results:
        for i, c in enumerate(r.get("top", [])):
            t.add_row(
                r["audio"] if i == 0 else "",
                f"{r['seconds']:.2f}" if i == 0 else "",
                c["class"],
                f"{c['probability']:.3f}",
            )
    ui.out.print(t)
    for r in skipped:
        ui.err.print(f"skipped: {r['error']}")


def distill_targets(
    teacher: Path = typer.Argument(..., help="The teacher: a classification exp dir or a checkpoint file."),
    cuts: Path = typer.Argument(..., help="The cut manifest the students train on."),
    out: Path = typer.Option(
        None, "--out", help="Table path (NAME -> NAME.npz + NAME.json). Default: beside CUTS."
    ),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    as_json: bool = JSON_OPT,
) -> None:
    """Run a trained classifier once over CUTS and store its logits for distillation (CMKD)."""
    from .evaluate import distill_targets as run

    ui.quiet_if_json(as_json)
    r = run(teacher, cuts, out, device=device)
    if as_json:
        ui.emit_json(r)
        return
    ui.out.print(
        f"teacher logits of {r['clips']} clips x {r['classes']} classes -> {r['npz']}\n"
        f"fine-tune a student with  distill.targets={r['targets']}"
    )


def register(app: typer.Typer) -> None:
    """Add evaluate, predict and distill-targets to ``app``."""
    app.command("evaluate", epilog=EVALUATE_EPILOG)(evaluate)
    app.command("predict", epilog=PREDICT_EPILOG)(predict)
    app.command("distill-targets", epilog=DISTILL_EPILOG)(distill_targets)
