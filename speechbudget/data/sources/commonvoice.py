"""Common Voice: ``clips/`` + ``validated.tsv`` (or a ``.csv`` with the same columns)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ...errors import SpeechBudgetError
from ...userfiles import read_user_text
from . import FindContext, Source, SourceItem, option, path_id, speaker_splits

REQUIRED = ("client_id", "path", "sentence")


def _table(root: Path, table: Optional[Path]) -> Path:
    if table is not None:
        return Path(table)
    for name in ("validated.tsv", "validated.csv", "train.tsv"):
        if (root / name).is_file():
            return root / name
    raise SpeechBudgetError(
        f"no validated.tsv (or .csv) in {root}; give the table (--table PATH, recipe key table)"
    )


@dataclass
class CommonVoiceOptions:
    path: Optional[Path] = option(help="The Common Voice folder (clips/ + validated.tsv).", argument=True)
    table: Optional[Path] = option(help="The .tsv/.csv table (default: validated.tsv).")
    dev_fraction: float = option(0.0, help="Share of speakers held out for dev.")
    test_fraction: float = option(0.2, help="Share of speakers held out for test.")


def find_items(opts: CommonVoiceOptions, ctx: FindContext) -> List[SourceItem]:
    root, dev_fraction, test_fraction = Path(opts.path), opts.dev_fraction, opts.test_fraction
    speaker_splits.check_fractions(dev_fraction, test_fraction)
    path = _table(root, opts.table)
    delimiter = "," if path.suffix == ".csv" else "\t"
    with io.StringIO(read_user_text(path, "Common Voice table"), newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise SpeechBudgetError(
                f"{path} lacks columns {missing}; Common Voice tables need {', '.join(REQUIRED)}"
            )
        rows = list(reader)
    clips = root / "clips" if (root / "clips").is_dir() else root
    items = []
    for row in rows:
        speaker = (row.get("client_id") or "unknown")[:16]
        name = row.get("path") or ""
        items.append(
            SourceItem(
                id=path_id("cv", Path(name)),
                audio=str(clips / name),
                split=speaker_splits.hashed_split(speaker, dev_fraction, test_fraction),
                text=row.get("sentence"),
                speaker=speaker,
                custom={k: row[k] for k in ("gender", "age", "accent") if row.get(k)},
            )
        )
    return items


SOURCE = Source(
    "commonvoice",
    "Common Voice (clips/ + validated.tsv): speaker-disjoint splits by hashed client id.",
    CommonVoiceOptions,
    find_items,
    ("speechbudget prepare commonvoice ../shared/data/commonvoice-mini --out data/",),
)
