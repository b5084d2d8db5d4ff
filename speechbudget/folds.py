"""Leave-one-speaker-out folds: each labelled speaker that is not a test speaker is once the dev set
of a model fine-tuned on the others, so a recipe is tuned on the mean over speakers, not on the one
speaker it happened to be checked on.

``speechbudget run --folds speakers`` writes ``EXP/folds/<speaker>/cuts_{train,dev}.jsonl.gz``, runs
the recipe's fine-tuning and decoding there, and keeps each fold's dev WER with their mean and
spread in ``EXP/folds/folds.json``. Test speakers are never in a fold: only the final, all-speaker
run decodes them, once. ``fold_seeds: N`` fine-tunes every fold N times (seeds seed..seed+N-1, in
``EXP/folds/<speaker>-seed+K/``): a speaker's WER is then the mean over its seeds, and the summary also
gives the seed-to-seed spread within a fold, the noise a change must beat.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from lhotse import CutSet

from . import atomic
from .data.manifests import cut_speaker, cuts_path, save_manifest
from .errors import SpeechBudgetError

KINDS = ("speakers",)
FOLDS_DIR = "folds"
SUMMARY_NAME = "folds.json"


@dataclass(frozen=True)
class Fold:
    dev_speaker: str
    train_speakers: Tuple[str, ...]
    #: the fold fine-tuned again with the recipe's seed + ``repeat`` (``fold_seeds``): one run per
    #: fold cannot rank recipes when two seeds of one fold differ by 18 points (BENCHMARKS.md section 4)
    repeat: int = 0

    @property
    def name(self) -> str:
        return self.dev_speaker if not self.repeat else f"{self.dev_speaker}-seed+{self.repeat}"


def check_kind(kind: Optional[str], key: str = "folds") -> None:
    if kind is not None and kind not in KINDS:
        raise SpeechBudgetError(f"{key} must be {' or '.join(KINDS)} (got {kind!r})")


def speaker_folds(cuts: Iterable[Any], seeds: int = 1) -> List[Fold]:
    """One fold per speaker of ``cuts`` (the labelled, non-test cuts), in name order; with ``seeds``
    > 1 the same folds again for each further fine-tuning seed."""
    speakers = sorted({cut_speaker(c) for c in cuts})
    if "" in speakers:
        raise SpeechBudgetError(
            "leave-one-speaker-out folds need a speaker on every labelled cut; this corpus has cuts without one"
        )
    if len(speakers) < 2:
        raise SpeechBudgetError(
            f"leave-one-speaker-out folds need at least 2 labelled speakers besides the test speakers "
            f"(found {speakers or 'none'})"
        )
    return [Fold(s, tuple(x for x in speakers if x != s), k) for k in range(seeds) for s in speakers]


def write_fold(cuts: CutSet, fold: Fold, fold_dir: Path) -> Tuple[Path, Path]:
    """The fold's train and dev manifests; kept once both exist, so a resumed fold reads the same cuts."""
    train_path, dev_path = cuts_path(fold_dir, "train"), cuts_path(fold_dir, "dev")
    if not (train_path.is_file() and dev_path.is_file()):
        train = cuts.filter(lambda c: cut_speaker(c) in fold.train_speakers).to_eager()
        dev = cuts.filter(lambda c: cut_speaker(c) == fold.dev_speaker).to_eager()
        save_manifest(dev, dev_path)
        save_manifest(train, train_path)
    return train_path, dev_path


def spread(values: Sequence[float]) -> Dict[str, Any]:
    """Mean, sample standard deviation (n - 1) and range of the folds' numbers."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    mean = sum(values) / n
    std = sample_std(values) if n > 1 else 0.0
    return {"n": n, "mean": round(mean, 2), "std": round(std, 2), "min": min(values), "max": max(values)}


def sample_std(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1) of two or more numbers."""
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _by_speaker(rows: List[Dict[str, Any]], model: str) -> List[List[float]]:
    """Each dev speaker's WERs of ``model`` (one per seed), speakers in the order of ``rows``."""
    groups: Dict[str, List[float]] = {}
    for r in rows:
        if r["wer"].get(model) is not None:
            groups.setdefault(r["dev_speaker"], []).append(r["wer"][model])
    return list(groups.values())


