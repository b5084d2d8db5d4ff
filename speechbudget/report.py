"""``speechbudget report``: one table over experiment runs — compute spent, data used, WER — plus plots.

Everything is read from what the stages wrote into their experiment folders (run_card.json,
summary.json, metrics.jsonl, decode-*/decode-summary-*.json); nothing is re-run. A fine-tuning
run's total compute includes the pretraining compute that produced its initial encoder, found
through ``init.checkpoint`` in its run card.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from rich.table import Table

from . import atomic
from .atomic import write_png
from .config import split_csv
from .errors import SpeechBudgetError
from .folds import FOLDS_DIR, find_summaries, fold_label
from .train.checkpoint import final_model
from .train.metrics_log import read_metrics

FILES = {
    "markdown": "report.md",
    "json": "report.json",
    "curves": "curves.png",
    "wer_vs_compute": "wer_vs_compute.png",
    "accuracy_vs_compute": "accuracy_vs_compute.png",
    "grounding": "grounding.png",
}
_TRAIN_STAGES = ("pretrain", "finetune")


# ------------------------------------------------------------------------------ reading a run
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SpeechBudgetError(
            f"{path} is unreadable ({type(e).__name__}); re-run the stage that writes it"
        ) from None


def find_experiments(paths: Iterable[Path]) -> List[Path]:
    """Experiment folders (holding run_card.json) among ``paths``, searching folders recursively."""
    found: List[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise SpeechBudgetError(
                f"{p} does not exist; pass experiment folders (exp_dir of pretrain/finetune)"
            )
        if p.is_file():
            hits = [p.parent] if p.name == "run_card.json" else []
        elif (p / "run_card.json").is_file():
            hits = [p]
        else:
            hits = sorted(c.parent for c in p.rglob("run_card.json"))
        if not hits:
            raise SpeechBudgetError(
                f"{p} is not an experiment folder: no run_card.json in it or below "
                "(pass the exp_dir of a `speechbudget pretrain` or `finetune` run)"
            )
        found += [h.resolve() for h in hits if h.resolve() not in found]
    return found


class Run:
    """One experiment folder: its run card, its progress (summary or last metrics line), its curves."""

    def __init__(self, exp: Path):
        self.exp = Path(exp)
        self.card = _read_json(self.exp / "run_card.json")
        self.stage = self.card.get("stage")
        self.metrics = read_metrics(self.exp)
        self.notes: List[str] = []
        summary = self.exp / "summary.json"
        if summary.is_file():
            self.summary = _read_json(summary)
        else:  # still running or killed: the last logged step is the best we know
            last = self.metrics[-1] if self.metrics else {}
            self.summary = {
                "steps": last.get("step", 0),
                "flops": last.get("flops", 0.0),
                "audio_hours": last.get("audio_hours", 0.0),
                "budget_used": last.get("budget_used"),
                "flops_limit": (self.card.get("budget") or {}).get("flops_limit"),
                "binding_limit": None,
                "wall_seconds": None,
                "epochs": last.get("epoch"),
                "final": {k: v for k, v in last.items() if k in ("loss", "masked_acc")},
            }
            self.notes.append("no summary.json (unfinished run?): numbers from the last metrics line")

    #: set by :func:`name_uniquely` when two runs of a report share a folder name
    unique_name: Optional[str] = None

    @property
    def name(self) -> str:
        """``finetune``, or ``<speaker>/finetune`` for a leave-one-speaker-out fold's run."""
        if self.unique_name:
            return self.unique_name
        fold = self.exp.parent
        return f"{fold.name}/{self.exp.name}" if fold.parent.name == FOLDS_DIR else self.exp.name

    def init_checkpoint(self) -> Optional[str]:
        # runs from before 0.2 kept it inside the recipe they recorded
        init = self.card.get("init", (self.card.get("recipe") or {}).get("init"))
        ck = init.get("checkpoint") if isinstance(init, dict) else None
        return str(self.recorded_path(ck)) if ck else None

    def recorded_path(self, path: str) -> Path:
        """A path the run card recorded, relative to where training ran: found from here too when the
        report runs elsewhere (the run folder minus its recorded relative exp_dir is where it ran)."""
        p = Path(path)
        if p.is_absolute() or p.exists():
            return p
        recorded = Path((self.card.get("config") or {}).get("exp_dir") or "")
        here = self.exp.resolve()
        if (
            recorded.parts
            and not recorded.is_absolute()
            and here.parts[-len(recorded.parts) :] == recorded.parts
        ):
            moved = here.parents[len(recorded.parts) - 1] / p
            return moved if moved.exists() else p
        return p


