"""Leave-one-speaker-out folds: each labelled speaker that is not a test speaker is once the dev set
of a model fine-tuned on the others, so a recipe is tuned on the mean over speakers, not on the one
speaker it happened to be checked on.

``speechbudget run --folds speakers`` writes ``EXP/folds/<speaker>/cuts_{train,dev}.jsonl.gz``, runs
the recipe's fine-tuning and decoding there, and keeps each fold's dev WER with their mean and
spread in ``EXP/folds/folds.json``. Test speakers are never in a fold: only the final, all-speaker
run decodes them, once.
"""

from __future__ import annotations

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

    @property
    def name(self) -> str:
        return self.dev_speaker


def check_kind(kind: Optional[str], key: str = "folds") -> None:
    if kind is not None and kind not in KINDS:
        raise SpeechBudgetError(f"{key} must be {' or '.join(KINDS)} (got {kind!r})")


def speaker_folds(cuts: Iterable[Any]) -> List[Fold]:
    """One fold per speaker of ``cuts`` (the labelled, non-test cuts), in name order."""
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
    return [Fold(s, tuple(x for x in speakers if x != s)) for s in speakers]


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
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": round(mean, 2), "std": round(std, 2), "min": min(values), "max": max(values)}


def summarize(rows: List[Dict[str, Any]], test_speakers: Sequence[str] = ()) -> Dict[str, Any]:
    """``rows``: one per finished fold, ``{"dev_speaker", "train_speakers", "wer": {model: WER %}}``."""
    models: List[str] = []
    for r in rows:
        models += [m for m in r["wer"] if m not in models]
    return {
        "protocol": "leave-one-speaker-out",
        "test_speakers_excluded": list(test_speakers),
        "folds": rows,
        "mean": {m: spread([r["wer"][m] for r in rows if r["wer"].get(m) is not None]) for m in models},
    }


def write_summary(exp: Path, summary: Dict[str, Any]) -> Path:
    path = Path(exp) / FOLDS_DIR / SUMMARY_NAME
    atomic.write_json(path, summary)
    return path


def summary_lines(summary: Dict[str, Any]) -> List[str]:
    """The fold table as plain lines (console log and report notes)."""
    lines = [
        f"fold {r['dev_speaker']} (train: {', '.join(r['train_speakers'])}): "
        + ", ".join(f"{m} dev WER {w:.2f}%" for m, w in r["wer"].items() if w is not None)
        for r in summary["folds"]
    ]
    for m, s in summary["mean"].items():
        if s["n"]:
            lines.append(
                f"{m}: mean dev WER {s['mean']:.2f}% over {s['n']} folds "
                f"(std {s['std']:.2f}, min-max {s['min']:.2f}-{s['max']:.2f})"
            )
    return lines


def find_summaries(paths: Iterable[Path]) -> List[Path]:
    """``folds.json`` of the experiments given (an exp_dir, its folds/ folder, or a run inside it)."""
    found: List[Path] = []
    for p in map(Path, paths):
        for cand in (p / SUMMARY_NAME, p / FOLDS_DIR / SUMMARY_NAME, p.parent / FOLDS_DIR / SUMMARY_NAME):
            if cand.is_file() and cand.resolve() not in found:
                found.append(cand.resolve())
    return found