def seed_spread(groups: List[List[float]]) -> Dict[str, Any]:
    """The seed-to-seed standard deviation within a fold, pooled over the folds with two seeds or more."""
    runs, dof = sum(map(len, groups)), sum(len(g) - 1 for g in groups)
    if dof == 0:
        return {"runs": runs, "std": None}
    ss = sum((v - m) ** 2 for g in groups for m in [sum(g) / len(g)] for v in g)
    return {"runs": runs, "std": round(math.sqrt(ss / dof), 2)}


def summarize(rows: List[Dict[str, Any]], test_speakers: Sequence[str] = ()) -> Dict[str, Any]:
    """``rows``: one per finished fold run, ``{"dev_speaker", "train_speakers", ["seed",] "wer": {model:
    WER %}}``. A speaker's WER is the mean over its seeds; the spread is over speakers."""
    models: List[str] = []
    for r in rows:
        models += [m for m in r["wer"] if m not in models]
    groups = {m: _by_speaker(rows, m) for m in models}
    summary = {
        "protocol": "leave-one-speaker-out",
        "test_speakers_excluded": list(test_speakers),
        "folds": rows,
        "mean": {m: spread([round(sum(g) / len(g), 2) for g in groups[m]]) for m in models},
    }
    if any("seed" in r for r in rows):
        summary["seeds"] = {m: seed_spread(groups[m]) for m in models}
    return summary


def write_summary(exp: Path, summary: Dict[str, Any]) -> Path:
    path = Path(exp) / FOLDS_DIR / SUMMARY_NAME
    atomic.write_json(path, summary)
    return path


def summary_lines(summary: Dict[str, Any]) -> List[str]:
    """The fold table as plain lines (console log and report notes)."""
    lines = [
        f"fold {fold_label(r)} (train: {', '.join(r['train_speakers'])}): "
        + ", ".join(f"{m} dev WER {w:.2f}%" for m, w in r["wer"].items() if w is not None)
        for r in summary["folds"]
    ]
    for m, s in summary["mean"].items():
        if s["n"]:
            lines.append(
                f"{m}: mean dev WER {s['mean']:.2f}% over {s['n']} folds "
                f"(std {s['std']:.2f}, min-max {s['min']:.2f}-{s['max']:.2f})"
            )
        seeds = (summary.get("seeds") or {}).get(m)
        if seeds and seeds["std"] is not None:
            lines.append(f"{m}: seed-to-seed std within a fold {seeds['std']:.2f} ({seeds['runs']} runs)")
    if summary.get("pending"):
        lines.append(
            f"{summary['pending']} more fold runs not finished: the means above are of the finished ones"
        )
    return lines


def fold_label(row: Dict[str, Any]) -> str:
    """``george``, or ``george (seed 1)`` when the folds were run with several seeds."""
    return row["dev_speaker"] + (f" (seed {row['seed']})" if "seed" in row else "")


def find_summaries(paths: Iterable[Path]) -> List[Path]:
    """``folds.json`` of the experiments given (an exp_dir, its folds/ folder, or a run inside it)."""
    found: List[Path] = []
    for p in map(Path, paths):
        for cand in (p / SUMMARY_NAME, p / FOLDS_DIR / SUMMARY_NAME, p.parent / FOLDS_DIR / SUMMARY_NAME):
            if cand.is_file() and cand.resolve() not in found:
                found.append(cand.resolve())
    return found


def load_summary(path: Path) -> Dict[str, Any]:
    """The folds summary of an experiment (its exp_dir, its folds/ folder, or a run inside it)."""
    found = find_summaries([path])
    if not found and not Path(path).exists():
        raise SpeechBudgetError(f"{path} does not exist: give an experiment folder run with --folds speakers")
    if not found:
        raise SpeechBudgetError(
            f"{path} has no {FOLDS_DIR}/{SUMMARY_NAME}: run its recipe with --folds speakers first"
        )
    try:
        summary = json.loads(found[0].read_text())
        rows = summary["folds"]
    except (ValueError, KeyError, TypeError):
        rows = None
    # what compare reads of each run: its dev speaker and its WERs
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("dev_speaker"), str) and isinstance(r.get("wer"), dict)
        for r in rows
    ):
        raise SpeechBudgetError(f"{found[0]} is not a folds summary: run the recipe with --folds again")
    return summary