def encoder_label(spec: Any) -> str:
    """A preset name as is; a config dict as its preset/family plus a few telling sizes."""
    if isinstance(spec, str):
        return spec
    if not isinstance(spec, dict):
        return str(spec)
    spec = dict(spec)
    head = spec.pop("preset", None) or spec.pop("family", "?")
    spec.pop("family", None)
    order = ("dim", "dims", "layers", "num_layers", "heads", "num_heads")
    keys = [k for k in order if k in spec] + [k for k in spec if k not in order]
    short = lambda v: "/".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)  # noqa: E731
    parts = [f"{k}={short(spec[k])}" for k in keys[:3]]
    more = " ..." if len(keys) > 3 else ""
    return f"{head} {' '.join(parts)}{more}".strip() if parts else head


def _checkpoint_step(path: Path) -> Optional[int]:
    m = re.fullmatch(r"checkpoint-(\d+)\.pt", path.name)
    return int(m.group(1)) if m else None


def pretrain_compute(
    checkpoint: str, runs: Dict[Path, Run]
) -> Tuple[Optional[Run], Dict[str, Any], List[str]]:
    """FLOPs and audio hours spent to produce ``checkpoint`` (a pretraining checkpoint or averaged.pt).

    Fine-tuning may start from an earlier checkpoint than the run's last one, so the counters are
    taken at that checkpoint's step: from the summary when it is the final step, else from the
    metrics line of that step, else from the checkpoint file itself.
    """
    ck = Path(checkpoint)
    exp = (ck.parents[1] if ck.parent.name == "checkpoints" else ck.parent).resolve()
    if not (exp / "run_card.json").is_file():
        return (
            None,
            {"flops": None, "audio_hours": None, "source": None},
            [f"pretraining run of {ck} not found (no {exp}/run_card.json): total compute unknown"],
        )
    run = runs.get(exp) or Run(exp)
    runs[exp] = run
    step, s = _checkpoint_step(ck), run.summary
    if step is None or step >= s.get("steps", 0):
        return run, {"flops": s.get("flops"), "audio_hours": s.get("audio_hours"), "source": "summary"}, []
    row = next((r for r in run.metrics if r.get("step") == step), None)
    if row is not None:
        return (
            run,
            {"flops": row["flops"], "audio_hours": row["audio_hours"], "source": f"metrics step {step}"},
            [],
        )
    if ck.is_file():
        from .train import checkpoint as ckpt

        c = ckpt.load(ck).get("counters", {})
        return (
            run,
            {
                "flops": c.get("flops"),
                "audio_hours": c.get("audio_seconds", 0.0) / 3600,
                "source": f"checkpoint step {step}",
            },
            [],
        )
    return (
        run,
        {"flops": s.get("flops"), "audio_hours": s.get("audio_hours"), "source": "summary"},
        [
            f"{ck.name} is gone and step {step} was not logged: pretraining compute is that of the whole run (an upper bound)"
        ],
    )


def labeled_hours(run: Run) -> Tuple[Optional[float], str]:
    """Unique hours of fine-tuning audio, and where the number comes from.

    Preference: the run card (if a stage recorded it), the train_cuts manifests minus the cuts the
    fine-tuning filter dropped (filtered_train.json), else one epoch's audio from summary.json.
    """
    if isinstance(run.card.get("labeled_hours"), (int, float)):
        return float(run.card["labeled_hours"]), "run_card"
    spec = (run.card.get("config") or {}).get("train_cuts") or ""
    paths = [run.recorded_path(p) for p in split_csv(spec)]
    if paths and all(p.is_file() for p in paths):
        filtered = run.exp / "filtered_train.json"
        dropped = {d["id"] for d in _read_json(filtered).get("dropped", [])} if filtered.is_file() else set()
        durations = {i: d for p in paths for i, d in cut_durations(p) if i not in dropped}
        return sum(durations.values()) / 3600, "train_cuts manifest"
    s, unit = run.summary, ((run.card.get("config") or {}).get("schedule") or {}).get("epoch_unit", "epochs")
    if unit == "epochs" and s.get("epochs") and s.get("audio_hours"):
        return s["audio_hours"] / s["epochs"], "summary (audio hours / epochs)"
    return None, "unknown (train_cuts manifest missing)"


