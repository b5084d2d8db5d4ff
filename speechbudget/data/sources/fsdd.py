"""Free Spoken Digit Dataset: ``{digit}_{speaker}_{index}.wav``, transcript = the digit's word."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ...errors import SpeechBudgetError
from . import FindContext, Source, SourceItem, option, path_id, speaker_splits
from .folder import AUDIO_SUFFIXES

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class FsddOptions:
    path: Optional[Path] = option(help="The FSDD folder (or its recordings/ subfolder).", argument=True)
    test_speakers: List[str] = option(
        help="Comma-separated held-out test speakers.", factory=lambda: ["theo"]
    )
    dev_speakers: List[str] = option(help="Comma-separated dev speakers.", factory=list)


def find_items(opts: FsddOptions, ctx: FindContext) -> List[SourceItem]:
    """Speaker-disjoint splits: ``test_speakers`` -> test, ``dev_speakers`` -> dev, the rest -> train."""
    root, test_speakers, dev_speakers = Path(opts.path), opts.test_speakers, opts.dev_speakers
    speaker_splits.check_named(test_speakers, dev_speakers)
    if (root / "recordings").is_dir():
        root = root / "recordings"
    # subfolders and any case of ".wav" too: a file this source cannot use is reported, never skipped
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not any(f.suffix.lower() == ".wav" for f in files):
        raise SpeechBudgetError(f"no FSDD wav files ({{digit}}_{{speaker}}_{{index}}.wav) under {root}")
    items, speakers = [], set()
    for f in files:
        rel = f.relative_to(root)
        canonical = rel.parent == Path(".") and f.suffix == ".wav"
        item_id = None if canonical else path_id("fsdd", rel)  # unique even beside a same-named file
        parts = f.stem.split("_")
        problem = None
        if f.suffix.lower() != ".wav":
            problem = f"not an FSDD recording (FSDD is .wav; got {f.suffix})"
        elif len(parts) != 3 or not parts[0].isdigit() or int(parts[0]) > 9:
            problem = "name is not {digit}_{speaker}_{index}.wav"
        if problem:
            items.append(
                SourceItem(id=item_id or path_id("fsdd", rel), audio=str(f), split="train", problem=problem)
            )
            continue
        digit, speaker, index = parts
        speakers.add(speaker)
        split = speaker_splits.split_of(speaker, test_speakers, dev_speakers)
        items.append(
            SourceItem(
                id=item_id or f"fsdd-{speaker}-{digit}-{index}",
                audio=str(f),
                split=split,
                text=DIGIT_WORDS[int(digit)],
                speaker=speaker,
                labels=[digit],  # the same clips are a 10-class keyword task
            )
        )
    speaker_splits.check_found(list(test_speakers) + list(dev_speakers), speakers, "FSDD")
    return items


SOURCE = Source(
    "fsdd",
    "Free Spoken Digit Dataset ({digit}_{speaker}_{index}.wav): digit words and classes, speaker-disjoint splits.",
    FsddOptions,
    find_items,
    (
        "speechbudget prepare fsdd ../shared/data/fsdd --test-speakers theo --dev-speakers jackson --out data/",
    ),
)
