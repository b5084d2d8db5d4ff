"""ESC-50 environmental sounds: ``meta/esc50.csv`` + ``audio/``; one of the five folds is the test set.

ESC-50 is evaluated by 5-fold cross-validation over its predefined folds: ``--fold N`` makes
fold N the test split and the other four train (``--dev-fold`` optionally holds one out as dev).
Files the CSV lists but that are missing, and audio files the CSV does not list, are reported.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ...errors import SpeechBudgetError
from . import FindContext, Source, SourceItem, option, path_id
from .folder import AUDIO_SUFFIXES

FOLDS = (1, 2, 3, 4, 5)


@dataclass
class Esc50Options:
    path: Optional[Path] = option(help="The ESC-50 folder (meta/esc50.csv and audio/).", argument=True)
    fold: int = option(5, help="The fold (1-5) that is the test split; the others train.")
    dev_fold: Optional[int] = option(help="A fold (1-5) held out as dev (default: none).")


def find_items(opts: Esc50Options, ctx: FindContext) -> List[SourceItem]:
    root = Path(opts.path)
    meta, audio = root / "meta" / "esc50.csv", root / "audio"
    if not meta.is_file() or not audio.is_dir():
        raise SpeechBudgetError(f"{root} is not an ESC-50 folder (needs meta/esc50.csv and audio/)")
    for key, value in (("fold", opts.fold), ("dev_fold", opts.dev_fold)):
        if value is not None and value not in FOLDS:
            raise SpeechBudgetError(f"{key} must be one of 1-5 (got {value})")
    if opts.dev_fold == opts.fold:
        raise SpeechBudgetError("dev_fold and fold must differ")
    with open(meta, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"filename", "fold", "category"} <= set(rows[0]):
        raise SpeechBudgetError(f"{meta} lacks the columns filename, fold, category")
    items, listed = [], set()
    for row in rows:
        name = row["filename"].strip()
        listed.add(name)
        try:
            fold = int(row["fold"])
        except ValueError:
            fold = None
        split = "test" if fold == opts.fold else "dev" if fold == opts.dev_fold else "train"
        problem = None if fold in FOLDS else f"fold {row['fold']!r} is not 1-5"
        items.append(
            SourceItem(
                id=path_id("esc50", Path(name)),
                audio=str(audio / name),
                split=split,
                labeled=False,
                labels=[row["category"].strip()],
                problem=problem,
            )
        )
    for f in sorted(audio.iterdir()):
        if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES and f.name not in listed:
            items.append(
                SourceItem(
                    id=path_id("esc50-unlisted", Path(f.name)),
                    audio=str(f),
                    split="train",
                    labeled=False,
                    problem="not listed in meta/esc50.csv",
                )
            )
    return items


SOURCE = Source(
    "esc50",
    "ESC-50 environmental sounds (meta/esc50.csv + audio/): 50 classes, --fold N is the test split.",
    Esc50Options,
    find_items,
    ("speechbudget prepare esc50 /corpora/ESC-50-master --fold 1 --out data/ --name esc50-fold1",),
)