def cut_durations(path: Path) -> Iterable[Tuple[str, float]]:
    """(id, duration) of each cut in a JSONL(.gz) cut manifest, read as plain JSON: a report should
    not pay for importing lhotse and torch."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                cut = json.loads(line)
                yield cut["id"], float(cut["duration"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise SpeechBudgetError(
                    f"{path} line {n} is not a cut with id and duration; "
                    "train_cuts must be a cuts_*.jsonl.gz manifest"
                ) from None


def decode_results(run: Run) -> Dict[str, Dict[str, Any]]:
    """``"<set>/<method suffix>"`` -> decode summary, for every decode summary under the run folder."""
    out = {}
    final = _final_name(run)
    for path in sorted(run.exp.glob("*/decode-summary-*.json")):
        d = _read_json(path)
        suffix = path.stem[len(f"decode-summary-{d.get('set', '')}-") :] or d.get("method", "?")
        key = f"{d.get('set', '?')}/{suffix}"
        decoded = Path(d.get("checkpoint") or "")
        if final and decoded.name and decoded.name != final:
            key += f" ({decoded.stem})"  # another checkpoint than the run's final model: its own column
        out[key] = d
    return out


def _final_name(run: Run) -> str:
    """File name of the model the run stands for, by the rule decode reads a run folder with."""
    return (final_model(run.exp) or Path(run.summary.get("checkpoint") or "")).name


def evaluate_results(run: Run) -> Dict[str, Dict[str, Any]]:
    """Classification runs: set -> the metrics ``speechbudget evaluate`` wrote under the run folder."""
    out = {}
    for path in sorted(run.exp.glob("evaluate-*/metrics-*.json")):
        d = _read_json(path)
        out[str(d.get("set", path.stem[len("metrics-") :]))] = {k: v for k, v in d.items() if k != "report"}
    return out


# ------------------------------------------------------------------------------------- rows
def _budget(run: Run) -> Dict[str, Any]:
    s = run.summary
    flops, limit = s.get("flops"), s.get("flops_limit")
    return {
        "flops": flops,
        "flops_limit": limit,
        "flops_fraction": flops / limit if flops is not None and limit else None,
        "budget_used": s.get("budget_used"),
        "binding_limit": s.get("binding_limit"),
    }


def _base_row(run: Run) -> Dict[str, Any]:
    config = run.card.get("config") or {}
    return {
        "name": run.name,
        "exp_dir": str(run.exp),
        "stage": run.stage,
        "encoder": encoder_label(config.get("encoder")),
        "params": run.card.get("params"),
        "steps": run.summary.get("steps"),
        "wall_seconds": run.summary.get("wall_seconds"),
        "final_loss": (run.summary.get("final") or {}).get("loss"),
        "device": (run.card.get("device") or {}).get("name"),
        "budget": _budget(run),
        "notes": list(run.notes),
    }


def finetune_row(run: Run, runs: Dict[Path, Run]) -> Dict[str, Any]:
    row = _base_row(run)
    ck = run.init_checkpoint()
    if ck:
        pt, pc, notes = pretrain_compute(ck, runs)
        row["notes"] += notes
        row["init"] = {"checkpoint": ck, "pretrain_exp": str(pt.exp) if pt else None, "source": pc["source"]}
    else:  # from scratch
        pc = {"flops": 0.0, "audio_hours": 0.0}
        row["init"] = None
    ft = run.summary.get("flops")
    hours, source = labeled_hours(run)
    row["notes"].append(f"labeled hours from {source}")
    row.update(
        pretrain_flops=pc["flops"],
        pretrain_audio_hours=pc["audio_hours"],
        finetune_flops=ft,
        labeled_hours=hours,
        labeled_hours_source=source,
        total_flops=pc["flops"] + ft if pc["flops"] is not None and ft is not None else None,
    )
    row["wer"] = decode_results(run)
    row["accuracy"] = evaluate_results(run)
    if run.card.get("task") == "classify":
        if not row["accuracy"]:
            row["notes"].append("no evaluation results: run `speechbudget evaluate` on this folder")
    elif not row["wer"]:
        row["notes"].append("no decode results: run `speechbudget decode` on this folder")
    final = _final_name(run)
    for key, d in row["wer"].items():
        if d.get("wer") is None:
            row["notes"].append(f"{key}: no WER ({d.get('note', 'the decode summary has none')})")
        decoded = Path(d.get("checkpoint") or "").name
        if final and decoded and decoded != final:
            row["notes"].append(f"{key}: decoded {decoded}, not the final {final}")
    return row


def pretrain_row(run: Run) -> Dict[str, Any]:
    row = _base_row(run)
    s = run.summary
    row.update(
        init=None,
        pretrain_flops=s.get("flops"),
        pretrain_audio_hours=s.get("audio_hours"),
        finetune_flops=None,
        labeled_hours=None,
        labeled_hours_source=None,
        total_flops=s.get("flops"),
        wer={},
        accuracy={},
        final_masked_acc=(s.get("final") or {}).get("masked_acc"),
        pool_hours=run.card.get("pool_hours"),  # a recipe's pool: unique hours of each corpus
    )
    if row["pool_hours"]:
        parts = ", ".join(f"{name} {h:.3g} h" for name, h in row["pool_hours"].items())
        row["notes"].append(f"pretraining pool: {parts}")
    return row


def wer_keys(rows: List[Dict[str, Any]]) -> List[str]:
    return sorted({k for r in rows for k in r["wer"]})


def accuracy_keys(rows: List[Dict[str, Any]]) -> List[str]:
    return sorted({k for r in rows for k in r.get("accuracy") or {}})


def _accuracy_cell(d: Optional[Dict[str, Any]]) -> str:
    """Accuracy in % (mAP for multi-label) with its 95% interval."""
    found = score(d, "accuracy")
    if found is None:
        return "-"
    value, ci, name = found
    cell = f"{value:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if d.get(f"{name}_ci") else "")
    return cell if name == "accuracy" else f"mAP {cell}"


# ------------------------------------------------------------------------------- formatting
def _num(v: Optional[float], fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _flops(v: Optional[float]) -> str:
    return "-" if v is None else "0" if v == 0 else f"{v:.2e}"


def _params(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def _wer_cell(d: Optional[Dict[str, Any]]) -> str:
    if not d or d.get("wer") is None:
        return "-"
    ci = d.get("ci95")
    return f"{d['wer']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{d['wer']:.2f}"


def _budget_cell(b: Dict[str, Any]) -> str:
    flops = f"{_flops(b['flops'])} / {_flops(b['flops_limit'])}" if b["flops_limit"] else "no FLOP limit"
    used = "-" if b["budget_used"] is None else f"{100 * b['budget_used']:.0f}%"
    return f"{flops}; {used} ({b['binding_limit'] or '?'})"


def table_rows(report: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """Header and cells shared by the Markdown file and the terminal table."""
    keys = report["wer_keys"]
    acc_keys = report.get("accuracy_keys") or []
    header = [
        "run",
        "stage",
        "encoder",
        "params",
        "PT FLOPs",
        "PT audio h",
        "FT FLOPs",
        "labeled h",
        "total FLOPs",
        *[f"WER {k} [95% CI]" for k in keys],
        *[f"acc % {k} [95% CI]" for k in acc_keys],
        "FLOPs used / limit; budget (binding)",
    ]
    cells = []
    for r in report["rows"]:
        cells.append(
            [
                r["name"],
                r["stage"],
                r["encoder"],
                _params(r["params"]),
                _flops(r["pretrain_flops"]),
                _num(r["pretrain_audio_hours"], ".4g"),
                _flops(r["finetune_flops"]),
                _num(r["labeled_hours"], ".4g"),
                _flops(r["total_flops"]),
                *[_wer_cell(r["wer"].get(k)) if r["stage"] == "finetune" else "" for k in keys],
                *[_accuracy_cell((r.get("accuracy") or {}).get(k)) for k in acc_keys],
                _budget_cell(r["budget"]),
            ]
        )
    return header, cells


def markdown(report: Dict[str, Any]) -> str:
    header, cells = table_rows(report)
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["# speechbudget report", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in cells]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    lines += [f"- {r['name']}: {n}" for r in report["rows"] for n in r["notes"]]
    lines += [
        "",
        f"![training curves]({FILES['curves']})",
        "",
    ]
    for key, title in (("wer_vs_compute", "WER vs compute"), ("accuracy_vs_compute", "accuracy vs compute")):
        if key in report.get("files", FILES):
            lines += [f"![{title}]({FILES[key]})", ""]
    if report.get("grounding"):
        lines += [f"![speech-image retrieval and ABX]({FILES['grounding']})", ""]
    for path, rec in (report.get("pilots") or {}).items():
        from .plan.pilots import summary_line

        lines += [
            f"## Pilots that planned this run ({path})",
            "",
            "| pilot | params M | FLOPs | steps | loss |",
        ]
        lines += ["|---|---|---|---|---|"] + [
            f"| {r['preset']} | {r['params'] / 1e6:.2f} | {r['flops']:.3g} | {r['steps']} | {r['final_loss']:.3f} |"
            for r in rec["runs"]
        ]
        lines += ["", summary_line(rec), ""] + (
            [f"warning: {rec['fallback']}", ""] if rec.get("fallback") else []
        )
    for path, summary in (report.get("folds") or {}).items():
        header, cells = fold_cells(summary)
        lines += [f"## Leave-one-speaker-out folds ({path})", "", "| " + " | ".join(header) + " |"]
        lines += ["|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in cells] + [""]
    return "\n".join(lines)


def fold_cells(summary: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """Leave-one-speaker-out folds: one row per fold (dev WER per model), then mean, std, min-max."""
    models = list(summary["mean"])
    header = ["fold (dev speaker)", "train speakers", *[f"{m} dev WER %" for m in models]]
    wer = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    cells = [
        [fold_label(r), ", ".join(r["train_speakers"]), *[wer(r["wer"].get(m)) for m in models]]
        for r in summary["folds"]
    ]
    stats = [summary["mean"][m] for m in models]
    seeds = summary.get("seeds")
    of = f"{stats[0]['n'] if stats else 0} folds" + (" (each: mean over seeds)" if seeds else "")
    cells.append(["mean", of, *[wer(s["mean"]) for s in stats]])
    cells.append(["std (n-1)", "over folds", *[wer(s["std"]) for s in stats]])
    cells.append(["min-max", "", *[f"{wer(s['min'])}-{wer(s['max'])}" for s in stats]])
    if seeds:
        cells.append(["seed std", "within a fold, pooled", *[wer(seeds[m]["std"]) for m in models]])
    if summary.get("pending"):  # written by a run still going, or stopped part way
        cells.append(["not finished", f"{summary['pending']} more runs", *["-" for _ in models]])
    return header, cells


def fold_table(summary: Dict[str, Any]) -> Table:
    header, cells = fold_cells(summary)
    t = Table(title="leave-one-speaker-out folds (test speakers only in the final run)")
    for i, col in enumerate(header):
        t.add_column(col, justify="left" if i < 2 else "right")
    for row in cells:
        t.add_row(*row)
    return t


def _seeds_cell(wers: List[float], mean: float) -> str:
    """``22.2 / 24.0 / 23.8 (23.33)``: each seed's WER and their mean; one seed: its WER."""
    return f"{' / '.join(f'{w:.1f}' for w in wers)} ({mean:.2f})" if len(wers) > 1 else f"{mean:.2f}"


