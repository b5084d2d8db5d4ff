"""Google Speech Commands v1/v2: one folder per word, ``validation_list.txt`` and ``testing_list.txt``.

The word folder is the class (and the transcript). Files named in ``validation_list.txt`` are dev,
in ``testing_list.txt`` test, the rest train, as the dataset defines its splits. ``_background_noise_``
holds long noise recordings for augmentation, never a class. A word folder with no audio is
reported in ``rejected_train.jsonl`` rather than silently giving one class fewer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Set

from ...errors import SpeechBudgetError
from . import FindContext, Source, SourceItem, option, path_id
from .folder import AUDIO_SUFFIXES

NOISE_FOLDER = "_background_noise_"
LISTS = {"dev": "validation_list.txt", "test": "testing_list.txt"}


@dataclass
class SpeechCommandsOptions:
    path: Optional[Path] = option(
        help="The Speech Commands folder (word folders and the list files).", argument=True
    )
    words: List[str] = option(
        help="Comma-separated words to keep (default: every word folder).", factory=list
    )


def _read_list(root: Path, name: str) -> Set[str]:
    path = root / name
    if not path.is_file():
        raise SpeechBudgetError(
            f"{path} is missing: a Speech Commands folder has validation_list.txt and testing_list.txt "
            "(they define the dev and test splits)"
        )
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def find_items(opts: SpeechCommandsOptions, ctx: FindContext) -> List[SourceItem]:
    root = Path(opts.path)
    if not root.is_dir():
        raise SpeechBudgetError(f"Speech Commands folder {root} does not exist")
    lists = {split: _read_list(root, name) for split, name in LISTS.items()}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name != NOISE_FOLDER)
    if opts.words:
        unknown = sorted(set(opts.words) - {p.name for p in folders})
        if unknown:
            raise SpeechBudgetError(f"words {unknown} have no folder under {root}")
        folders = [p for p in folders if p.name in opts.words]
    if not folders:
        raise SpeechBudgetError(f"no word folders under {root} (expected one folder per word)")
    items: List[SourceItem] = []
    for folder in folders:
        word = folder.name
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            items.append(
                SourceItem(
                    id=path_id("spc", Path(word)),
                    audio=str(folder),
                    split="train",
                    problem=f"class folder {word!r} holds no audio",
                )
            )
            continue
        for f in files:
            rel = f.relative_to(root).as_posix()
            split = "dev" if rel in lists["dev"] else "test" if rel in lists["test"] else "train"
            speaker = f.stem.split("_nohash_")[0] if "_nohash_" in f.stem else None
            items.append(
                SourceItem(
                    id=path_id("spc", Path(rel)),
                    audio=str(f),
                    split=split,
                    text=word.replace("_", " "),
                    speaker=speaker,
                    labels=[word],
                )
            )
    return items


SOURCE = Source(
    "speechcommands",
    "Google Speech Commands v1/v2: word folders are the classes; the list files give dev and test.",
    SpeechCommandsOptions,
    find_items,
    (
        "speechbudget prepare speechcommands /corpora/speech_commands_v0.02 --out data/ --num-jobs 8",
        "speechbudget prepare speechcommands /corpora/sc --words yes,no,up,down --out data/ --name sc4",
    ),
)
