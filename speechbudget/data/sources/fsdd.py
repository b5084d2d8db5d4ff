"""Free Spoken Digit Dataset: ``{digit}_{speaker}_{index}.wav``, transcript = the digit's word."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from ...errors import SpeechBudgetError
from . import SourceItem

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def find_items(
    root: Path, test_speakers: Sequence[str] = ("theo",), dev_speakers: Sequence[str] = ()
) -> List[SourceItem]:
    """Speaker-disjoint splits: ``test_speakers`` -> test, ``dev_speakers`` -> dev, the rest -> train."""
    root = Path(root)
    if (root / "recordings").is_dir():
        root = root / "recordings"
    files = sorted(root.glob("*.wav"))
    if not files:
        raise SpeechBudgetError(f"no FSDD wav files ({{digit}}_{{speaker}}_{{index}}.wav) under {root}")
    items, speakers = [], set()
    for f in files:
        parts = f.stem.split("_")
        if len(parts) != 3 or not parts[0].isdigit() or int(parts[0]) > 9:
            # an unexpected name still goes through validation so it is reported, not dropped silently
            items.append(SourceItem(id=f"fsdd-{f.stem}", audio=str(f), split="train", text=None))
            continue
        digit, speaker, index = parts
        speakers.add(speaker)
        split = "test" if speaker in test_speakers else "dev" if speaker in dev_speakers else "train"
        items.append(
            SourceItem(
                id=f"fsdd-{speaker}-{digit}-{index}",
                audio=str(f),
                split=split,
                text=DIGIT_WORDS[int(digit)],
                speaker=speaker,
            )
        )
    unknown = [s for s in list(test_speakers) + list(dev_speakers) if s not in speakers]
    if unknown:
        raise SpeechBudgetError(
            f"--test-speakers/--dev-speakers name unknown FSDD speakers {unknown}; found: {', '.join(sorted(speakers))}"
        )
    return items