def compare_table(result: Dict[str, Any], base: str, arm: str) -> Table:
    """``speechbudget compare``: one row per fold (each seed's WER, their mean, the change), then the fold
    means; the paired change and how often it was lower go in the caption."""
    se = result["change_se"]
    caption = (
        f"paired change {result['change']:+.2f}"
        + (f" +- {se:.2f} (s.e.)" if se is not None else "")
        + f" over {result['runs']} runs, lower in {result['runs_lower']}; lower on {result['folds_lower']} of "
        f"{len(result['folds'])} folds"
        + (
            ""
            if result["no_fold_worse"]
            else "; worse on " + ", ".join(f["dev_speaker"] for f in result["folds"] if f["change"] > 0)
        )
    )
    unpaired = result["unpaired"]
    if unpaired["base"] or unpaired["arm"]:
        caption += f"\nleft out (run by one side only): base {unpaired['base']}, arm {unpaired['arm']}"
    unfinished = {k: n for k, n in (result.get("unfinished") or {}).items() if n}
    if unfinished:
        caption += "\nnot finished yet: " + ", ".join(f"{n} {side} runs" for side, n in unfinished.items())
        caption += " (re-run that side's command to finish them)"
    if result.get("other_threads"):
        n = len(result["other_threads"])
        caption += (
            f"\n{n} paired run{'s' if n > 1 else ''} trained on other thread counts than their pair "
            "(speaker, seed, base, arm: "
            + ", ".join(f"{s} {k}: {b} vs {a}" for s, k, b, a in result["other_threads"])
            + "): part of their change is arithmetic; run both sides with the same --fold-jobs"
        )
    t = Table(
        title=f"leave-one-speaker-out folds, paired: {base} ({result['base_model']}) vs {arm} "
        f"({result['arm_model']}), dev WER %",
        caption=caption,
        caption_justify="left",
    )
    for i, col in enumerate(("fold (dev speaker)", "seeds", "base", "arm", "change")):
        t.add_column(col, justify="left" if i < 2 else "right")
    for f in result["folds"]:
        t.add_row(
            f["dev_speaker"],
            ", ".join(map(str, f["seeds"])),
            _seeds_cell(f["base"], f["base_mean"]),
            _seeds_cell(f["arm"], f["arm_mean"]),
            f"{f['change']:+.2f}",
        )
    change = result["arm_fold_mean"] - result["base_fold_mean"]
    t.add_row(
        "fold mean", "", f"{result['base_fold_mean']:.2f}", f"{result['arm_fold_mean']:.2f}", f"{change:+.2f}"
    )
    return t