def _runs(summary: Dict[str, Any], model: str) -> Dict[Tuple[str, int], float]:
    """(dev speaker, seed) -> dev WER of ``model``, for the runs that have one."""
    return {
        (r["dev_speaker"], int(r.get("seed", 0))): r["wer"][model]
        for r in summary["folds"]
        if r["wer"].get(model) is not None
    }


def _threads(summary: Dict[str, Any], model: str) -> Dict[Tuple[str, int], int]:
    """(dev speaker, seed) -> the CPU threads ``model`` trained with, where the summary says."""
    return {
        (r["dev_speaker"], int(r.get("seed", 0))): r["threads"][model]
        for r in summary["folds"]
        if isinstance(r.get("threads"), dict) and isinstance(r["threads"].get(model), int)
    }


def compare(
    base: Dict[str, Any], arm: Dict[str, Any], model: str = "finetune", base_model: Optional[str] = None
) -> Dict[str, Any]:
    """Two recipes' folds, paired: each (dev speaker, seed) run of ``arm``'s ``model`` against the same
    fold and seed of ``base``'s ``base_model`` (default: the same model). Pairing takes the fold-to-fold
    and seed-to-seed spread out of the change, which is what lets three folds rank two recipes at all.
    Runs that only one side has are listed and left out."""
    base_model = base_model or model
    b, a = _runs(base, base_model), _runs(arm, model)
    for side, runs, m in (("base", b, base_model), ("arm", a, model)):
        if not runs:
            raise SpeechBudgetError(f"the {side} has no fold results for the model {m!r}")
    paired = [k for k in b if k in a]  # the base's order: speakers, then seeds
    if not paired:
        raise SpeechBudgetError(
            f"no fold and seed was run by both (base: {sorted(b)}, arm: {sorted(a)}): run the arm with the "
            "base's --fold-seeds and seed"
        )
    folds: List[Dict[str, Any]] = []
    for speaker in dict.fromkeys(s for s, _ in paired):
        keys = [k for k in paired if k[0] == speaker]
        bw, aw = [b[k] for k in keys], [a[k] for k in keys]
        folds.append(
            {
                "dev_speaker": speaker,
                "seeds": [k[1] for k in keys],
                "base": bw,
                "arm": aw,
                "base_mean": round(sum(bw) / len(bw), 2),
                "arm_mean": round(sum(aw) / len(aw), 2),
                "change": round((sum(aw) - sum(bw)) / len(bw), 2),
            }
        )
    bt, at = _threads(base, base_model), _threads(arm, model)
    other_threads = [[*k, bt[k], at[k]] for k in paired if k in bt and k in at and bt[k] != at[k]]
    diffs = [a[k] - b[k] for k in paired]
    n = len(diffs)
    mean = sum(diffs) / n
    se = sample_std(diffs) / math.sqrt(n) if n > 1 else None
    return {
        "base_model": base_model,
        "arm_model": model,
        "folds": folds,
        "base_fold_mean": round(sum(f["base_mean"] for f in folds) / len(folds), 2),
        "arm_fold_mean": round(sum(f["arm_mean"] for f in folds) / len(folds), 2),
        "runs": n,
        "change": round(mean, 2),
        "change_se": None if se is None else round(se, 2),
        "runs_lower": sum(d < 0 for d in diffs),
        "folds_lower": sum(f["change"] < 0 for f in folds),
        "no_fold_worse": all(f["change"] <= 0 for f in folds),
        "unpaired": {
            "base": [list(k) for k in b if k not in a],
            "arm": [list(k) for k in a if k not in b],
        },
        # [speaker, seed, base threads, arm threads]: paired runs whose arithmetic differs beyond the change
        "other_threads": other_threads,
        # fold runs a side's folds.json says are not finished (a run still going, or stopped part way)
        "unfinished": {"base": base.get("pending", 0), "arm": arm.get("pending", 0)},
    }
