"""LibriSpeech layout (``<part>/<speaker>/<chapter>/*.flac`` + ``*.trans.txt``).

Parsing goes through lhotse's own recipe so our manifests match what the rest of the lhotse
world produces; ``--download`` uses lhotse's downloader when the machine is online.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ...errors import SpeechBudgetError
from . import FindContext, Source, SourceItem, option

SPLIT_OF_PART = {"train": "train", "dev": "dev", "test": "test"}


def _split(part: str) -> str:
    return next((v for k, v in SPLIT_OF_PART.items() if part.startswith(k)), "train")


@dataclass
class LibriSpeechOptions:
    path: Optional[Path] = option(
        help="The LibriSpeech folder (train-clean-100/, test-clean/, ...).", argument=True
    )
    parts: List[str] = option(help="Comma-separated parts (default: all found).", factory=list)
    download: bool = option(False, help="Download the parts first (needs network).")


def find_items(opts: LibriSpeechOptions, ctx: FindContext) -> List[SourceItem]:
    from lhotse.recipes import librispeech

    root, parts, download = Path(opts.path), opts.parts, opts.download
    if download:
        librispeech.download_librispeech(root.parent, dataset_parts=list(parts or ["mini_librispeech"]))
    if not root.is_dir():
        raise SpeechBudgetError(f"LibriSpeech folder {root} does not exist (set download when online)")
    found = [p.name for p in root.iterdir() if p.is_dir()]
    use = list(parts) if parts else found
    manifests = librispeech.prepare_librispeech(root, dataset_parts=use, num_jobs=1)
    if not manifests:
        raise SpeechBudgetError(
            f"no LibriSpeech parts under {root} (expected e.g. train-clean-100/, test-clean/)"
        )
    items = []
    for part, m in manifests.items():
        recs = m["recordings"]
        for sup in m["supervisions"]:
            rec = recs[sup.recording_id]
            items.append(
                SourceItem(
                    id=sup.id,
                    audio=rec.sources[0].source,
                    split=_split(part),
                    text=sup.text,
                    speaker=sup.speaker,
                    custom={"part": part},
                )
            )
    return items


SOURCE = Source(
    "librispeech",
    "LibriSpeech (<part>/<speaker>/<chapter>/*.flac + *.trans.txt), parsed by lhotse's recipe.",
    LibriSpeechOptions,
    find_items,
    ("speechbudget prepare librispeech /corpora/LibriSpeech --parts train-clean-100,test-clean --out data/",),
)