def render_table(report: Dict[str, Any]) -> Table:
    """The report as a rich table; per-run notes go in the caption."""
    header, cells = table_rows(report)
    t = Table(
        title=f"speechbudget report ({len(cells)} runs)",
        caption="\n".join(f"{r['name']}: {n}" for r in report["rows"] for n in r["notes"]) or None,
        caption_justify="left",
    )
    for i, col in enumerate(header):
        t.add_column(col, justify="left" if i < 3 else "right")
    for row in cells:
        t.add_row(*row)
    return t


# ------------------------------------------------------------------------------------ plots
def _figure(width: float, height: float, ncols: int = 1):
    """A figure on the Agg canvas directly: no pyplot global state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _run_label(run: Run) -> str:
    """ "george/finetune", not "george/finetune (finetune)": the stage only when the name lacks it."""
    return run.name if run.name.split("/")[-1] == run.stage else f"{run.name} ({run.stage})"


def _log_if_wide(ax) -> None:
    """A log y axis when the curves span more than 20x (a CTC loss falls from ~30 to ~0.1: on a linear
    axis every run after its first steps is one flat line at the bottom)."""
    ys = [y for line in ax.lines for y in line.get_ydata() if y > 0]
    if ys and max(ys) > 20 * min(ys):
        ax.set_yscale("log")


def plot_curves(runs: List[Run], path: Path):
    """Loss against steps and against training FLOPs (runs differ in batch size, so steps alone
    mislead), and pretraining masked-prediction accuracy against FLOPs. Returns the figure."""
    from matplotlib.ticker import MaxNLocator

    many = len(runs) > 5  # one legend below the panels instead of one covering each panel's curves
    fig, (ax_step, ax_flops, ax_acc) = _figure(
        15, 4.2 + (0.25 * ((len(runs) + 3) // 4) if many else 0), ncols=3
    )
    for i, run in enumerate(runs):
        # one colour and one name per run in every panel: the accuracy panel drew the pretraining
        # run in the colour the loss panels gave fine-tuning
        style = {"label": _run_label(run), "color": f"C{i % 10}"}
        rows = [r for r in run.metrics if _finite(r.get("loss"))]
        style["marker"] = "." if len(rows) < 30 else None
        if rows:
            ax_step.plot([r["step"] for r in rows], [r["loss"] for r in rows], **style)
            by_flops = [r for r in rows if _finite(r.get("flops"))]
            if by_flops:
                ax_flops.plot([r["flops"] for r in by_flops], [r["loss"] for r in by_flops], **style)
        acc = [r for r in run.metrics if _finite(r.get("masked_acc")) and _finite(r.get("flops"))]
        if acc:
            ax_acc.plot([r["flops"] for r in acc], [r["masked_acc"] for r in acc], **style)
    ax_step.set(title="training loss by step", xlabel="optimizer step", ylabel="loss")
    ax_step.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_flops.set(title="training loss by compute", xlabel="training FLOPs", ylabel="loss")
    ax_acc.set(title="pretraining masked accuracy", xlabel="training FLOPs", ylabel="accuracy")
    for ax in (ax_flops, ax_acc):
        _scientific_x(ax)
    for ax in (ax_step, ax_flops):
        _log_if_wide(ax)
    for ax, what in (
        (ax_step, "no logged steps"),
        (ax_flops, "no logged steps"),
        (ax_acc, "no pretraining runs"),
    ):
        if ax.lines:
            ax.grid(True, alpha=0.3)
            if not many or ax is ax_acc:
                ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes)
    if many and ax_step.lines:
        fig.legend(*ax_step.get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize=8)
    write_png(path, fig)
    return fig


def _scientific_x(ax) -> None:
    """At most five x ticks in a x10^k offset: FLOP counts never run into each other."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0), useMathText=True)


def _readable_ticks(ax) -> None:
    """Run names as x tick labels, level when they fit side by side, else turned 30 or 90 degrees:
    two turned labels clear each other when the ticks' spacing x sin(angle) exceeds a line's height
    (measured on the drawn figure, in pixels)."""
    ax.figure.canvas.draw()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    if len(labels) < 2:
        return
    boxes = [t.get_window_extent() for t in labels]
    spacing = min(b.x0 + b.width / 2 - (a.x0 + a.width / 2) for a, b in zip(boxes, boxes[1:]))
    line = max(b.height for b in boxes) * 1.15
    if all(b.x0 - a.x1 > 4 for a, b in zip(boxes, boxes[1:])):
        return
    angle = 30 if spacing * math.sin(math.radians(30)) >= line else 90
    for t in labels:
        t.set(rotation=angle, ha="right", va="top" if angle == 30 else "center", rotation_mode="anchor")


def score(d: Optional[Dict[str, Any]], metric: str) -> Optional[Tuple[float, List[float], str]]:
    """(value %, [low, high] %, name) of one decode or evaluate result: ``metric`` "wer" its WER,
    "accuracy" its accuracy or, for a multi-label classifier, its mAP (the interval is the value
    itself when none was computed); None when it has no such number."""
    if not d:
        return None
    if metric == "wer":
        return None if d.get("wer") is None else (d["wer"], d.get("ci95") or [d["wer"]] * 2, "WER")
    key = "accuracy" if d.get("accuracy") is not None else "mAP"
    if d.get(key) is None:
        return None
    ci = d.get(f"{key}_ci") or [d[key]] * 2
    return 100 * d[key], [100 * c for c in ci], key


def plot_wer_vs_compute(rows: List[Dict[str, Any]], keys: List[str], path: Path, metric: str = "wer"):
    """WER (``metric="accuracy"``: accuracy, or mAP) against total training FLOPs, one series per
    test set/method, 95% CI as error bars.

    A log axis only when the runs span more than a decade of compute; runs at (nearly) the same
    compute - the usual pretrained-vs-scratch comparison - are drawn side by side per run instead,
    since a log axis over a few percent prints overlapping tick labels and stacks the points.
    """
    fig, (ax,) = _figure(7.5, 4.5)
    series = []
    for key in keys:
        scored = ((r, score((r.get(metric) or {}).get(key), metric)) for r in rows if r["total_flops"])
        pts = [(r["total_flops"], found, r["name"]) for r, found in scored if found is not None]
        if pts:
            series.append((key, pts))
    xs = [p[0] for _, pts in series for p in pts]
    same_compute = bool(xs) and max(xs) <= 1.05 * min(xs)
    names = sorted({p[2] for _, pts in series for p in pts})
    width = 0.8 / max(len(series), 1)
    for i, (key, pts) in enumerate(series):
        y = [p[1][0] for p in pts]
        ci = [p[1][1] for p in pts]
        yerr = [[max(w - c[0], 0.0) for w, c in zip(y, ci)], [max(c[1] - w, 0.0) for w, c in zip(y, ci)]]
        if same_compute:
            x = [names.index(p[2]) + (i - (len(series) - 1) / 2) * width for p in pts]
        else:
            x = [p[0] for p in pts]
        ax.errorbar(x, y, yerr=yerr, fmt="o", capsize=4, label=key)
        if not same_compute:
            for xi, yi, (_, _, name) in zip(x, y, pts):
                ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if same_compute:
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.4)
        _readable_ticks(ax)
        lo, hi = f"{min(xs):.3g}", f"{max(xs):.3g}"
        ax.set(xlabel=f"run (all at {lo if lo == hi else f'{lo} to {hi}'} training FLOPs)")
    elif xs and max(xs) > 10 * min(xs):
        ax.set_xscale("log")
        ax.set(xlabel="training FLOPs (log scale)")
    else:
        ax.margins(x=0.15)
        _scientific_x(ax)
        ax.set(xlabel="training FLOPs")
    name = " / ".join(sorted({p[1][2] for _, pts in series for p in pts})) or metric.replace("wer", "WER")
    ax.set(title=f"{name} vs total compute (pretraining + fine-tuning)", ylabel=f"{name} % (95% CI)")
    ax.set_ylim(bottom=0, top=100 if metric != "wer" else None)
    ax.grid(True, axis="y", alpha=0.3)
    if ax.lines or ax.collections:
        ax.legend(fontsize=8)
    else:
        what = "decode" if metric == "wer" else "evaluate"
        ax.text(0.5, 0.5, f"no {what} results", ha="center", va="center", transform=ax.transAxes)
    write_png(path, fig)
    return fig


def grounding_results(exp_dirs: Iterable[Path]) -> Dict[str, Dict[str, Any]]:
    """`evaluate-retrieval` and `probe abx` results below the given folders, by run name (the
    folder's path below the one given, e.g. a train-multi schedule): what `plot_grounding` draws."""
    found: Dict[str, Dict[str, Any]] = {}
    for root in map(Path, exp_dirs):
        for name, key in (("retrieval.json", "retrieval"), ("abx.json", "abx")):
            for f in sorted(root.rglob(name)) if root.is_dir() else []:
                run = str(f.parent.relative_to(root)) if f.parent != root else root.name
                found.setdefault(run, {})[key] = _read_json(f)
    return found


def plot_grounding(results: Dict[str, Dict[str, Any]], path: Path) -> None:
    """Recall@K both ways (95% CI) and ABX error per encoder layer, one series per run."""
    fig, (ax_r, ax_abx) = _figure(13, 4.5, ncols=2)
    runs = [r for r in results if "retrieval" in results[r]]
    width = 0.8 / max(len(runs), 1)
    ticks: List[str] = []
    for i, run in enumerate(runs):
        ret, xs, ys, errs = results[run]["retrieval"], [], [], [[], []]
        for direction, short in (("speech_to_image", "s->i"), ("image_to_speech", "i->s")):
            for k in (1, 5, 10):
                value = (ret.get(direction) or {}).get(f"r@{k}")
                if value is None:
                    continue
                label = f"{short} R@{k}"
                if label not in ticks:
                    ticks.append(label)
                lo, hi = (ret[direction].get(f"r@{k}_ci") or [value, value])[:2]
                xs.append(ticks.index(label) + (i - (len(runs) - 1) / 2) * width)
                ys.append(value)
                errs[0].append(max(value - lo, 0.0))
                errs[1].append(max(hi - value, 0.0))
        ax_r.bar(xs, ys, width=width, yerr=errs, capsize=3, label=run)
    ax_r.set_xticks(range(len(ticks)), ticks)
    ax_r.set(title="speech-image retrieval (95% CI)", ylabel="recall", ylim=(0, 1.2))  # room for the legend
    for run in results:
        layers = (results[run].get("abx") or {}).get("layers") or {}
        pts = [(name, v.get("error")) for name, v in layers.items() if _finite(v.get("error"))]
        if pts:
            ax_abx.plot([n for n, _ in pts], [100 * e for _, e in pts], marker="o", label=run)
    ax_abx.set(title="ABX error per layer (lower is better)", xlabel="encoder layer", ylabel="ABX error %")
    for ax, what in ((ax_r, "no evaluate-retrieval results"), (ax_abx, "no probe abx results")):
        if ax.lines or ax.patches:
            ax.legend(fontsize=8)
            ax.grid(True, axis="y", alpha=0.3)
        else:
            ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes)
    write_png(path, fig)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# ------------------------------------------------------------------------------------ build
def _write_text(text: str, path: Path) -> None:
    atomic.write_text(path, text)


def name_uniquely(runs: Iterable[Run]) -> None:
    """Runs whose names collide (``pretrain`` of two experiments) are named by the shortest end of
    their paths that tells them apart (``exp1/pretrain``, ``exp2/pretrain``): rows and plot ticks
    must not merge two runs."""
    by_name: Dict[str, List[Run]] = {}
    for run in runs:
        by_name.setdefault(run.name, []).append(run)
    for same in by_name.values():
        if len(same) < 2:
            continue
        depth = 2
        while depth < max(len(r.exp.parts) for r in same):
            names = ["/".join(r.exp.parts[-depth:]) for r in same]
            if len(set(names)) == len(names):
                break
            depth += 1
        for run in same:
            run.unique_name = "/".join(run.exp.parts[-depth:])


def build_report(exp_dirs: List[Path], out_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Read the runs, write report.md, report.json, curves.png and wer_vs_compute.png into ``out_dir``
    (default: ``report/`` in the folder the runs share, not wherever the command was typed).

    ``exp_dirs``: fine-tuning and pretraining experiment folders, or parents to search. The
    pretraining runs that fine-tuning runs start from are added even when not listed.
    """
    if not exp_dirs:
        raise SpeechBudgetError(
            "no experiment folders given; pass exp_dirs of pretrain/finetune runs or a parent folder"
        )
    if out_dir is None:
        out_dir = Path(os.path.commonpath([Path(p).resolve() for p in exp_dirs])) / "report"
    runs: Dict[Path, Run] = {
        p: Run(p) for p in find_experiments(exp_dirs)
    }  # bad inputs first: no empty --out
    name_uniquely(runs.values())
    atomic.check_writable(out_dir, "report output folder")
    ft_rows = [finetune_row(r, runs) for r in list(runs.values()) if r.stage == "finetune"]
    name_uniquely(runs.values())  # again: the pretraining runs the fine-tuning ones linked
    pt_rows = [pretrain_row(r) for r in runs.values() if r.stage == "pretrain"]  # incl. linked ones
    rows = ft_rows + pt_rows
    skipped = [
        f"skipped {r.exp}: stage {r.stage!r} is not reported"
        for r in runs.values()
        if r.stage not in _TRAIN_STAGES
    ]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "rows": rows,
        "wer_keys": wer_keys(rows),
        "accuracy_keys": accuracy_keys(rows),
        "files": {k: str(out_dir / v) for k, v in FILES.items()},
        "notes": [
            "FLOPs are training FLOPs counted on the real batches (2 x 3 x forward multiply-adds).",
            "total FLOPs = pretraining FLOPs up to the checkpoint fine-tuning started from (0 from scratch) "
            "+ fine-tuning FLOPs; k-means target extraction is not counted.",
            "PT audio h = hours of audio processed by pretraining (with repeats); labeled h = unique hours of "
            "fine-tuning audio after filtering (source in report.json: labeled_hours_source).",
            "WER in %, 95% CI from a bootstrap over utterances; '-' = not decoded.",
            "acc % = classification accuracy (mAP for multi-label) from `evaluate`, 95% bootstrap CI over clips.",
            "budget: FLOPs used / FLOP limit of the row's own run; budget used = share of the binding limit.",
            *skipped,
        ],
    }
    plot_curves([r for r in runs.values() if r.stage in _TRAIN_STAGES], out_dir / FILES["curves"])
    # WER for CTC runs, accuracy (mAP) for classifiers; an empty WER plot only when neither was scored
    if report["wer_keys"] or not report["accuracy_keys"]:
        plot_wer_vs_compute(rows, report["wer_keys"], out_dir / FILES["wer_vs_compute"])
    else:
        report["files"].pop("wer_vs_compute")
    if report["accuracy_keys"]:
        plot_wer_vs_compute(rows, report["accuracy_keys"], out_dir / FILES["accuracy_vs_compute"], "accuracy")
    else:
        report["files"].pop("accuracy_vs_compute")
    report["folds"] = {str(p): _read_json(p) for p in find_summaries(exp_dirs)}
    from .plan.pilots import find_pilot_summaries, summary_line

    report["pilots"] = {str(p): _read_json(p) for p in find_pilot_summaries(exp_dirs)}
    report["notes"] += [summary_line(rec) for rec in report["pilots"].values()]
    report["grounding"] = grounding_results(exp_dirs)
    if report["grounding"]:
        plot_grounding(report["grounding"], out_dir / FILES["grounding"])
    else:
        report["files"].pop("grounding")
    _write_text(markdown(report), out_dir / FILES["markdown"])
    _write_text(json.dumps(report, indent=2, default=str) + "\n", out_dir / FILES["json"])
    return report
